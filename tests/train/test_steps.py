"""Tests for the pmap'd train step on the fake CPU devices of conftest.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import test as test_config
from losses import composite
from models import autoencoder
from train import steps
from train import train_state

IMAGE_SHAPE = (28, 28, 1)


def _setup(config):
  model = autoencoder.create_model(config.model, IMAGE_SHAPE)
  state = train_state.create_train_state(
    config, model, IMAGE_SHAPE, jax.random.key(0)
  )
  encode_features = autoencoder.feature_extractor(model)
  loss_fn = composite.make_loss(config.loss, encode_features=encode_features)
  eval_loss_fn = composite.make_loss(
    config.loss, encode_features=encode_features, all_terms=True
  )
  return model, state, loss_fn, eval_loss_fn


def _train(config, batches, devices):
  model, state, loss_fn, eval_loss_fn = _setup(config)
  p_train_step, _ = steps.pmap_steps(
    loss_fn, eval_loss_fn, model.apply, devices=devices
  )
  state = steps.replicate(state, devices=devices)
  for batch in batches:
    state, metrics = p_train_step(state, steps.shard(batch, len(devices)))
  return jax.device_get(steps.unreplicate(state)), metrics


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_four_devices_match_one(optimizer):
  assert jax.local_device_count() == 4
  config = test_config.get_config()
  config.optimizer = optimizer
  config.learning_rate = 0.05 if optimizer == 'sgd' else 1e-3
  rng = np.random.default_rng(0)
  batches = [
    rng.uniform(size=(16, *IMAGE_SHAPE)).astype(np.float32) for _ in range(3)
  ]

  state4, metrics4 = _train(config, batches, jax.local_devices())
  state1, metrics1 = _train(config, batches, jax.local_devices()[:1])

  assert int(state4.step) == int(state1.step) == 3
  for a, b in zip(
    jax.tree.leaves(state4.params), jax.tree.leaves(state1.params), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
    metrics4['loss'][0], metrics1['loss'][0], rtol=1e-5
  )
  # Replicas stay identical after the averaged update.
  np.testing.assert_array_equal(metrics4['loss'][0], metrics4['loss'][3])


def test_train_step_compiles_once():
  config = test_config.get_config()
  model, state, loss_fn, eval_loss_fn = _setup(config)
  traces = []

  def counting_loss_fn(params, images, logits):
    traces.append(images.shape)
    return loss_fn(params, images, logits)

  p_train_step, _ = steps.pmap_steps(
    counting_loss_fn, eval_loss_fn, model.apply
  )
  state = steps.replicate(state)
  for seed in range(3):
    images = jax.random.uniform(jax.random.key(seed), (16, *IMAGE_SHAPE))
    state, _ = p_train_step(state, steps.shard(np.asarray(images), 4))

  assert len(traces) == 1


def test_eval_step_ignores_padding():
  config = test_config.get_config()
  model, state, loss_fn, eval_loss_fn = _setup(config)
  _, p_eval_step = steps.pmap_steps(loss_fn, eval_loss_fn, model.apply)
  params = steps.replicate(state.params)
  images = np.random.default_rng(1).uniform(size=(8, *IMAGE_SHAPE))
  images = images.astype(np.float32)
  padded = np.concatenate([images[:6], np.zeros_like(images[:2])])
  mask = np.array([True] * 6 + [False] * 2)

  full = p_eval_step(
    params,
    {
      'image': steps.shard(images[:6].repeat(4, 0)[:24], 4),
      'mask': steps.shard(np.ones(24, bool), 4),
    },
  )
  masked = p_eval_step(
    params, {'image': steps.shard(padded, 4), 'mask': steps.shard(mask, 4)}
  )

  full, masked = steps.unreplicate(full), steps.unreplicate(masked)
  assert masked['count'] == 6
  assert full['count'] == 24
  np.testing.assert_allclose(
    masked['mse'] / masked['count'], full['mse'] / full['count'], rtol=1e-5
  )


def test_shard_rejects_uneven_batch():
  with pytest.raises(ValueError, match='10 examples.*4 devices.*multiple of 4'):
    steps.shard(jnp.zeros((10, 2)), 4)


def _leaves_equal(a, b):
  return all(
    np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.mark.parametrize('skip_nonfinite', [False, True])
def test_nonfinite_step_is_not_applied(skip_nonfinite):
  config = test_config.get_config()
  # Without warm-up, the first applied update has a non-zero rate.
  config.warmup_steps = 0
  model, state, loss_fn, eval_loss_fn = _setup(config)
  p_train_step, _ = steps.pmap_steps(
    loss_fn, eval_loss_fn, model.apply, skip_nonfinite=skip_nonfinite
  )
  initial = jax.device_get(state)
  state = steps.replicate(state)
  images = np.random.default_rng(2).uniform(size=(16, *IMAGE_SHAPE))
  images = images.astype(np.float32)
  nan_images = np.full_like(images, np.nan)

  state, bad = p_train_step(state, steps.shard(nan_images, 4))
  after_bad = jax.device_get(steps.unreplicate(state))
  state, good = p_train_step(state, steps.shard(images, 4))
  after_good = jax.device_get(steps.unreplicate(state))

  bad, good = steps.unreplicate(bad), steps.unreplicate(good)
  assert bad['nonfinite'] == 1.0
  assert good['nonfinite'] == 0.0
  assert int(after_bad.step) == 1
  assert _leaves_equal(after_bad.params, initial.params)
  assert _leaves_equal(after_bad.opt_state, initial.opt_state)
  assert bool(after_bad.halted) is not skip_nonfinite
  # A halted state takes no update; a skipping one trains on.
  assert int(after_good.step) == 2
  assert _leaves_equal(after_good.params, initial.params) is not skip_nonfinite


def test_train_step_reports_norms():
  config = test_config.get_config()
  model, state, loss_fn, eval_loss_fn = _setup(config)
  p_train_step, _ = steps.pmap_steps(loss_fn, eval_loss_fn, model.apply)
  before = jax.device_get(state.params)
  images = np.random.default_rng(3).uniform(size=(16, *IMAGE_SHAPE))

  state, metrics = p_train_step(
    steps.replicate(state), steps.shard(images.astype(np.float32), 4)
  )

  metrics = steps.unreplicate(metrics)
  after = jax.device_get(steps.unreplicate(state.params))
  update = jax.tree.map(lambda a, b: a - b, after, before)
  np.testing.assert_allclose(
    metrics['param_norm'], optax.tree.norm(after), rtol=1e-5
  )
  np.testing.assert_allclose(
    metrics['update_norm'], optax.tree.norm(update), rtol=1e-3
  )
  assert metrics['grad_norm'] > 0
