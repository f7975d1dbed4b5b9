"""The report of an ablation sweep: tables, plots, an image grid, hparams.

`write_report` reads every run's `summary.json`, `metrics.jsonl`,
`reconstructions.npz` and `error.json` under the sweep's workdir and writes:

  report.md             trained variant by evaluated metric: mean and 95%
                        confidence interval over seeds, the best mean of each
                        column in bold, a ranking per metric, failed runs
  report.csv            the same numbers, one row per variant and metric
  runs.csv              one row per run: status, every metric, the error
  metrics.png           each metric per variant with its interval
  training_curves.png   test PSNR and SSIM against step, mean over seeds
  reconstructions.png   the same test images reconstructed by every variant
  *.hparams event files TensorBoard hparams: one session per run, with the
                        variant, seed and term weights, and the final metrics

The interval is Student's t interval for the mean of the per-seed values,
mean +- t(0.975, n - 1) * s / sqrt(n) with s the sample standard deviation.
It needs two or more finished seeds; with one it is shown as n/a.
"""

import csv
import datetime
import glob
import json
import math
import os

from matplotlib import colormaps
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure
import numpy as np
import scipy.stats
from tensorboard.plugins.hparams import api as hp
import tensorflow as tf

from train import metrics as metric_suite
from train import trainer
from train import workdir as run_files

REPORT_FILE = 'report.md'
SUMMARY_CSV = 'report.csv'
RUNS_CSV = 'runs.csv'
METRICS_PLOT = 'metrics.png'
CURVES_PLOT = 'training_curves.png'
GRID_FILE = 'reconstructions.png'
HPARAMS_SUFFIX = '.hparams'

ERROR_FILE = 'error.json'

# Report columns in order: the suite, then the training cost.
METRIC_ORDER = (
  'psnr',
  'ssim',
  'ms_ssim',
  'mae',
  'edge_l1',
  'gram_distance',
  'mean_shift_mse',
  'mse',
  'steps_per_second',
  'compile_seconds',
)
HIGHER_IS_BETTER = {
  **metric_suite.HIGHER_IS_BETTER,
  'steps_per_second': True,
  'compile_seconds': False,
}
LABELS = {
  'psnr': 'PSNR (dB)',
  'ssim': 'SSIM',
  'ms_ssim': 'MS-SSIM',
  'mse': 'MSE',
  'mae': 'MAE',
  'edge_l1': 'Sobel edge L1',
  'gram_distance': 'Gram distance (random net)',
  'mean_shift_mse': 'mean-shifted MSE',
  'steps_per_second': 'train steps/s',
  'compile_seconds': 'compile s',
}
GRID_COLUMNS = 8


def confidence_interval(values, level=0.95):
  """Returns (mean, half width) of Student's t interval for the mean.

  Args:
    values: one number per seed.
    level: the interval's coverage.

  Returns:
    The sample mean and t((1 + level) / 2, n - 1) * s / sqrt(n), with s the
    sample standard deviation (ddof 1). The half width is NaN for fewer than
    two values.
  """
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return math.nan, math.nan
  mean = float(values.mean())
  if values.size < 2:
    return mean, math.nan
  quantile = scipy.stats.t.ppf((1 + level) / 2, values.size - 1)
  return mean, float(quantile * values.std(ddof=1) / math.sqrt(values.size))


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def collect(workdir, runs):
  """Reads each run's outcome.

  Args:
    workdir: the sweep's directory.
    runs: the `sweep.Run`s of the sweep.

  Returns:
    One dict per run: `variant`, `seed`, `run_dir`, `status` ('finished',
    'failed' or 'missing'), `summary` (dict or None) and `error` (str or
    None).
  """
  records = []
  for run in runs:
    run_dir = os.path.join(workdir, run.name)
    summary = _read_json(os.path.join(run_dir, trainer.SUMMARY_FILE))
    error = _read_json(os.path.join(run_dir, ERROR_FILE))
    if error is not None:
      status, summary = 'failed', None
    elif summary is not None and summary.get('step') == (
      run.config.num_train_steps
    ):
      status = 'finished'
    else:
      status, summary = 'missing', None
    records.append(
      {
        'variant': run.variant,
        'seed': run.seed,
        'run_dir': run_dir,
        'config': run.config,
        'status': status,
        'summary': summary,
        'error': error['error'] if error else None,
      }
    )
  return records


def metric_names(records):
  """Returns the metrics in `METRIC_ORDER` that some finished run reports."""
  present = set()
  for record in records:
    if record['summary']:
      present.update(
        name
        for name, value in record['summary'].items()
        if isinstance(value, (int, float))
      )
  return tuple(name for name in METRIC_ORDER if name in present)


