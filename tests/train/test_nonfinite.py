"""Tests of the non-finite step guard in real training runs.

A wrapper around the real input pipeline turns the batch of one step into
NaN images, so that step's loss, loss terms and gradients are NaN.
"""

import json
import logging
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import test as test_config
from models import autoencoder
from train import checkpointing
from train import input_pipeline
from train import train_state
from train import trainer

IMAGE_SHAPE = (28, 28, 1)
BAD_STEP = 7


@pytest.fixture
def nan_batch_at_bad_step(monkeypatch):
  """Makes the batch of step BAD_STEP NaN images."""
  real_train_batches = input_pipeline.train_batches

  def train_batches(*args, start_step=0, **kwargs):
    batches = real_train_batches(*args, start_step=start_step, **kwargs)
    for step, batch in enumerate(batches, start=start_step + 1):
      yield np.full_like(batch, np.nan) if step == BAD_STEP else batch

  monkeypatch.setattr(input_pipeline, 'train_batches', train_batches)


def _config(data_dir, **overrides):
  config = test_config.get_config()
  config.data.data_dir = data_dir
  # A constant rate, so that runs of different lengths train alike.
  config.lr_schedule = 'constant'
  for field, value in overrides.items():
    config[field] = value
  return config


def _restore(workdir, config):
  """Restores the newest checkpoint of `workdir` onto a train state."""
  model = autoencoder.create_model(config.model, IMAGE_SHAPE)
  template = train_state.create_train_state(
    config, model, IMAGE_SHAPE, jax.random.key(1)
  )
  manager = checkpointing.create_manager(workdir, keep=100)
  try:
    return checkpointing.restore_latest(manager, template)
  finally:
    manager.close()


def _read_checkpoint(workdir, step):
  """Reads checkpoint `step` as saved: a dict of NumPy arrays."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  return ocp.StandardCheckpointer().restore(path)


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _checkpoint_steps(workdir):
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  return sorted(int(name) for name in names if name.isdigit())


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


def test_nonfinite_step_stops_after_saving(
  data_dir, digits, tmp_path, nan_batch_at_bad_step
):
  workdir = str(tmp_path / 'run')
  # The guard checks step 7 only at the log step 8, after the checkpoint at 5.
  config = _config(
    data_dir,
    num_train_steps=12,
    log_every_steps=4,
    checkpoint_every_steps=5,
    eval_every_steps=12,
  )

  with pytest.raises(FloatingPointError) as raised:
    trainer.train_and_evaluate(config, workdir)

  message = str(raised.value)
  assert message.startswith(f'Step {BAD_STEP} has non-finite values: loss=nan')
  assert 'loss_terms/pixel=nan' in message
  assert 'grad_norm=nan' in message
  assert f'checkpoint at step {BAD_STEP - 1}' in message
  assert _checkpoint_steps(workdir) == [5, BAD_STEP - 1]
  train_rows = [r['step'] for r in _read_metrics(workdir) if 'train/loss' in r]
  assert train_rows == [4]

  # The saved state is the one an uninterrupted run has after step 6.
  reference_dir = str(tmp_path / 'reference')
  reference = _config(
    data_dir,
    num_train_steps=BAD_STEP - 1,
    log_every_steps=4,
    checkpoint_every_steps=5,
    eval_every_steps=12,
  )
  trainer.train_and_evaluate(reference, reference_dir)
  saved = _restore(workdir, config)
  expected = _restore(reference_dir, reference)
  assert int(saved.step) == BAD_STEP - 1
  _assert_trees_equal(saved.params, expected.params)
  _assert_trees_equal(saved.opt_state, expected.opt_state)


def test_nonfinite_step_is_skipped(
  data_dir, digits, tmp_path, caplog, nan_batch_at_bad_step
):
  workdir = str(tmp_path / 'run')
  config = _config(
    data_dir,
    skip_nonfinite_steps=True,
    num_train_steps=8,
    log_every_steps=4,
    checkpoint_every_steps=1,
    keep_checkpoints=10,
    eval_every_steps=8,
  )

  with caplog.at_level(logging.WARNING):
    summary = trainer.train_and_evaluate(config, workdir)

  assert summary['step'] == 8
  skipped = [r.getMessage() for r in caplog.records if 'Skipped step' in r.msg]
  assert len(skipped) == 1
  assert skipped[0].startswith(
    f'Skipped step {BAD_STEP} because of non-finite values: loss=nan'
  )
  rows = {r['step']: r for r in _read_metrics(workdir) if 'train/loss' in r}
  assert rows[4]['train/skipped_steps'] == 0
  assert rows[8]['train/skipped_steps'] == 1
  for name in ('loss', 'grad_norm', 'param_norm', 'update_norm'):
    assert math.isfinite(rows[8][f'train/{name}']), name
  # The skipped step applied no update; the next one trained on.
  before = _read_checkpoint(workdir, BAD_STEP - 1)
  after = _read_checkpoint(workdir, BAD_STEP)
  final = _read_checkpoint(workdir, 8)
  assert after['step'] == BAD_STEP
  _assert_trees_equal(after['params'], before['params'])
  _assert_trees_equal(after['opt_state'], before['opt_state'])
  final_leaves = jax.tree.leaves(final['params'])
  assert all(np.isfinite(leaf).all() for leaf in final_leaves)
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(final_leaves, jax.tree.leaves(after['params']), strict=True)
  )
