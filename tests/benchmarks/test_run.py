"""Smoke test of `python -m benchmarks.run` at tiny sizes, one repeat.

The script runs in a subprocess: the CUDA build of torch crashes when it
loads after TensorFlow, which other tests in this process have loaded.
Nothing here checks a time; the tests check that every section is written
and that a missing PyTorch peer is reported rather than fatal.
"""

import importlib.util
import os
import subprocess
import sys

from benchmarks import timing

REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SECTION_TITLES = (
  '## Loss terms: value and gradient',
  '## Train step per loss variant of configs/ablation.py',
  '## Default train step against PyTorch',
  '## Achieved FLOP/s of the default train step',
  '## Input pipeline against the default step',
)


def test_run_writes_every_section(data_dir, digits, tmp_path):
  output = tmp_path / 'benchmarks.md'
  command = [
    sys.executable,
    '-m',
    'benchmarks.run',
    '--sizes=digits',
    '--variants=mse',
    '--repeats=1',
    '--warmup=0',
    '--loss_batch=4',
    '--step_batch=4',
    '--matmul_size=64',
    '--pipeline_batches=2',
    f'--data_dir={data_dir}',
    f'--output={output}',
  ]

  result = subprocess.run(
    command,
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )

  assert result.returncode == 0, result.stderr[-3000:]
  text = output.read_text()
  for title in SECTION_TITLES:
    assert title in text
  assert timing.START_MARKER in text
  assert timing.END_MARKER in text
  assert 'Command: `python -m benchmarks.run --sizes=digits' in text
  if importlib.util.find_spec('torch') is None:
    assert 'torch is not available' in text


def test_write_results_keeps_surrounding_text(tmp_path):
  path = tmp_path / 'page.md'
  path.write_text(
    f'# Title\n\nProse before.\n\n{timing.START_MARKER}\nold\n'
    f'{timing.END_MARKER}\n\nProse after.\n'
  )

  timing.write_results(str(path), ['new table'])

  text = path.read_text()
  assert text.startswith('# Title\n\nProse before.\n\n')
  assert 'new table' in text
  assert 'old' not in text
  assert text.endswith('\nProse after.\n')


def test_write_results_creates_file(tmp_path):
  path = tmp_path / 'docs' / 'new.md'

  timing.write_results(str(path), ['table'])

  text = path.read_text()
  assert text.startswith('# Benchmarks\n\n')
  assert 'table' in text
