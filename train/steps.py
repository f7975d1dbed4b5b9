"""The train and eval steps, and the one place they are pmap'd.

Each step receives one device's share of the batch: images
`[per_device_batch, H, W, C]` in [0, 1]. Under `pmap` the leading axis of every
input is the device axis, named `batch`. Gradients and metrics are averaged
over it with `lax.pmean`, so every device applies the same update and the
replicas stay equal.
"""

import functools

from flax import jax_utils
import jax
import jax.numpy as jnp
import optax

from losses import distances

AXIS_NAME = 'batch'


def train_step(state, images, *, loss_fn, skip_nonfinite=False):
  """Runs one optimisation step on this device's share of the batch.

  The non-finite guard runs inside the step, so it needs no host sync. When
  the loss, a loss term, the gradient norm or the update norm is not finite,
  the update is not applied: `params` and `opt_state` keep their values and
  only `step` advances. With `skip_nonfinite=False` the step also sets
  `state.halted`, which blocks every later update as well, so the state stays
  the last good one until the trainer fetches the metrics, saves that state and
  stops. With `skip_nonfinite=True` later steps train on normally.

  Args:
    state: the replicated `train.train_state.TrainState`.
    images: [per_device_batch, H, W, C] float32 in [0, 1].
    loss_fn: `loss_fn(params, images, logits) -> (total, values)` with
      per-example values, as built by `losses.composite.make_loss`.
    skip_nonfinite: whether a non-finite step is skipped (True) or halts the
      state (False).

  Returns:
    The updated state and a dict of scalar metrics averaged over devices.
    `loss` is the weighted total and `loss_terms/<name>` one active term.
    `grad_norm` and `update_norm` are the global norms of the averaged
    gradient and of the optimizer's update, and `param_norm` is that of the
    parameters after the step. `nonfinite` is 1.0 if this step's values
    were not all finite, else 0.0.
  """

  def objective(params):
    logits = state.apply_fn({'params': params}, images)
    total, values = loss_fn(params, images, logits)
    return total.mean(), {name: value.mean() for name, value in values.items()}

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  (loss, term_values), grads = grad_fn(state.params)
  grads = jax.lax.pmean(grads, axis_name=AXIS_NAME)
  metrics = {'loss': loss}
  metrics.update({f'loss_terms/{k}': v for k, v in term_values.items()})
  # Averaged over devices before the check, so every device decides alike.
  metrics = jax.lax.pmean(metrics, axis_name=AXIS_NAME)

  updates, new_opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  metrics['grad_norm'] = optax.tree.norm(grads)
  metrics['update_norm'] = optax.tree.norm(updates)

  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
  apply = jnp.logical_and(finite, jnp.logical_not(state.halted))
  params = _select(apply, new_params, state.params)
  opt_state = _select(apply, new_opt_state, state.opt_state)
  halted = state.halted
  if not skip_nonfinite:
    halted = jnp.logical_or(halted, jnp.logical_not(finite))

  metrics['param_norm'] = optax.tree.norm(params)
  metrics['nonfinite'] = jnp.logical_not(finite).astype(jnp.float32)
  new_state = state.replace(
    step=state.step + 1, params=params, opt_state=opt_state, halted=halted
  )
  return new_state, metrics


def _select(condition, on_true, on_false):
  """Picks `on_true` or `on_false` leaf by leaf, inside the compiled step."""
  return jax.tree.map(
    lambda a, b: jnp.where(condition, a, b), on_true, on_false
  )


def _pixel_metrics(images, reconstructions):
  return {
    'psnr': distances.psnr(reconstructions, images),
    'mse': distances.mse(reconstructions, images),
    'mae': distances.mae(reconstructions, images),
  }


def eval_step(params, batch, *, apply_fn, loss_fn, metrics_fn=None):
  """Sums per-example evaluation metrics over the real examples of a batch.

  Args:
    params: the replicated parameters.
    batch: dict with `image` [per_device_batch, H, W, C] and `mask`
      [per_device_batch], False on padding.
    apply_fn: the model's apply function.
    loss_fn: as in `train_step`, built with every configured term.
    metrics_fn: `metrics_fn(images, reconstructions) -> {name: [B]}`, such
      as the suite of `train.metrics.make_suite`; None computes PSNR, MSE
      and MAE only.

  Returns:
    A dict of metric sums over all devices' real examples, with `count`, the
    number of real examples. Divide by `count` for the means.
  """
  images = batch['image']
  mask = batch['mask'].astype(jnp.float32)
  logits = apply_fn({'params': params}, images)
  reconstructions = jax.nn.sigmoid(logits)
  total, values = loss_fn(params, images, logits)

  metrics_fn = metrics_fn or _pixel_metrics
  per_example = {'loss': total, **metrics_fn(images, reconstructions)}
  per_example.update({f'loss_terms/{k}': v for k, v in values.items()})
  sums = {name: jnp.sum(value * mask) for name, value in per_example.items()}
  sums['count'] = jnp.sum(mask)
  return jax.lax.psum(sums, axis_name=AXIS_NAME)


def pmap_steps(
  loss_fn,
  eval_loss_fn,
  apply_fn,
  devices=None,
  *,
  metrics_fn=None,
  skip_nonfinite=False,
):
  """Returns (p_train_step, p_eval_step) pmap'd over `devices`.

  In a run of several processes, the steps run over the devices of all of
  them: each process passes its local shard, and `lax.pmean` and `lax.psum`
  reduce over every device.

  Args:
    loss_fn: the training loss (active terms only).
    eval_loss_fn: the loss with every configured term, for evaluation.
    apply_fn: the model's apply function.
    devices: devices to run on; None means all local devices.
    metrics_fn: the eval metrics besides the loss terms, as in `eval_step`.
    skip_nonfinite: passed to `train_step`.

  Returns:
    `p_train_step(state, images)` with the train state's buffers donated, and
    `p_eval_step(params, batch)`; both take inputs with a leading device axis.
  """
  p_train_step = jax.pmap(
    functools.partial(
      train_step, loss_fn=loss_fn, skip_nonfinite=skip_nonfinite
    ),
    axis_name=AXIS_NAME,
    devices=devices,
    donate_argnums=(0,),
  )
  p_eval_step = jax.pmap(
    functools.partial(
      eval_step,
      apply_fn=apply_fn,
      loss_fn=eval_loss_fn,
      metrics_fn=metrics_fn,
    ),
    axis_name=AXIS_NAME,
    devices=devices,
  )
  return p_train_step, p_eval_step


def shard(array, device_count):
  """Reshapes a host batch [B, ...] to [device_count, B // device_count, ...].

  Raises:
    ValueError: if B does not divide by the device count.
  """
  if array.shape[0] % device_count:
    raise ValueError(
      f'A batch of {array.shape[0]} examples does not split evenly over '
      f'{device_count} devices; use a batch size that is a multiple of '
      f'{device_count}.'
    )
  return array.reshape(device_count, -1, *array.shape[1:])


def replicate(tree, devices=None):
  """Copies every leaf of `tree` to each device, as the pmap'd steps expect.

  The copies are laid out exactly like the steps' outputs, so feeding a step's
  output back in does not trigger a second compilation.
  """
  return jax_utils.replicate(tree, devices=devices, axis_name=AXIS_NAME)


def unreplicate(tree):
  """Returns the first local device's copy of each leaf of a replicated tree."""
  return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)
