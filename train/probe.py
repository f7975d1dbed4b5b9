"""Loss response probe: how each loss term reacts to controlled perturbations.

`run_probe` reads real test images, perturbs them with increasing strength
and reports every configured term's unweighted value between the images
(the target x) and the perturbed images (the reconstruction x_hat). The
perturbations are:

  brightness   clip(x + b, 0, 1) for each shift b.
  contrast     clip(m + c * (x - m), 0, 1), where m is the mean of each image
               and channel, for each factor c (1 leaves the image unchanged).
  blur         a Gaussian blur over height and width with standard deviation
               sigma in pixels, reflecting at the border (sigma 0 is no blur).
  noise        clip(x + sigma * N(0, 1), 0, 1), with a fixed seed.
  translation  a shift right by k pixels, repeating the left column.

The composite loss reads logits, so it is given
logits = logit(clip(x_hat, 1e-4, 1 - 1e-4)), whose sigmoid is x_hat up to
that clip. The feature terms (gram, and features with its default network)
read the autoencoder's encoder. The probe uses the autoencoder of the newest
checkpoint in `<workdir>/checkpoints` if there is one, and otherwise the
autoencoder initialised from `config.seed`.

Outputs in the workdir: `probe.csv` (perturbation, strength, term, value)
and one plot per perturbation, `probe_<perturbation>.png`.
"""

import csv
import os

from absl import logging
import jax
import jax.numpy as jnp
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure
import numpy as np
from scipy import ndimage

from losses import composite
from models import autoencoder
from train import checkpointing
from train import input_pipeline
from train import train_state
from train import validation

PERTURBATIONS = ('brightness', 'contrast', 'blur', 'noise', 'translation')

# Clip applied to x_hat before taking its logit, so that the logits are finite.
_LOGIT_CLIP = 1e-4

_MARKERS = ('o', 's', '^', 'v', 'D', 'x', '+', '*', 'P', 'h')
_LINE_STYLES = ('-', '--', ':', '-.')

_AXIS_LABELS = {
  'brightness': 'brightness shift b: clip(x + b, 0, 1)',
  'contrast': 'contrast factor c: clip(m + c (x - m), 0, 1)',
  'blur': 'Gaussian blur standard deviation (pixels)',
  'noise': 'Gaussian noise standard deviation, clipped to [0, 1]',
  'translation': 'shift right (pixels), left column repeated',
}


def perturb(images, perturbation, strength, *, seed=0):
  """Applies one perturbation of the given strength to a batch of images.

  Args:
    images: float array [B, H, W, C] in [0, 1].
    perturbation: one of PERTURBATIONS.
    strength: the shift b, factor c, sigma or pixel count k, as described
      in the module docstring.
    seed: seed of the noise; the other perturbations are deterministic.

  Returns:
    The perturbed images, float32 [B, H, W, C] in [0, 1].

  Raises:
    ValueError: `perturbation` is unknown.
  """
  images = np.asarray(images, np.float32)
  if perturbation == 'brightness':
    perturbed = images + strength
  elif perturbation == 'contrast':
    means = images.mean(axis=(1, 2), keepdims=True)
    perturbed = means + strength * (images - means)
  elif perturbation == 'blur':
    perturbed = ndimage.gaussian_filter(
      images, sigma=(0, strength, strength, 0), mode='reflect'
    )
  elif perturbation == 'noise':
    noise = np.random.default_rng(seed).standard_normal(images.shape)
    perturbed = images + strength * noise
  elif perturbation == 'translation':
    shift = int(strength)
    width = images.shape[2]
    padded = np.pad(images, ((0, 0), (0, 0), (shift, 0), (0, 0)), mode='edge')
    perturbed = padded[:, :, :width]
  else:
    raise ValueError(
      f'Unknown perturbation {perturbation!r}. Use one of: '
      f'{", ".join(PERTURBATIONS)}.'
    )
  return np.clip(perturbed, 0.0, 1.0).astype(np.float32)


def to_logits(reconstructions):
  """Returns logits whose sigmoid is `reconstructions`, kept off 0 and 1."""
  clipped = jnp.clip(reconstructions, _LOGIT_CLIP, 1.0 - _LOGIT_CLIP)
  return jnp.log(clipped) - jnp.log1p(-clipped)


def _validate_probe_config(probe_config):
  num_images = probe_config.num_images
  if not isinstance(num_images, int) or num_images < 1:
    raise ValueError(
      f'config.probe.num_images is {num_images!r}, which is invalid. Set it '
      'to a positive integer, such as 64.'
    )

  for perturbation in PERTURBATIONS:
    field = f'config.probe.{perturbation}'
    grid = probe_config.get(perturbation)
    if grid is None:
      raise ValueError(
        f'{field} is missing. Set it to a tuple of strengths, such as '
        f'configs/probe.py does.'
      )
    if not grid or not all(
      isinstance(value, (int, float)) and value >= 0 for value in grid
    ):
      raise ValueError(
        f'{field} is {grid!r}, which is invalid. Set it to a non-empty tuple '
        'of numbers >= 0.'
      )


def _load_images(builder, config):
  batch = next(
    iter(
      input_pipeline.eval_batches(
        builder,
        split=config.data.eval_split,
        batch_size=config.probe.num_images,
      )
    )
  )
  images = batch['image'][batch['mask']]
  if len(images) < config.probe.num_images:
    logging.warning(
      'Split %s of %s has only %d images; the probe uses all of them.',
      config.data.eval_split,
      config.data.name,
      len(images),
    )
  return images


