"""Optimizer, learning-rate schedule and train state built from the config."""

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from models import autoencoder

OPTIMIZERS = ('adam', 'adamw', 'sgd')
LR_SCHEDULES = ('cosine', 'constant')


class TrainState(train_state.TrainState):
  """Flax's `TrainState` with the flag of the non-finite step guard.

  Attributes:
    halted: bool scalar. `train.steps.train_step` sets it at the first step
      whose loss, loss terms or norms are not finite, unless the config skips
      such steps. From then on no update is applied, so `params` and
      `opt_state` stay those from before that step while `step` still counts.
      Checkpoints do not store it (see `train.checkpointing`).
  """

  halted: jax.Array


def create_learning_rate_schedule(config):
  """Builds the schedule named by `config.lr_schedule`.

  Args:
    config: run config with `learning_rate`, `lr_schedule`, `warmup_steps` and
      `num_train_steps`.

  Returns:
    An optax schedule: step -> learning rate. 'cosine' warms up linearly from 0
    over `warmup_steps`, then decays to 0 at `num_train_steps`; 'constant'
    warms up the same way, then stays at `learning_rate`.
  """
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  if config.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(
      config.learning_rate,
      decay_steps=max(config.num_train_steps - config.warmup_steps, 1),
    )
  else:
    decay = optax.constant_schedule(config.learning_rate)
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def create_optimizer(config, schedule):
  """Builds the optax optimizer named by `config.optimizer`."""
  if config.optimizer == 'adam':
    return optax.adam(schedule)
  if config.optimizer == 'adamw':
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  return optax.sgd(schedule, momentum=0.9)


def create_train_state(config, model, image_shape, rng, tx=None):
  """Initialises parameters and optimizer state on the host.

  Args:
    config: the run config.
    model: the autoencoder.
    image_shape: (H, W, C) of the training images.
    rng: a `jax.random.key` for parameter initialisation.
    tx: the optax optimizer; None builds it from the config. States that
      share one optimizer object also share the compiled train step.

  Returns:
    A `TrainState` at step 0, not halted.
  """
  params = autoencoder.init_params(model, rng, image_shape)
  if tx is None:
    tx = create_optimizer(config, create_learning_rate_schedule(config))
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    halted=jnp.zeros((), jnp.bool_),
  )


def parameter_count(params):
  """Returns the number of scalar parameters in a parameter tree."""
  return sum(leaf.size for leaf in jax.tree.leaves(params))