def summarize(records, names):
  """Aggregates finished runs per variant.

  Returns:
    {variant: {metric: (mean, half_width, seeds)}}, variants in run order.
    A variant without finished runs maps to an empty dict.
  """
  table = {}
  for record in records:
    table.setdefault(record['variant'], {})
  for variant in table:
    finished = [
      r['summary']
      for r in records
      if r['variant'] == variant and r['status'] == 'finished'
    ]
    if not finished:
      continue
    for name in names:
      values = [
        s[name]
        for s in finished
        if isinstance(s.get(name), (int, float)) and math.isfinite(s[name])
      ]
      mean, half = confidence_interval(values)
      table[variant][name] = (mean, half, len(values))
  return table


def best_variants(table, name):
  """Returns (best variant, variants whose interval overlaps the best's).

  Overlapping 95% intervals are a conservative reading: such variants are
  not shown to differ from the best at these seeds.
  """
  candidates = [
    (variant, stats[name])
    for variant, stats in table.items()
    if name in stats and math.isfinite(stats[name][0])
  ]
  if not candidates:
    return None, []
  sign = 1 if HIGHER_IS_BETTER[name] else -1
  best, (best_mean, best_half, _) = max(
    candidates, key=lambda item: sign * item[1][0]
  )
  ties = []
  for variant, (mean, half, _) in candidates:
    if variant == best:
      continue
    if not (math.isfinite(half) and math.isfinite(best_half)):
      continue
    if abs(mean - best_mean) <= half + best_half:
      ties.append(variant)
  return best, ties


def _format_value(value, decimals=None):
  """Formats a number to `decimals` places, or to 4 significant digits."""
  if not math.isfinite(value):
    return 'n/a'
  if decimals is not None:
    return f'{value:.{decimals}f}'
  return f'{value:.4g}'


def _decimals(half):
  """Returns the decimal places that show two significant digits of `half`."""
  if not math.isfinite(half) or half <= 0:
    return None
  return max(0, 1 - math.floor(math.log10(half)))


def _format_cell(stats):
  if stats is None:
    return 'n/a'
  mean, half, _ = stats
  decimals = _decimals(half)
  if decimals is None:
    return f'{_format_value(mean)} ± {"n/a" if math.isnan(half) else 0}'
  return f'{_format_value(mean, decimals)} ± {_format_value(half, decimals)}'


def _data_description(config):
  return (
    f'`{config.data.name}` ({config.data.eval_split} split), '
    f'{config.num_train_steps} steps at batch {config.batch_size}, model '
    f'widths {tuple(config.model.widths)} and latent {config.model.latent_dim}'
  )


def _markdown(config, records, table, names):
  seeds = tuple(config.ablation.seeds)
  finished = sum(r['status'] == 'finished' for r in records)
  lines = [
    '# Ablation report',
    '',
    f'Written {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. '
    f'{_data_description(config)}; seeds {seeds}. {finished} of '
    f'{len(records)} runs finished.',
    '',
    'Each cell is the mean over seeds and the half width of the 95% '
    'confidence interval (Student t). Bold marks the best mean of each '
    'column. Arrows give the better direction. Every model is scored by the '
    'same metrics on the held-out split, whatever loss it trained on.',
    '',
  ]

  bests = {name: best_variants(table, name)[0] for name in names}
  header = ['variant'] + [
    f'{LABELS[name]} {"↑" if HIGHER_IS_BETTER[name] else "↓"}' for name in names
  ]
  lines.append('| ' + ' | '.join(header) + ' |')
  lines.append('|' + ' --- |' * len(header))
  for variant, stats in table.items():
    statuses = {r['status'] for r in records if r['variant'] == variant}
    empty = 'failed' if 'failed' in statuses else 'not run'
    cells = [f'`{variant}`']
    for name in names:
      cell = _format_cell(stats.get(name)) if stats else empty
      if bests[name] == variant:
        cell = f'**{cell}**'
      cells.append(cell)
    lines.append('| ' + ' | '.join(cells) + ' |')

  lines += [
    '',
    '## Ranking per metric',
    '',
    'Variants from best to worst. "Within the interval" lists the variants '
    "whose 95% interval overlaps the best one's, so these seeds do not "
    'separate them from the best.',
    '',
  ]
  for name in names:
    sign = 1 if HIGHER_IS_BETTER[name] else -1
    ranked = sorted(
      (v for v in table if name in table[v]),
      key=lambda v: -sign * table[v][name][0],
    )
    if not ranked:
      continue
    order = ', '.join(
      f'`{v}` {_format_value(table[v][name][0])}' for v in ranked
    )
    _, ties = best_variants(table, name)
    within = ', '.join(f'`{v}`' for v in ties) or 'none'
    lines.append(
      f'- **{LABELS[name]}**: {order}. Within the interval: {within}.'
    )

  failed = [r for r in records if r['status'] != 'finished']
  lines += ['', '## Failed or missing runs', '']
  if failed:
    for record in failed:
      reason = record['error'] or 'no summary at the final step'
      lines.append(
        f'- `{record["variant"]}/seed_{record["seed"]}` '
        f'({record["status"]}): {reason}'
      )
  else:
    lines.append('None.')

  lines += [
    '',
    '## Figures',
    '',
    f'![metrics per variant]({METRICS_PLOT})',
    '',
    f'![training curves]({CURVES_PLOT})',
    '',
    f'![reconstructions by variant]({GRID_FILE})',
    '',
    'Numbers: `report.csv` (per variant and metric) and `runs.csv` (per '
    'run). TensorBoard: `tensorboard --logdir` on this folder; the HPARAMS '
    'tab lists every run with its final metrics.',
    '',
  ]
  return '\n'.join(lines)


