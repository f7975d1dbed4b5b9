"""Runs `main.py` as a user would: a subprocess with flags and overrides."""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_main(workdir, data_dir, *overrides):
  command = [
    sys.executable,
    os.path.join(REPO_ROOT, 'main.py'),
    '--config=' + os.path.join(REPO_ROOT, 'configs', 'test.py'),
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    *overrides,
  ]
  return subprocess.run(
    command, capture_output=True, text=True, timeout=300, check=False
  )


def test_overrides_reach_config(data_dir, digits, tmp_path):
  workdir = tmp_path / 'run'

  result = _run_main(
    workdir,
    data_dir,
    '--config.num_train_steps=4',
    '--config.loss.terms.edge.weight=0.5',
    '--config.loss.terms.pixel.distance=bce',
  )

  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / 'config.json').read_text())
  assert config['loss']['terms']['edge']['weight'] == 0.5
  assert config['loss']['terms']['pixel']['distance'] == 'bce'
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['step'] == 4
  assert 'Test PSNR' in result.stderr


def test_invalid_override_fails_clearly(data_dir, tmp_path):
  result = _run_main(
    tmp_path / 'run', data_dir, '--config.loss.terms.edge.distance=bce'
  )

  assert result.returncode != 0
  assert 'loss.terms.edge.distance' in result.stderr
  assert not (tmp_path / 'run').exists()


def test_probe_mode_writes_outputs(data_dir, digits, tmp_path):
  workdir = tmp_path / 'probe'
  command = [
    sys.executable,
    os.path.join(REPO_ROOT, 'main.py'),
    '--mode=probe',
    '--config=' + os.path.join(REPO_ROOT, 'configs', 'probe.py'),
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    '--config.probe.num_images=4',
    '--config.probe.brightness=(0.0, 0.2)',
    '--config.probe.blur=(0.0, 1.0)',
  ]

  result = subprocess.run(
    command, capture_output=True, text=True, timeout=300, check=False
  )

  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / 'probe.csv').exists()
  assert (workdir / 'probe_brightness.png').exists()
  assert 'Probe results are in' in result.stderr
  assert not (workdir / 'summary.json').exists()
