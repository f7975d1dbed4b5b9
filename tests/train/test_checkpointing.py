"""Tests of checkpoints written by real training runs.

One run trains the test config for 10 steps on the four fake CPU devices of
conftest.py and saves checkpoints 5 and 10. Tests copy its workdir before
they damage or restore it.
"""

import glob
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from configs import test as test_config
from losses import composite
from models import autoencoder
from train import checkpointing
from train import steps
from train import train_state
from train import trainer

IMAGE_SHAPE = (28, 28, 1)


def _config(data_dir, **overrides):
  config = test_config.get_config()
  config.data.data_dir = data_dir
  config.num_train_steps = 10
  config.checkpoint_every_steps = 5
  config.eval_every_steps = 10
  for field, value in overrides.items():
    config[field] = value
  return config


def _template(config):
  model = autoencoder.create_model(config.model, IMAGE_SHAPE)
  return train_state.create_train_state(
    config, model, IMAGE_SHAPE, jax.random.key(1)
  )


def _restore(workdir, config):
  manager = checkpointing.create_manager(workdir, keep=10)
  try:
    return checkpointing.restore_latest(manager, _template(config))
  finally:
    manager.close()


def _assert_trees_equal(actual, expected):
  expected_leaves = jax.tree_util.tree_leaves_with_path(expected)
  actual_leaves = jax.tree.leaves(actual)
  assert len(actual_leaves) == len(expected_leaves)
  for (path, leaf), actual_leaf in zip(
    expected_leaves, actual_leaves, strict=True
  ):
    np.testing.assert_array_equal(
      actual_leaf, leaf, err_msg=jax.tree_util.keystr(path)
    )


@pytest.fixture(scope='module')
def trained(data_dir, digits, tmp_path_factory):
  """(config, workdir, state at step 5, state at step 10) of a real run."""
  workdir = str(tmp_path_factory.mktemp('trained'))
  config = _config(data_dir)
  trainer.train_and_evaluate(config, workdir)
  at_10 = _restore(workdir, config)
  copy = str(tmp_path_factory.mktemp('only_step_5'))
  shutil.copytree(workdir, copy, dirs_exist_ok=True)
  shutil.rmtree(os.path.join(copy, 'checkpoints', '10'))
  at_5 = _restore(copy, config)
  return config, workdir, at_5, at_10


def _copy_run(workdir, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return copy


def _truncate_arrays(step_dir):
  files = glob.glob(os.path.join(step_dir, 'default', '**', 'd', '*'))
  assert files
  for path in files:
    with open(path, 'r+b') as f:
      f.truncate(10)


def _remove_arrays(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'default'))


def _empty_directory(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


@pytest.mark.parametrize(
  'damage', [_truncate_arrays, _remove_arrays, _empty_directory]
)
def test_damaged_latest_is_skipped(trained, tmp_path, caplog, damage):
  config, workdir, at_5, _ = trained
  workdir = _copy_run(workdir, tmp_path)
  damaged = os.path.join(workdir, 'checkpoints', '10')
  damage(damaged)

  with caplog.at_level(logging.WARNING):
    restored = _restore(workdir, config)

  assert int(restored.step) == 5
  _assert_trees_equal(restored.params, at_5.params)
  _assert_trees_equal(restored.opt_state, at_5.opt_state)
  warnings = [r.getMessage() for r in caplog.records if 'Skipped' in r.msg]
  assert len(warnings) == 1
  assert f'checkpoint at step 10 in {os.path.dirname(damaged)}' in warnings[0]
  assert not os.path.exists(damaged)
  moved = os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))
  assert len(moved) == 1
  assert moved[0].startswith('10-')


def test_resume_past_damaged_latest(trained, tmp_path):
  config, workdir, _, at_10 = trained
  workdir = _copy_run(workdir, tmp_path)
  _truncate_arrays(os.path.join(workdir, 'checkpoints', '10'))

  summary = trainer.train_and_evaluate(config, workdir)

  assert summary['step'] == 10
  final = _restore(workdir, config)
  _assert_trees_equal(final.params, at_10.params)
  _assert_trees_equal(final.opt_state, at_10.opt_state)


def test_all_damaged_fails_clearly(trained, tmp_path):
  config, workdir, _, _ = trained
  workdir = _copy_run(workdir, tmp_path)
  for step in ('5', '10'):
    _truncate_arrays(os.path.join(workdir, 'checkpoints', step))

  with pytest.raises(ValueError, match='No checkpoint in .* could be read'):
    _restore(workdir, config)


def test_restore_on_one_and_two_devices(trained):
  config, workdir, _, at_10 = trained
  model = autoencoder.create_model(config.model, IMAGE_SHAPE)
  loss_fn = composite.make_loss(
    config.loss,
    encode_features=autoencoder.feature_extractor(model),
  )
  images = np.random.default_rng(0).random((16, *IMAGE_SHAPE), np.float32)

  def restore_and_train_one_step(devices):
    restored = _restore(workdir, config)
    p_train_step, _ = steps.pmap_steps(
      loss_fn, loss_fn, model.apply, devices=devices
    )
    state = steps.replicate(restored, devices=devices)
    state, _ = p_train_step(state, steps.shard(images, len(devices)))
    return restored, jax.device_get(steps.unreplicate(state))

  _, on_four = restore_and_train_one_step(jax.local_devices())
  for device_count in (1, 2):
    restored, trained_state = restore_and_train_one_step(
      jax.local_devices()[:device_count]
    )

    assert int(restored.step) == 10
    _assert_trees_equal(restored.params, at_10.params)
    assert int(trained_state.step) == 11
    for a, b in zip(
      jax.tree.leaves(trained_state.params),
      jax.tree.leaves(on_four.params),
      strict=True,
    ):
      np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-6, err_msg=f'{device_count} devices'
      )


def test_changed_optimizer_names_arrays(trained, tmp_path):
  config, workdir, _, _ = trained
  workdir = _copy_run(workdir, tmp_path)
  changed = _config(config.data.data_dir, optimizer='sgd', num_train_steps=20)

  with pytest.raises(ValueError) as raised:
    trainer.train_and_evaluate(changed, workdir)

  message = str(raised.value)
  assert 'Only the checkpoint has: opt_state[0].count, opt_state[0].mu' in (
    message
  )
  assert 'Only this config has: opt_state[0].trace' in message
  assert 'optimizer: adam -> sgd' in message
  assert int(_restore(workdir, config).step) == 10


def test_changed_model_names_shapes(trained):
  config, workdir, _, _ = trained
  changed = _config(config.data.data_dir)
  changed.model.latent_dim = 4

  with pytest.raises(
    checkpointing.IncompatibleCheckpointError,
    match=r'Shapes differ: params\.decoder\.from_latent\.kernel \(8, 1568\) '
    r'in the checkpoint, \(4, 1568\) now',
  ):
    _restore(workdir, changed)