def _write_csvs(workdir, records, table, names):
  with open(os.path.join(workdir, SUMMARY_CSV), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(
      [
        'variant',
        'metric',
        'mean',
        'ci95_half_width',
        'ci95_low',
        'ci95_high',
        'seeds',
      ]
    )
    for variant, stats in table.items():
      for name in names:
        if name not in stats:
          continue
        mean, half, count = stats[name]
        writer.writerow(
          [variant, name, mean, half, mean - half, mean + half, count]
        )

  with open(os.path.join(workdir, RUNS_CSV), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['variant', 'seed', 'status', *names, 'error'])
    for record in records:
      summary = record['summary'] or {}
      writer.writerow(
        [
          record['variant'],
          record['seed'],
          record['status'],
          *[summary.get(name, '') for name in names],
          record['error'] or '',
        ]
      )


def _figure(size):
  # A Figure on the Agg canvas, without pyplot: no GUI backend is needed.
  fig = Figure(figsize=size, layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _plot_metrics(path, table, names):
  variants = list(table)
  columns = 3
  rows = math.ceil(len(names) / columns)
  fig = _figure((5 * columns, 0.3 * len(variants) * rows + 1.2 * rows))
  axes = fig.subplots(rows, columns, squeeze=False)
  positions = np.arange(len(variants))
  for ax, name in zip(axes.flat, names, strict=False):
    means = [table[v].get(name, (math.nan,) * 3)[0] for v in variants]
    halves = [table[v].get(name, (math.nan,) * 3)[1] for v in variants]
    best, _ = best_variants(table, name)
    for position, variant, mean, half in zip(
      positions, variants, means, halves, strict=True
    ):
      ax.errorbar(
        mean,
        position,
        xerr=None if math.isnan(half) else half,
        fmt='o',
        color='tab:orange' if variant == best else 'tab:blue',
        capsize=3,
      )
    ax.set_yticks(positions, variants, fontsize=7)
    ax.set_ylim(len(variants) - 0.5, -0.5)
    arrow = 'higher' if HIGHER_IS_BETTER[name] else 'lower'
    ax.set_title(f'{LABELS[name]} ({arrow} is better)', fontsize=9)
    ax.grid(axis='x', alpha=0.3)
  for ax in list(axes.flat)[len(names) :]:
    ax.axis('off')
  fig.suptitle('Mean and 95% interval over seeds; orange is the best mean')
  fig.savefig(path, dpi=100)


def _read_curve(run_dir, name):
  path = os.path.join(run_dir, run_files.METRICS_FILE)
  points = {}
  if not os.path.exists(path):
    return points
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if name in row:
        points[row['step']] = row[name]
  return points


def _plot_curves(path, records):
  curves = [('eval/psnr', 'test PSNR (dB)'), ('eval/ssim', 'test SSIM')]
  fig = _figure((13, 5))
  axes = fig.subplots(1, len(curves), squeeze=False)
  variants = list(dict.fromkeys(r['variant'] for r in records))
  colors = colormaps['tab20'](np.linspace(0, 1, max(len(variants), 1)))
  for ax, (name, label) in zip(axes.flat, curves, strict=True):
    for color, variant in zip(colors, variants, strict=False):
      per_seed = [
        _read_curve(r['run_dir'], name)
        for r in records
        if r['variant'] == variant and r['status'] == 'finished'
      ]
      per_seed = [points for points in per_seed if points]
      if not per_seed:
        continue
      shared = sorted(set.intersection(*(set(p) for p in per_seed)))
      values = [np.mean([p[step] for p in per_seed]) for step in shared]
      ax.plot(shared, values, label=variant, color=color, marker='.')
    ax.set_xlabel('step')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=7, ncol=2)
  fig.suptitle('Held-out metrics during training, mean over seeds')
  fig.savefig(path, dpi=100)


def _plot_grid(path, records):
  rows = []
  originals = None
  for variant in dict.fromkeys(r['variant'] for r in records):
    for record in records:
      if record['variant'] != variant or record['status'] != 'finished':
        continue
      arrays = os.path.join(record['run_dir'], trainer.RECONSTRUCTIONS_FILE)
      if os.path.exists(arrays):
        with np.load(arrays) as saved:
          originals = saved['images'][:GRID_COLUMNS]
          reconstructions = saved['reconstructions'][:GRID_COLUMNS]
        rows.append((f'{variant} (seed {record["seed"]})', reconstructions))
        break
  if originals is None:
    return False

  rows.insert(0, ('test images', originals))
  count = len(originals)
  fig = _figure((1.1 * count + 2.2, 1.1 * len(rows)))
  axes = fig.subplots(len(rows), count, squeeze=False)
  for row_axes, (label, images) in zip(axes, rows, strict=True):
    for ax, image in zip(row_axes, images, strict=True):
      image = np.clip(image, 0.0, 1.0)
      if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0)
      else:
        ax.imshow(image)
      ax.set_xticks([])
      ax.set_yticks([])
    row_axes[0].set_ylabel(
      label, rotation=0, ha='right', va='center', fontsize=8
    )
  fig.savefig(path, dpi=100)
  return True


