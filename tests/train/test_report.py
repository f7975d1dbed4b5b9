"""Tests for train.report on hand-written run folders.

The confidence intervals are checked against values worked out by hand from
the Student t table: t(0.975, 1) = 12.7062 and t(0.975, 2) = 4.3027.
"""

import csv
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from configs import ablation
from train import report
from train import sweep


def test_interval_of_two_values_by_hand():
  # mean 3, s = sqrt(2), so s / sqrt(n) = 1 and the half width is t itself.
  mean, half = report.confidence_interval([2.0, 4.0])

  assert mean == 3.0
  assert half == pytest.approx(12.7062, abs=1e-4)


def test_interval_of_three_values_by_hand():
  # mean 2, s = 1, half width 4.3027 / sqrt(3) = 2.4841.
  mean, half = report.confidence_interval([1.0, 2.0, 3.0])

  assert mean == 2.0
  assert half == pytest.approx(2.4841, abs=1e-4)


def test_interval_of_equal_values_is_zero():
  assert report.confidence_interval([5.0, 5.0, 5.0]) == (5.0, 0.0)


def test_interval_needs_two_values():
  mean, half = report.confidence_interval([7.0])

  assert mean == 7.0
  assert math.isnan(half)


def test_best_follows_each_metric_direction():
  table = {
    'a': {'psnr': (20.0, 0.5, 3), 'mae': (0.10, 0.01, 3)},
    'b': {'psnr': (19.8, 0.5, 3), 'mae': (0.05, 0.01, 3)},
    'c': {'psnr': (15.0, 0.5, 3), 'mae': (0.30, 0.01, 3)},
  }

  assert report.best_variants(table, 'psnr') == ('a', ['b'])
  assert report.best_variants(table, 'mae') == ('b', [])


def _sweep_config(names=('mse', 'mix'), seeds=(0, 1, 2)):
  config = ablation.get_config()
  config.ablation.names = names
  config.ablation.seeds = seeds
  config.num_train_steps = 10
  config.warmup_steps = 2
  return config


def _write_run(run_dir, summary=None, error=None):
  os.makedirs(run_dir, exist_ok=True)
  if summary is not None:
    with open(os.path.join(run_dir, 'summary.json'), 'w') as f:
      json.dump(summary, f)
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
      for step in (0, 10):
        f.write(json.dumps({'step': step, 'eval/psnr': step + 1.0}) + '\n')
    np.savez(
      os.path.join(run_dir, 'reconstructions.npz'),
      images=np.zeros((4, 28, 28, 1), np.float32),
      reconstructions=np.ones((4, 28, 28, 1), np.float32),
    )
  if error is not None:
    with open(os.path.join(run_dir, 'error.json'), 'w') as f:
      json.dump({'error': error, 'traceback': ''}, f)


def test_report_from_run_folders(tmp_path):
  config = _sweep_config()
  runs = sweep.plan(config)
  psnrs = {0: 17.0, 1: 18.0, 2: 19.0}
  for run in runs:
    run_dir = str(tmp_path / run.name)
    if run.variant == 'mix' and run.seed == 2:
      _write_run(run_dir, error='FloatingPointError: loss is nan')
      continue
    offset = 1.0 if run.variant == 'mix' else 0.0
    _write_run(
      run_dir,
      summary={
        'step': 10,
        'psnr': psnrs[run.seed] + offset,
        'mae': 0.1,
        'steps_per_second': 50.0,
        'compile_seconds': 2.0,
      },
    )

  path = report.write_report(config, str(tmp_path), runs)

  text = open(path).read()
  # mse: 17, 18, 19 -> 18 +- 2.484; mix: 18, 19 -> 18.5 +- 6.353, shown to
  # two significant digits of the half width.
  assert '| `mse` | 18.0 ± 2.5 |' in text
  assert '| `mix` | **18.5 ± 6.4** |' in text
  assert (
    '- **PSNR (dB)**: `mix` 18.5, `mse` 18. Within the interval: `mse`.'
    in (text)
  )
  assert '`mix/seed_2` (failed): FloatingPointError: loss is nan' in text
  assert '5 of 6 runs finished' in text
  for name in (
    report.METRICS_PLOT,
    report.CURVES_PLOT,
    report.GRID_FILE,
    report.SUMMARY_CSV,
    report.RUNS_CSV,
  ):
    assert os.path.getsize(tmp_path / name) > 0, name

  with open(tmp_path / report.RUNS_CSV) as f:
    rows = list(csv.DictReader(f))
  assert [(r['variant'], r['seed'], r['status']) for r in rows] == [
    ('mse', '0', 'finished'),
    ('mse', '1', 'finished'),
    ('mse', '2', 'finished'),
    ('mix', '0', 'finished'),
    ('mix', '1', 'finished'),
    ('mix', '2', 'failed'),
  ]
  with open(tmp_path / report.SUMMARY_CSV) as f:
    rows = {(r['variant'], r['metric']): r for r in csv.DictReader(f)}
  assert float(rows['mse', 'psnr']['ci95_half_width']) == pytest.approx(
    2.4841, abs=1e-4
  )
  assert rows['mix', 'psnr']['seeds'] == '2'


def test_report_rewrites_hparams_instead_of_adding(tmp_path):
  config = _sweep_config(names=('mse',), seeds=(0, 1))
  runs = sweep.plan(config)
  for run in runs:
    _write_run(str(tmp_path / run.name), summary={'step': 10, 'psnr': 20.0})

  report.write_report(config, str(tmp_path), runs)
  report.write_report(config, str(tmp_path), runs)

  hparams_files = [
    os.path.join(root, name)
    for root, _, names in os.walk(tmp_path)
    for name in names
    if name.endswith(report.HPARAMS_SUFFIX)
  ]
  # One hparams_config at the top, one session per run.
  assert len(hparams_files) == 3
  session = [p for p in hparams_files if 'seed_1' in p][0]
  tags = set()
  for event in tf.compat.v1.train.summary_iterator(session):
    for value in event.summary.value:
      tags.add((value.tag, value.metadata.plugin_data.plugin_name))
  assert ('_hparams_/session_start_info', 'hparams') in tags
  assert ('hparams/psnr', 'scalars') in tags
