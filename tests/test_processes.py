"""Faults of whole training processes: signals, restarts and several hosts.

Each test starts `main.py` as real subprocesses on the tiny test config and
compares their final checkpoint with a run in this process. Runs here and
in the subprocesses use the four fake CPU devices of conftest.py, unless a
test sets another device count. The signal tests expect bit-identical
parameters, which XLA on CPU (jaxlib 0.10.2) gives for identical programs
and inputs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import test as test_config
from losses import composite
from models import autoencoder
from models import feature_nets
from train import checkpointing
from train import input_pipeline
from train import preemption
from train import steps
from train import train_state
from train import trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (28, 28, 1)
# Long enough that a signal sent after step 30 arrives well before the end.
SIGNAL_RUN = {
  'num_train_steps': 200,
  'log_every_steps': 1,
  'eval_every_steps': 200,
  'checkpoint_every_steps': 25,
}
SIGNAL_AFTER_STEP = 30
TIMEOUT_S = 300


def _config(data_dir, overrides):
  config = test_config.get_config()
  config.data.data_dir = data_dir
  for field, value in overrides.items():
    config[field] = value
  return config


def _command(workdir, data_dir, overrides, *extra_flags):
  return [
    sys.executable,
    os.path.join(REPO_ROOT, 'main.py'),
    '--config=' + os.path.join(REPO_ROOT, 'configs', 'test.py'),
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    *(f'--config.{field}={value}' for field, value in overrides.items()),
    *extra_flags,
  ]


def _start(command, log_path, env=None):
  log = open(log_path, 'w')  # noqa: SIM115 (closed with the process)
  process = subprocess.Popen(
    command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
  )
  process.log = log
  return process


def _finish(process, log_path, timeout=TIMEOUT_S):
  """Waits for `process`; returns its exit status and its output."""
  try:
    returncode = process.wait(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
    process.log.close()
  with open(log_path) as f:
    return returncode, f.read()


def _train_steps(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.endswith('\n')]
  return [
    record['step']
    for record in map(json.loads, lines)
    if 'train/loss' in record
  ]


def _wait_for_step(process, workdir, step, *, checkpointed=False):
  """Polls the workdir until a train row of `step` or later appears.

  With `checkpointed`, also waits for a finished checkpoint, which Orbax
  writes in the background and renames into place when it is complete.
  """
  deadline = time.monotonic() + TIMEOUT_S
  while time.monotonic() < deadline:
    if process.poll() is not None:
      pytest.fail(f'Training exited with {process.returncode} too early.')
    logged = any(logged >= step for logged in _train_steps(workdir))
    if logged and (not checkpointed or _checkpoint_steps(workdir)):
      return
    time.sleep(0.02)
  pytest.fail(f'Step {step} was not logged within {TIMEOUT_S} s.')


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _restore(workdir, config):
  """Returns the newest checkpoint of `workdir` as an unreplicated state."""
  model = autoencoder.create_model(config.model, IMAGE_SHAPE)
  template = train_state.create_train_state(
    config, model, IMAGE_SHAPE, jax.random.key(1)
  )
  manager = checkpointing.create_manager(workdir, keep=100)
  try:
    return checkpointing.restore_latest(manager, template)
  finally:
    manager.close()


def _assert_trees_equal(actual, expected):
  leaves = jax.tree_util.tree_leaves_with_path(expected)
  actual_leaves = jax.tree.leaves(actual)
  assert len(actual_leaves) == len(leaves)
  for (path, leaf), actual_leaf in zip(leaves, actual_leaves, strict=True):
    np.testing.assert_array_equal(
      actual_leaf, leaf, err_msg=jax.tree_util.keystr(path)
    )


@pytest.fixture(scope='module')
def uninterrupted(data_dir, digits, tmp_path_factory):
  """The final state of the signal tests' run, trained without a stop."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  config = _config(data_dir, SIGNAL_RUN)
  trainer.train_and_evaluate(config, workdir)
  return _restore(workdir, config)


def test_sigkill_then_rerun_is_exact(data_dir, uninterrupted, tmp_path):
  workdir = str(tmp_path / 'run')
  command = _command(workdir, data_dir, SIGNAL_RUN)
  log_path = tmp_path / 'killed.log'
  process = _start(command, log_path)
  _wait_for_step(process, workdir, SIGNAL_AFTER_STEP, checkpointed=True)

  process.send_signal(signal.SIGKILL)
  returncode, _ = _finish(process, log_path)

  assert returncode == -signal.SIGKILL
  killed_at = max(_train_steps(workdir))
  assert killed_at < SIGNAL_RUN['num_train_steps']
  assert max(_checkpoint_steps(workdir)) <= killed_at

  returncode, output = _finish(
    _start(command, tmp_path / 'rerun.log'), tmp_path / 'rerun.log'
  )

  assert returncode == 0, output[-3000:]
  assert 'Resumed from the checkpoint at step' in output
  final = _restore(workdir, _config(data_dir, SIGNAL_RUN))
  assert int(final.step) == SIGNAL_RUN['num_train_steps']
  _assert_trees_equal(final.params, uninterrupted.params)
  _assert_trees_equal(final.opt_state, uninterrupted.opt_state)
  train_steps = _train_steps(workdir)
  assert train_steps == list(range(1, SIGNAL_RUN['num_train_steps'] + 1))