def _write_hparams(workdir, records, names):
  """Writes one TensorBoard hparams session per finished run.

  Files from an earlier report are replaced, so rerunning a sweep does not
  duplicate sessions.
  """
  for path in glob.glob(
    os.path.join(workdir, '**', f'*{HPARAMS_SUFFIX}'), recursive=True
  ):
    os.remove(path)

  term_names = tuple(records[0]['config'].loss.terms) if records else ()
  hparams = [
    hp.HParam('variant', hp.Discrete(sorted({r['variant'] for r in records}))),
    hp.HParam('seed', hp.Discrete(sorted({r['seed'] for r in records}))),
    *[hp.HParam(f'weight/{term}') for term in term_names],
  ]
  metrics = [
    hp.Metric(f'hparams/{name}', display_name=LABELS[name]) for name in names
  ]
  with tf.summary.create_file_writer(
    workdir, filename_suffix=HPARAMS_SUFFIX
  ).as_default():
    hp.hparams_config(hparams=hparams, metrics=metrics)

  for record in records:
    if record['status'] != 'finished':
      continue
    config = record['config']
    values = {'variant': record['variant'], 'seed': record['seed']}
    values.update(
      {
        f'weight/{term}': float(config.loss.terms[term].weight)
        for term in term_names
      }
    )
    writer = tf.summary.create_file_writer(
      record['run_dir'], filename_suffix=HPARAMS_SUFFIX
    )
    with writer.as_default():
      hp.hparams(values, trial_id=f'{record["variant"]}/seed_{record["seed"]}')
      for name in names:
        value = record['summary'].get(name)
        if isinstance(value, (int, float)):
          tf.summary.scalar(
            f'hparams/{name}', value, step=record['summary']['step']
          )
    writer.close()


def write_report(config, workdir, runs):
  """Writes the report files of a sweep into `workdir`.

  Args:
    config: the sweep config.
    workdir: the sweep's directory.
    runs: the `sweep.Run`s, in report order.

  Returns:
    The path of `report.md`.
  """
  records = collect(workdir, runs)
  names = metric_names(records)
  table = summarize(records, names)

  _write_csvs(workdir, records, table, names)
  if names:
    _plot_metrics(os.path.join(workdir, METRICS_PLOT), table, names)
  _plot_curves(os.path.join(workdir, CURVES_PLOT), records)
  _plot_grid(os.path.join(workdir, GRID_FILE), records)
  _write_hparams(workdir, records, names)

  path = os.path.join(workdir, REPORT_FILE)
  with open(path, 'w') as f:
    f.write(_markdown(config, records, table, names))
  return path
