"""Value-and-gradient time of each loss term against its peers.

Each term is computed on a target batch and a fixed stand-in reconstruction,
and the gradient is taken with respect to the reconstruction, as in
training. Ours and every peer compute the same quantity with the same
options, which the table confirms with the largest absolute difference of
the per-example values:

  ssim     SSIM, 11-pixel Gaussian window, sigma 1.5, 'valid' filtering:
           losses.structural.ssim, dm_pix.ssim, pytorch_msssim.ssim,
           piq.ssim and kornia.metrics.ssim(padding='valid').
  ms_ssim  five-scale MS-SSIM with a 7-pixel window, where the images fit
           five scales: losses.structural.ms_ssim, pytorch_msssim.ms_ssim
           and piq.multi_scale_ssim. kornia has no plain MS-SSIM.
  gram     MSE between the unnormalised Gram matrices of the autoencoder's
           two encoder stages, averaged over the stages, with the encoder's
           weights fixed: transforms.gram on models.feature_nets's encoder
           features, and piq.StyleLoss on the same encoder in PyTorch.
  edge     MSE between Sobel edge maps (d/dy and d/dx of every channel):
           transforms.edge_map and kornia.filters.spatial_gradient.
"""

from collections.abc import Callable
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks import torch_peers
from losses import distances
from losses import structural
from losses import transforms
from models import autoencoder
from models import feature_nets

MS_SSIM_WINDOW = 7
# Smallest image side that pytorch-msssim 1.0.0 and piq 0.8.0 accept for
# five scales: (window - 1) * 2**4 + 1 pixels, 97 for a 7-pixel window.
PEER_MS_SSIM_MIN_SIDE = (MS_SSIM_WINDOW - 1) * 2**4 + 1


@dataclasses.dataclass
class Implementation:
  """One implementation of a term on fixed inputs.

  Attributes:
    name: the library and function.
    values: callable returning the per-example values as a numpy array.
    step: callable computing the mean value and its gradient.
  """

  name: str
  values: Callable[[], np.ndarray]
  step: Callable[[], object]


def _jax_implementation(name, per_example, reconstruction, target):
  """Wraps per_example(reconstruction, target) -> [B] for timing."""
  reconstruction = jnp.asarray(reconstruction)
  target = jnp.asarray(target)
  values = jax.jit(per_example)

  def mean_loss(r, t):
    return jnp.mean(per_example(r, t))

  step = jax.jit(jax.value_and_grad(mean_loss))
  return Implementation(
    name,
    lambda: np.asarray(values(reconstruction, target)),
    lambda: jax.block_until_ready(step(reconstruction, target)),
  )


