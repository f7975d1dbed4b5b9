"""Ablation sweeps: one training run per loss variant and seed, then a report.

A sweep config is a run config with an `ablation` field (see
`configs/ablation.py`):

  ablation.variants  name -> {term: fields}. A variant's run sets every loss
                     term of the base config to weight 0, then applies the
                     variant's fields to the terms it names.
  ablation.names     the variants to run, in report order.
  ablation.seeds     the seeds each variant is trained with.

Run `<variant>` with seed `<s>` lives in `<workdir>/<variant>/seed_<s>/`, an
ordinary run workdir. Rerunning a sweep skips runs whose `summary.json`
reports the configured step count, and resumes the others from their
checkpoints. A run that raises writes `error.json` into its folder and the
sweep goes on; the report lists it as failed. Runs that differ only in their
seed share one compiled train step.
"""

import dataclasses
import json
import numbers
import os
import time
import traceback

from absl import logging
import jax
import ml_collections

from train import preemption
from train import report
from train import trainer
from train import validation

ERROR_FILE = report.ERROR_FILE


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep."""

  variant: str
  seed: int
  config: ml_collections.ConfigDict

  @property
  def name(self):
    return os.path.join(self.variant, f'seed_{self.seed}')


def _check_ablation(config):
  """Raises ValueError naming the first invalid `ablation` field."""
  if 'ablation' not in config:
    raise ValueError(
      'The config has no ablation field, so there is nothing to sweep. Use '
      '--config=configs/ablation.py or a config that defines ablation.'
    )
  ablation = config.ablation
  seeds = tuple(ablation.seeds)
  if not seeds or not all(
    isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
    for seed in seeds
  ):
    raise ValueError(
      f'config.ablation.seeds must be a non-empty tuple of integers, got '
      f'{ablation.seeds!r}.'
    )
  if len(set(seeds)) != len(seeds):
    raise ValueError(
      f'config.ablation.seeds={seeds} repeats a seed; list each seed once.'
    )

  names = tuple(ablation.names)
  if not names:
    raise ValueError('config.ablation.names is empty; name at least one.')
  known = tuple(ablation.variants)
  for name in names:
    if name not in known:
      raise ValueError(
        f'config.ablation.names lists {name!r}, which is not in '
        f'config.ablation.variants. Known variants: {", ".join(known)}.'
      )
  if len(set(names)) != len(names):
    raise ValueError(
      f'config.ablation.names={names} repeats a variant; list each once.'
    )
  for name in names:
    if '/' in name or name in ('.', '..') or not name.strip():
      raise ValueError(
        f'Variant name {name!r} cannot be a folder name; use letters, digits '
        'and underscores.'
      )


def variant_config(config, name, seed):
  """Returns the run config of variant `name` with `seed`.

  Args:
    config: the sweep config.
    name: a key of `config.ablation.variants`.
    seed: the run's seed.

  Returns:
    A copy of the base config without `ablation`, with every loss term at
    weight 0 except those the variant names, which get the variant's fields.

  Raises:
    ValueError: if the variant names a term or field that the base config's
      loss does not have.
  """
  run_config = config.copy_and_resolve_references()
  run_config.unlock()
  del run_config['ablation']
  for term in run_config.loss.terms.values():
    term.weight = 0.0

  for term_name, fields in config.ablation.variants[name].items():
    if term_name not in run_config.loss.terms:
      raise ValueError(
        f'config.ablation.variants.{name} sets term {term_name!r}, which '
        'config.loss.terms does not define. Terms: '
        f'{", ".join(run_config.loss.terms)}.'
      )
    term = run_config.loss.terms[term_name]
    for field, value in fields.items():
      if field not in term:
        raise ValueError(
          f'config.ablation.variants.{name}.{term_name} sets {field!r}, '
          f'which loss.terms.{term_name} does not have. Its fields: '
          f'{", ".join(term)}.'
        )
      term[field] = value

  run_config.seed = seed
  run_config.lock()
  return run_config


def plan(config):
  """Lists the sweep's runs after checking every run config.

  Every run config is validated here, so a bad variant fails the sweep
  before anything trains.

  Returns:
    A list of `Run`, variants in `config.ablation.names` order, seeds inner.

  Raises:
    ValueError: naming the variant and the invalid field.
  """
  _check_ablation(config)
  runs = []
  for name in config.ablation.names:
    for seed in config.ablation.seeds:
      run_config = variant_config(config, name, seed)
      try:
        validation.validate_config(run_config)
      except ValueError as err:
        raise ValueError(f'Variant {name!r}: {err}') from err
      runs.append(Run(variant=name, seed=int(seed), config=run_config))
  return runs


def is_finished(run_dir, run_config):
  """Returns whether `run_dir` has a summary at the final step."""
  path = os.path.join(run_dir, trainer.SUMMARY_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    summary = json.load(f)
  return summary.get('step') == run_config.num_train_steps


def _write_error(run_dir, err):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, ERROR_FILE), 'w') as f:
    json.dump(
      {
        'error': f'{type(err).__name__}: {err}',
        'traceback': traceback.format_exc(),
      },
      f,
      indent=2,
    )


def _write_sweep_config(workdir, config):
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def run_sweep(config, workdir, *, train_fn=trainer.train_and_evaluate):
  """Trains every run of the sweep that is not finished, then reports.

  Args:
    config: the sweep config.
    workdir: the sweep's directory; each run gets a subfolder.
    train_fn: `train_fn(config, workdir, cache=...)`, the trainer; one cache
      dict is passed to every run.

  Returns:
    A dict: run name (`<variant>/seed_<s>`) -> 'skipped' (finished
    earlier), 'finished' or 'failed'.
  """
  runs = plan(config)
  # Every process trains every run; only process 0 writes the sweep's files.
  is_writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_writer:
    _write_sweep_config(workdir, config)

  statuses = {}
  cache = {}
  sweep_start = time.perf_counter()
  for index, run in enumerate(runs, start=1):
    run_dir = os.path.join(workdir, run.name)
    if is_finished(run_dir, run.config):
      logging.info(
        'Run %d/%d %s is finished; skipping it.', index, len(runs), run.name
      )
      statuses[run.name] = 'skipped'
      continue

    logging.info('Run %d/%d: %s', index, len(runs), run.name)
    run_start = time.perf_counter()
    try:
      train_fn(run.config, run_dir, cache=cache)
    except preemption.Preempted:
      # SIGTERM stops the whole sweep; rerunning it resumes this run.
      raise
    except Exception as err:
      # One failed run must not end the sweep.
      logging.exception(
        'Run %s failed; continuing with the next run.', run.name
      )
      if is_writer:
        _write_error(run_dir, err)
      statuses[run.name] = 'failed'
      continue

    error_path = os.path.join(run_dir, ERROR_FILE)
    if is_writer and os.path.exists(error_path):
      os.remove(error_path)
    statuses[run.name] = 'finished'
    logging.info(
      'Run %s took %.1f s; the sweep has run for %.1f s.',
      run.name,
      time.perf_counter() - run_start,
      time.perf_counter() - sweep_start,
    )

  if is_writer:
    report.write_report(config, workdir, runs)
  failed = [name for name, status in statuses.items() if status == 'failed']
  logging.info(
    'Sweep of %d runs done in %.1f s (%d failed). Report: %s',
    len(runs),
    time.perf_counter() - sweep_start,
    len(failed),
    os.path.join(os.path.abspath(workdir), report.REPORT_FILE),
  )
  return statuses
