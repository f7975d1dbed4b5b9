"""Bookkeeping of a run's workdir across restarts: the config and metric files.

Only process 0 writes. Config files are the resolved config as JSON
(`config.json`); metric files hold one JSON object per line with a `step`.
"""

import json
import os

from absl import logging
import jax

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'


def _flatten(tree, prefix=''):
  """Maps nested dicts to {'a.b.c': leaf}."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f'{prefix}.{key}' if prefix else key))
  return flat


def read_config(workdir):
  """Reads the config saved in `workdir` as a dict; None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def config_changes(saved, config):
  """Lists the fields that differ between a saved config and `config`.

  Args:
    saved: a config dict as read by `read_config`.
    config: the current `ConfigDict`.

  Returns:
    Sorted strings 'field: saved value -> current value'.
  """
  old = _flatten(saved)
  new = _flatten(json.loads(config.to_json_best_effort()))
  missing = '(absent)'
  return [
    f'{key}: {old.get(key, missing)} -> {new.get(key, missing)}'
    for key in sorted(old.keys() | new.keys())
    if old.get(key, missing) != new.get(key, missing)
  ]


def write_config(workdir, config, *, step):
  """Saves `config` as the run's `config.json`.

  A resumed run whose config differs from the saved one keeps the saved file
  as `config_until_step_<step>.json`, so the workdir still records what trained
  the earlier steps.

  Args:
    workdir: the run's working directory.
    config: the resolved `ConfigDict`.
    step: the step the run starts from; 0 for a new run.
  """
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  saved = read_config(workdir)
  if saved is not None and step > 0:
    changes = config_changes(saved, config)
    if changes:
      archived_path = os.path.join(workdir, f'config_until_step_{step}.json')
      os.replace(path, archived_path)
      logging.warning(
        'Resuming at step %d with a changed config; the previous one is kept '
        'as %s. Changes: %s',
        step,
        archived_path,
        '; '.join(changes),
      )
  # Written aside and renamed, so that a run killed meanwhile leaves the
  # previous file whole for the next resume to read.
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def drop_metrics_after(workdir, step):
  """Removes the metric rows logged after `step` by an interrupted run.

  A run killed between two checkpoints logged steps that the resumed run
  trains again, so without this `metrics.jsonl` would list them twice. Pass
  -1 to clear the file for a run that starts from scratch. Blank lines and
  a last row cut short by the kill are removed as well.

  NOTE: TensorBoard event files are append-only, so they keep those rows.

  Returns:
    How many rows were removed.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if jax.process_index() != 0 or not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  remaining = [line for line in lines if _row_step(line) <= step]
  if len(remaining) == len(lines):
    return 0
  with open(path + '.tmp', 'w') as f:
    f.writelines(remaining)
  os.replace(path + '.tmp', path)
  return len(lines) - len(remaining)


def _row_step(line):
  """Returns the step of a metrics row; infinity for a row that is cut off."""
  try:
    return json.loads(line)['step']
  except (json.JSONDecodeError, KeyError, TypeError):
    return float('inf')