def _nchw(torch, images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _torch_implementation(torch, name, per_example, reconstruction, target):
  """Wraps per_example(reconstruction, target) -> [B] on NCHW tensors."""
  reconstruction = _nchw(torch, reconstruction)
  target = _nchw(torch, target)

  def values():
    with torch.no_grad():
      return per_example(reconstruction, target).double().numpy()

  def step():
    variable = reconstruction.clone().requires_grad_(True)
    per_example(variable, target).mean().backward()
    return variable.grad

  return Implementation(name, values, step)


def _ssim_implementations(peers, reconstruction, target):
  implementations = [
    _jax_implementation(
      'aeloss structural.ssim', structural.ssim, reconstruction, target
    )
  ]
  notes = []
  try:
    import dm_pix  # noqa: PLC0415  (optional: the test extra installs it)
  except ImportError:
    notes.append('dm-pix is not installed, so its SSIM row is skipped.')
  else:
    implementations.append(
      _jax_implementation('dm-pix ssim', dm_pix.ssim, reconstruction, target)
    )

  torch = peers['torch']
  if peers['pytorch-msssim'] is not None:
    pytorch_msssim = peers['pytorch-msssim']
    implementations.append(
      _torch_implementation(
        torch,
        'pytorch-msssim ssim',
        lambda r, t: pytorch_msssim.ssim(
          r, t, data_range=1.0, size_average=False
        ),
        reconstruction,
        target,
      )
    )
  if peers['piq'] is not None:
    piq = peers['piq']
    implementations.append(
      _torch_implementation(
        torch,
        'piq ssim',
        lambda r, t: piq.ssim(r, t, data_range=1.0, reduction='none'),
        reconstruction,
        target,
      )
    )
  if peers['kornia'] is not None:
    kornia = peers['kornia']
    implementations.append(
      _torch_implementation(
        torch,
        'kornia metrics.ssim',
        lambda r, t: kornia.metrics.ssim(r, t, 11, padding='valid').mean(
          dim=(1, 2, 3)
        ),
        reconstruction,
        target,
      )
    )
  return implementations, notes


def _ms_ssim_implementations(peers, reconstruction, target, label):
  def ours(r, t):
    return structural.ms_ssim(r, t, window_size=MS_SSIM_WINDOW)

  implementations = [
    _jax_implementation(
      'aeloss structural.ms_ssim', ours, reconstruction, target
    )
  ]
  notes = []
  side = min(target.shape[1:3])
  scales = structural.ms_ssim_scales(
    target.shape[1], target.shape[2], window_size=MS_SSIM_WINDOW
  )
  # Below five scales ours renormalises the weights of the scales that fit,
  # which the peers do not, and they reject such images anyway.
  if scales < len(structural.MS_SSIM_WEIGHTS) or side < PEER_MS_SSIM_MIN_SIDE:
    notes.append(
      f'MS-SSIM on {label}: the {side}-pixel images fit {scales} scales of '
      f'a {MS_SSIM_WINDOW}-pixel window, and pytorch-msssim and piq accept '
      f'only five scales on images of at least {PEER_MS_SSIM_MIN_SIDE} '
      'pixels, so only our row is measured.'
    )
    return implementations, notes

  torch = peers['torch']
  if peers['pytorch-msssim'] is not None:
    pytorch_msssim = peers['pytorch-msssim']
    implementations.append(
      _torch_implementation(
        torch,
        'pytorch-msssim ms_ssim',
        lambda r, t: pytorch_msssim.ms_ssim(
          r, t, data_range=1.0, size_average=False, win_size=MS_SSIM_WINDOW
        ),
        reconstruction,
        target,
      )
    )
  if peers['piq'] is not None:
    piq = peers['piq']
    implementations.append(
      _torch_implementation(
        torch,
        'piq multi_scale_ssim',
        lambda r, t: piq.multi_scale_ssim(
          r, t, kernel_size=MS_SSIM_WINDOW, data_range=1.0, reduction='none'
        ),
        reconstruction,
        target,
      )
    )
  return implementations, notes


def _gram_implementations(peers, reconstruction, target, model_config):
  image_shape = target.shape[1:]
  model = autoencoder.create_model(model_config, image_shape)
  params = autoencoder.init_params(model, jax.random.key(0), image_shape)
  encode_features = feature_nets.encoder_features(model)

  def ours(r, t):
    frozen = jax.lax.stop_gradient(params)
    target_features = jax.lax.stop_gradient(encode_features(frozen, t))
    features = encode_features(frozen, r)
    per_layer = [
      distances.mse(
        transforms.gram(f, normalization='none'),
        transforms.gram(g, normalization='none'),
      )
      for f, g in zip(features, target_features, strict=True)
    ]
    return jnp.mean(jnp.stack(per_layer), axis=0)

  implementations = [
    _jax_implementation('aeloss transforms.gram', ours, reconstruction, target)
  ]
  if peers['piq'] is None:
    return implementations

  torch = peers['torch']
  network = torch_peers.encoder_network(torch, params['encoder'], image_shape)
  stages = len(model_config.widths)
  style = peers['piq'].StyleLoss(
    feature_extractor=network,
    layers=tuple(f'relu{i}' for i in range(stages)),
    weights=[1.0 / stages] * stages,
    mean=[0.0] * image_shape[-1],
    std=[1.0] * image_shape[-1],
    reduction='none',
  )
  implementations.append(
    _torch_implementation(torch, 'piq StyleLoss', style, reconstruction, target)
  )
  return implementations


def _edge_implementations(peers, reconstruction, target):
  def ours(r, t):
    return distances.mse(transforms.edge_map(r), transforms.edge_map(t))

  implementations = [
    _jax_implementation(
      'aeloss transforms.edge_map', ours, reconstruction, target
    )
  ]
  if peers['kornia'] is None:
    return implementations

  spatial_gradient = peers['kornia'].filters.spatial_gradient

  def kornia_edges(r, t):
    difference = spatial_gradient(r, 'sobel', 1, False) - spatial_gradient(
      t, 'sobel', 1, False
    )
    return difference.square().mean(dim=(1, 2, 3, 4))

  implementations.append(
    _torch_implementation(
      peers['torch'],
      'kornia filters.spatial_gradient',
      kornia_edges,
      reconstruction,
      target,
    )
  )
  return implementations


def run(batches, peers, *, model_config, warmup, repeats):
  """Times every term on every image size.

  Args:
    batches: label -> (reconstruction, target), NHWC float32 in [0, 1].
    peers: the modules from `torch_peers.import_peers`.
    model_config: the `config.model` of the autoencoder whose encoder the
      gram term reads.
    warmup: untimed calls after the first one.
    repeats: timed calls.

  Returns:
    (table rows, notes). A row is (images, term, implementation, value and
    gradient ms, time relative to ours, max abs difference of the values
    from ours, max abs value of ours).
  """
  rows = []
  notes = []
  for label, (reconstruction, target) in batches.items():
    ssim, ssim_notes = _ssim_implementations(peers, reconstruction, target)
    ms_ssim, ms_ssim_notes = _ms_ssim_implementations(
      peers, reconstruction, target, label
    )
    notes.extend(ssim_notes + ms_ssim_notes)
    terms = {
      'ssim': ssim,
      'ms_ssim': ms_ssim,
      'gram': _gram_implementations(
        peers, reconstruction, target, model_config
      ),
      'edge': _edge_implementations(peers, reconstruction, target),
    }
    for term, implementations in terms.items():
      times = timing.median_times(
        {item.name: item.step for item in implementations},
        warmup=warmup,
        repeats=repeats,
      )
      reference = implementations[0]
      reference_values = reference.values()
      scale = np.max(np.abs(reference_values))
      for item in implementations:
        difference = np.max(np.abs(item.values() - reference_values))
        rows.append(
          (
            label,
            term,
            item.name,
            timing.milliseconds(times[item.name]),
            f'{times[item.name] / times[reference.name]:.2f}',
            f'{difference:.1e}',
            f'{scale:.3g}',
          )
        )
  return rows, notes
