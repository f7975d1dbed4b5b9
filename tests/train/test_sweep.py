"""End-to-end tests of ablation sweeps on the embedded digits.

A tiny sweep (two variants that train, one whose feature network checkpoint
does not exist, two seeds, 20 steps) runs once per module with the real
trainer, Orbax checkpoints and the report.
"""

import json
import logging
import os
import shutil

import jax
import ml_collections
import pytest

from configs import ablation
from configs import test as test_config
from train import report
from train import sweep
from train import trainer

_compiles = {'active': False, 'count': 0}


def _count_compile(event, duration, **kwargs):
  del duration, kwargs
  if _compiles['active'] and 'backend_compile' in event:
    _compiles['count'] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def _sweep_config(data_dir, names=('mse', 'mix', 'broken')):
  config = test_config.get_config()
  config.data.data_dir = data_dir
  variants = ablation.variants()
  variants['broken'] = {
    'gram': {
      'weight': 0.1,
      'network': 'checkpoint',
      'checkpoint_dir': '/nonexistent/run',
    }
  }
  config.ablation = ml_collections.ConfigDict(
    {'variants': variants, 'names': names, 'seeds': (0, 1)}
  )
  return config


def trainer_summary(workdir, run):
  with open(os.path.join(workdir, run, trainer.SUMMARY_FILE)) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def finished_sweep(data_dir, tmp_path_factory):
  """Runs the tiny sweep; returns (workdir, statuses, compiles per run)."""
  workdir = str(tmp_path_factory.mktemp('sweep'))
  compiles = {}

  def counting_train(config, run_dir, **kwargs):
    _compiles.update(active=True, count=0)
    try:
      return trainer.train_and_evaluate(config, run_dir, **kwargs)
    finally:
      _compiles['active'] = False
      compiles[os.path.relpath(run_dir, workdir)] = _compiles['count']

  statuses = sweep.run_sweep(
    _sweep_config(data_dir), workdir, train_fn=counting_train
  )
  return workdir, statuses, compiles


def test_tiny_sweep_fills_the_report(finished_sweep):
  workdir, statuses, _ = finished_sweep

  assert statuses == {
    'mse/seed_0': 'finished',
    'mse/seed_1': 'finished',
    'mix/seed_0': 'finished',
    'mix/seed_1': 'finished',
    'broken/seed_0': 'failed',
    'broken/seed_1': 'failed',
  }
  text = open(os.path.join(workdir, report.REPORT_FILE)).read()
  assert '4 of 6 runs finished' in text
  table_rows = [line for line in text.splitlines() if line.startswith('| `')]
  assert [row.split(' | ')[0] for row in table_rows] == [
    '| `mse`',
    '| `mix`',
    '| `broken`',
  ]
  assert all('±' in cell for cell in table_rows[0].split(' | ')[1:])
  assert table_rows[2].count('failed') == len(table_rows[0].split(' | ')) - 1
  for label in ('PSNR (dB)', 'SSIM', 'MS-SSIM', 'MAE', 'Sobel edge L1'):
    assert f'- **{label}**: ' in text, label
  assert '`broken/seed_0` (failed): ValueError: Checkpoint directory' in text
  assert '`broken/seed_1` (failed)' in text
  for name in (
    report.METRICS_PLOT,
    report.CURVES_PLOT,
    report.GRID_FILE,
    report.SUMMARY_CSV,
    report.RUNS_CSV,
    'config.json',
  ):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  for run in ('mse/seed_0', 'mix/seed_1'):
    files = os.listdir(os.path.join(workdir, run))
    assert any(name.endswith(report.HPARAMS_SUFFIX) for name in files), run
    assert 'reconstructions.npz' in files
  assert os.path.exists(os.path.join(workdir, 'broken/seed_0/error.json'))


def test_seeds_share_one_compilation(finished_sweep):
  workdir, _, compiles = finished_sweep

  assert compiles['mse/seed_0'] > 0
  assert compiles['mse/seed_1'] == 0
  assert compiles['mix/seed_1'] == 0
  summaries = [
    trainer_summary(workdir, run) for run in ('mix/seed_0', 'mix/seed_1')
  ]
  assert summaries[0]['compile_seconds'] == summaries[1]['compile_seconds']
  assert summaries[0]['steps_per_second'] > 0