def test_sigterm_saves_current_step(data_dir, uninterrupted, tmp_path):
  workdir = str(tmp_path / 'run')
  command = _command(workdir, data_dir, SIGNAL_RUN)
  log_path = tmp_path / 'terminated.log'
  process = _start(command, log_path)
  _wait_for_step(process, workdir, SIGNAL_AFTER_STEP)

  process.send_signal(signal.SIGTERM)
  returncode, output = _finish(process, log_path)

  assert returncode == preemption.EXIT_CODE, output[-3000:]
  stopped_at = max(_train_steps(workdir))
  assert stopped_at < SIGNAL_RUN['num_train_steps']
  assert max(_checkpoint_steps(workdir)) == stopped_at
  assert f'Stopped by SIGTERM after step {stopped_at}' in output

  # The rerun runs in this process, which the killed-run test shows to give
  # the same result as a subprocess.
  summary = trainer.train_and_evaluate(_config(data_dir, SIGNAL_RUN), workdir)

  assert summary['step'] == SIGNAL_RUN['num_train_steps']
  train_steps = _train_steps(workdir)
  assert train_steps == list(range(1, SIGNAL_RUN['num_train_steps'] + 1))
  final = _restore(workdir, _config(data_dir, SIGNAL_RUN))
  _assert_trees_equal(final.params, uninterrupted.params)
  _assert_trees_equal(final.opt_state, uninterrupted.opt_state)


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _reference_steps(config, digits, state, start_step, stop_step):
  """Trains on four local devices with the global batches of two processes.

  Each process reads its own shard of the split, so the global batch of a
  step is process 0's batch followed by process 1's.
  """
  model = autoencoder.create_model(config.model, IMAGE_SHAPE)
  feature_networks = {
    name: feature_nets.create(config.loss.terms[name], model)
    for name in ('gram', 'features')
  }
  loss_fn = composite.make_loss(config.loss, feature_networks=feature_networks)
  p_train_step, _ = steps.pmap_steps(loss_fn, loss_fn, model.apply)
  shards = [
    input_pipeline.train_batches(
      digits,
      split=config.data.train_split,
      batch_size=config.batch_size // 2,
      seed=config.seed,
      start_step=start_step,
      shuffle_buffer=config.data.shuffle_buffer,
      process_index=index,
      process_count=2,
    )
    for index in range(2)
  ]
  state = steps.replicate(state)
  for _ in range(start_step, stop_step):
    batch = np.concatenate([next(shard) for shard in shards])
    state, _ = p_train_step(state, steps.shard(batch, 4))
  return jax.device_get(steps.unreplicate(state))


def test_two_processes_match_one(data_dir, digits, tmp_path):
  workdir = str(tmp_path / 'run')
  # The constant schedule does not depend on num_train_steps, so the first
  # leg with 3 steps and the second with 6 follow one schedule.
  overrides = {
    'lr_schedule': 'constant',
    'log_every_steps': 3,
    'eval_every_steps': 6,
    'checkpoint_every_steps': 3,
  }
  first_leg = _config(data_dir, {**overrides, 'num_train_steps': 3})
  trainer.train_and_evaluate(first_leg, workdir)
  first_leg_state = _restore(workdir, first_leg)
  events_before = [n for n in os.listdir(workdir) if n.startswith('events')]
  port = _free_port()
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=2',
    JAX_COORDINATOR_BIND_ADDRESS=f'127.0.0.1:{port}',
  )
  command = _command(workdir, data_dir, {**overrides, 'num_train_steps': 6})
  processes = [
    _start(
      [
        *command,
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={index}',
      ],
      tmp_path / f'process{index}.log',
      env=env,
    )
    for index in range(2)
  ]

  results = [
    _finish(process, tmp_path / f'process{index}.log')
    for index, process in enumerate(processes)
  ]

  for index, (returncode, output) in enumerate(results):
    assert returncode == 0, f'process {index}: {output[-3000:]}'
    assert 'Joined a run of 2 processes' in output
    assert 'Resumed from the checkpoint at step 3.' in output
  final = _restore(workdir, _config(data_dir, overrides))
  assert int(final.step) == 6
  expected = _reference_steps(first_leg, digits, first_leg_state, 3, 6)
  expected_leaves = jax.tree_util.tree_leaves_with_path(expected.params)
  final_leaves = jax.tree.leaves(final.params)
  for (path, leaf), actual in zip(expected_leaves, final_leaves, strict=True):
    np.testing.assert_allclose(
      actual, leaf, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)
    )
  first_leg_leaves = jax.tree.leaves(first_leg_state.params)
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(final_leaves, first_leg_leaves, strict=True)
  )

  # Only process 0 writes logs, images and summaries.
  assert 'step 6: train/' in results[0][1]
  assert 'step 6: train/' not in results[1][1]
  events_after = [n for n in os.listdir(workdir) if n.startswith('events')]
  assert len(events_after) == len(events_before) + 1
  assert _train_steps(workdir) == [3, 6]
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['step'] == 6