def _load_params(config, model, image_shape, workdir):
  """Returns the newest checkpoint's parameters, or freshly seeded ones."""
  state = train_state.create_train_state(
    config, model, image_shape, jax.random.key(config.seed)
  )
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    logging.info(
      'No checkpoints in %s; the probe uses the untrained autoencoder '
      'initialised from seed %d.',
      workdir,
      config.seed,
    )
    return state.params, 'untrained'

  manager = checkpointing.create_manager(workdir, keep=config.keep_checkpoints)
  try:
    state = checkpointing.restore_latest(manager, state)
  finally:
    manager.close()
  step = int(state.step)
  if step == 0:
    logging.info(
      'No checkpoint in %s; using the untrained autoencoder.', workdir
    )
    return state.params, 'untrained'
  logging.info('The probe uses the autoencoder checkpointed at step %d.', step)
  return state.params, f'trained {step} steps'


def _write_csv(path, results):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('perturbation', 'strength', 'term', 'value'))
    for perturbation, result in results.items():
      for term, values in result['values'].items():
        for strength, value in zip(result['strengths'], values, strict=True):
          writer.writerow((perturbation, strength, term, repr(value)))


def _term_maxima(results):
  """Returns each term's largest value over all perturbations and strengths."""
  maxima = {}
  for result in results.values():
    for term, values in result['values'].items():
      maxima[term] = max(maxima.get(term, 0.0), max(values))
  return maxima


def _plot(path, perturbation, result, maxima, title):
  # A Figure on the Agg canvas, without pyplot, so that no GUI backend or
  # global figure state is involved.
  figure = Figure(figsize=(8, 4.8), layout='constrained')
  backend_agg.FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  strengths = result['strengths']
  for index, (term, values) in enumerate(result['values'].items()):
    scale = maxima[term] if maxima[term] > 0 else 1.0
    axes.plot(
      strengths,
      np.asarray(values) / scale,
      # Normalised curves can coincide, such as pixel and fourier under a
      # brightness shift, so markers and line styles differ as well as colours.
      marker=_MARKERS[index % len(_MARKERS)],
      linestyle=_LINE_STYLES[index % len(_LINE_STYLES)],
      label=f'{term} (max {maxima[term]:.3g})',
    )
  if perturbation == 'contrast':
    # Factors below 1 remove contrast, so the perturbation grows leftwards.
    # Inverting the axis keeps the unchanged image on the left in every plot.
    axes.invert_xaxis()
  axes.set_xlabel(_AXIS_LABELS[perturbation])
  axes.set_ylabel('value / max of the term over all perturbations')
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize='small')
  figure.savefig(path, dpi=100)


def run_probe(config, workdir):
  """Probes every configured loss term with perturbed test images.

  Args:
    config: a run config with a `probe` field (see `configs/probe.py`).
    workdir: directory for the outputs. If it contains `checkpoints/` of a
      training run, the newest checkpoint supplies the autoencoder whose
      encoder the feature terms read.

  Returns:
    A dict: perturbation -> {'strengths': tuple of strengths, 'values':
    {term: list of the mean unweighted value over the images, one per
    strength}}.

  Raises:
    ValueError: the config is invalid, or the checkpoint does not fit the
      model of the config.
  """
  validation.validate_config(config)
  _validate_probe_config(config.probe)
  builder = input_pipeline.get_builder(
    config.data.name, config.data.data_dir, download=config.data.download
  )
  image_shape = input_pipeline.image_shape(builder)
  validation.validate_for_data(
    config, image_shape=image_shape, device_count=1, process_count=1
  )
  os.makedirs(workdir, exist_ok=True)

  images = _load_images(builder, config)
  model = autoencoder.create_model(config.model, image_shape)
  params, encoder_name = _load_params(config, model, image_shape, workdir)
  loss_fn = composite.make_loss(
    config.loss,
    encode_features=autoencoder.feature_extractor(model),
    all_terms=True,
  )

  results = {}
  for perturbation in PERTURBATIONS:
    strengths = tuple(config.probe[perturbation])
    values = {}
    for strength in strengths:
      perturbed = perturb(
        images, perturbation, strength, seed=config.probe.noise_seed
      )
      _, terms = loss_fn(params, jnp.asarray(images), to_logits(perturbed))
      for term, value in jax.device_get(terms).items():
        values.setdefault(term, []).append(float(np.mean(value)))
    results[perturbation] = {'strengths': strengths, 'values': values}
    logging.info(
      '%s %s: %s',
      perturbation,
      strengths[-1],
      ', '.join(f'{term} {vals[-1]:.3g}' for term, vals in values.items()),
    )

  csv_path = os.path.join(workdir, 'probe.csv')
  _write_csv(csv_path, results)
  maxima = _term_maxima(results)
  for perturbation, result in results.items():
    title = (
      f'{config.data.name}: loss terms vs {perturbation}\n'
      f'{len(images)} test images, {encoder_name} encoder'
    )
    _plot(
      os.path.join(workdir, f'probe_{perturbation}.png'),
      perturbation,
      result,
      maxima,
      title,
    )
  logging.info(
    'Probe results are in %s and the plots in %s.',
    os.path.abspath(csv_path),
    os.path.abspath(os.path.join(workdir, 'probe_*.png')),
  )
  return results