def test_rerun_skips_finished_runs(finished_sweep, data_dir):
  workdir, _, _ = finished_sweep
  summary_path = os.path.join(workdir, 'mse/seed_0', trainer.SUMMARY_FILE)
  modified = os.path.getmtime(summary_path)
  calls = []

  def recording_train(config, run_dir, **kwargs):
    calls.append(os.path.relpath(run_dir, workdir))
    raise RuntimeError('still broken')

  statuses = sweep.run_sweep(
    _sweep_config(data_dir), workdir, train_fn=recording_train
  )

  assert calls == ['broken/seed_0', 'broken/seed_1']
  assert statuses['mse/seed_0'] == statuses['mix/seed_1'] == 'skipped'
  assert os.path.getmtime(summary_path) == modified
  text = open(os.path.join(workdir, report.REPORT_FILE)).read()
  assert '`broken/seed_1` (failed): RuntimeError: still broken' in text


def test_rerun_resumes_interrupted_run(
  finished_sweep, data_dir, tmp_path, caplog
):
  source, _, _ = finished_sweep
  workdir = str(tmp_path / 'sweep')
  shutil.copytree(source, workdir)
  # What a run killed after its step-10 checkpoint leaves behind.
  run_dir = os.path.join(workdir, 'mse/seed_1')
  os.remove(os.path.join(run_dir, trainer.SUMMARY_FILE))
  shutil.rmtree(os.path.join(run_dir, 'checkpoints', '20'))
  caplog.set_level(logging.INFO, logger='absl')

  statuses = sweep.run_sweep(_sweep_config(data_dir, names=('mse',)), workdir)

  assert statuses == {'mse/seed_0': 'skipped', 'mse/seed_1': 'finished'}
  assert 'Resumed from the checkpoint at step 10.' in caplog.text
  assert trainer_summary(workdir, 'mse/seed_1')['step'] == 20


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('names', ('mse', 'nope'), "lists 'nope', which is not in"),
    ('names', (), 'config.ablation.names is empty'),
    ('names', ('mse', 'mse'), 'repeats a variant'),
    ('seeds', (), 'non-empty tuple of integers'),
    ('seeds', (1, 1), 'repeats a seed'),
  ],
)
def test_invalid_ablation_fields_named(
  data_dir, tmp_path, field, value, message
):
  config = _sweep_config(data_dir)
  config.ablation[field] = value

  with pytest.raises(ValueError, match=message):
    sweep.run_sweep(config, str(tmp_path / 'sweep'))
  assert not os.path.exists(tmp_path / 'sweep')


@pytest.mark.parametrize(
  'variant, message',
  [
    ({'blur': {'weight': 1.0}}, "sets term 'blur', which config.loss.terms"),
    ({'pixel': {'wieght': 1.0}}, "sets 'wieght', which loss.terms.pixel"),
    ({'pixel': {'weight': -1.0}}, "Variant 'bad': .*pixel.weight"),
  ],
)
def test_invalid_variants_fail_early(data_dir, tmp_path, variant, message):
  config = _sweep_config(data_dir, names=('mse', 'bad'))
  config.ablation.variants.bad = variant

  with pytest.raises(ValueError, match=message):
    sweep.run_sweep(config, str(tmp_path / 'sweep'))
  assert not os.path.exists(tmp_path / 'sweep')


def test_variant_trains_only_its_terms(data_dir):
  config = _sweep_config(data_dir)

  run_config = sweep.variant_config(config, 'mix', seed=7)

  weights = {name: t.weight for name, t in run_config.loss.terms.items()}
  assert {name for name, w in weights.items() if w} == {
    'pixel',
    'gram',
    'edge',
    'mean_shift',
  }
  assert weights['gram'] == 1e4
  assert run_config.seed == 7
  assert 'ablation' not in run_config
