"""Metric and image writers: absl logging, TensorBoard and `metrics.jsonl`.

Only process 0 writes files and logs the scalars, so a run of several
processes logs each value once. Scalars are Python floats keyed by name
(`train/loss`, `eval/psnr`, ...); images are [H, W, C] float arrays in
[0, 1].
"""

import json
import os

from absl import logging
from flax.metrics import tensorboard
import jax
import numpy as np
from PIL import Image

from train import workdir as run_files


class MetricWriter:
  """Writes scalars to the log, TensorBoard and a JSON-lines file.

  Each `write_scalars` call appends one JSON object `{"step": ..., name:
  value, ...}` to `<workdir>/metrics.jsonl`, so a resumed run continues the
  same file.
  """

  def __init__(self, workdir):
    self._is_writer = jax.process_index() == 0
    self._summary = None
    self._jsonl = None
    if self._is_writer:
      self._summary = tensorboard.SummaryWriter(workdir)
      self._jsonl = open(os.path.join(workdir, run_files.METRICS_FILE), 'a')

  def write_scalars(self, step, scalars):
    """Logs `scalars` (name -> number) at `step`."""
    if not self._is_writer:
      return
    scalars = {name: float(value) for name, value in scalars.items()}
    logging.info(
      'step %d: %s',
      step,
      ', '.join(f'{name}={value:.6g}' for name, value in scalars.items()),
    )
    for name, value in scalars.items():
      self._summary.scalar(name, value, step)
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()

  def write_image(self, step, name, image):
    """Writes one [H, W, C] image in [0, 1] to TensorBoard."""
    if self._is_writer:
      self._summary.image(name, np.asarray(image), step)

  def close(self):
    if self._is_writer:
      self._summary.flush()
      self._summary.close()
      self._jsonl.close()


def image_grid(originals, reconstructions):
  """Lays images above their reconstructions, with a 1-pixel white border.

  Args:
    originals: [N, H, W, C] in [0, 1].
    reconstructions: [N, H, W, C] in [0, 1].

  Returns:
    One [2 * (H + 1) + 1, N * (W + 1) + 1, C] float32 image: originals in the
    top row, reconstructions below.
  """
  originals = np.asarray(originals, np.float32)
  reconstructions = np.asarray(reconstructions, np.float32)
  count, height, width, channels = originals.shape
  grid = np.ones(
    (2 * (height + 1) + 1, count * (width + 1) + 1, channels), np.float32
  )
  for row, images in enumerate((originals, reconstructions)):
    top = 1 + row * (height + 1)
    for i in range(count):
      left = 1 + i * (width + 1)
      grid[top : top + height, left : left + width] = images[i]
  return grid


def save_png(path, image):
  """Saves an [H, W, C] float image in [0, 1] as an 8-bit PNG."""
  pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  Image.fromarray(pixels).save(path)
