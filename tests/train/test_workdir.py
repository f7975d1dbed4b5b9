"""Tests of the workdir bookkeeping that a resumed run relies on."""

import json
import os

from train import workdir as run_files


def test_drop_metrics_removes_cut_row(tmp_path):
  rows = [json.dumps({'step': step, 'train/loss': 1.0}) for step in (5, 10, 15)]
  # A run killed while writing leaves a last row without its end.
  text = '\n'.join(rows) + '\n' + '{"step": 20, "train/lo'
  path = tmp_path / run_files.METRICS_FILE
  path.write_text(text)

  removed = run_files.drop_metrics_after(str(tmp_path), 10)

  assert removed == 2
  remaining = [json.loads(line) for line in path.read_text().splitlines()]
  assert [row['step'] for row in remaining] == [5, 10]
  assert not os.path.exists(str(path) + '.tmp')
