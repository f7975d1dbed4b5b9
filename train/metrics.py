"""The fixed evaluation metric suite that scores every run the same way.

Runs trained on different losses compare fairly only if they are scored by
metrics that do not depend on their training loss. `make_suite` returns one
function of (images, reconstructions), NHWC float arrays in [0, 1] of shape
[B, H, W, C], that returns a dict of per-example values [B]:

  psnr            peak signal-to-noise ratio in dB (data range 1)
  mse, mae        mean squared and absolute pixel error
  ssim            SSIM, 11x11 Gaussian window with sigma 1.5 (Wang et al.,
                  2004); only for images of at least 11x11 pixels
  ms_ssim         MS-SSIM over the scales the 11-pixel window fits, weights
                  renormalised; only when at least two scales fit
  edge_l1         mean absolute difference of Sobel gradient components
  gram_distance   MSE between Gram matrices ('hw' normalisation) of the three
                  feature maps of a conv net with fixed random weights from
                  seed 0, averaged over the maps; the same net for every run
  mean_shift_mse  MSE after subtracting each image's per-channel mean, so a
                  uniform brightness shift costs nothing

`HIGHER_IS_BETTER` says which direction is better for each.
"""

import functools

from losses import distances
from losses import structural
from losses import transforms
from models import feature_nets

WINDOW_SIZE = 11
GRAM_SEED = 0
GRAM_WIDTHS = (16, 32, 64)

HIGHER_IS_BETTER = {
  'psnr': True,
  'mse': False,
  'mae': False,
  'ssim': True,
  'ms_ssim': True,
  'edge_l1': False,
  'gram_distance': False,
  'mean_shift_mse': False,
}


def suite_names(image_shape):
  """Returns the names of the suite's metrics for images of `image_shape`.

  Args:
    image_shape: (H, W, C) of the images.

  Returns:
    A tuple of metric names in report order. SSIM is left out for images
    smaller than its window, and MS-SSIM when fewer than two scales fit.
  """
  height, width, _ = image_shape
  names = ['psnr']
  if min(height, width) >= WINDOW_SIZE:
    names.append('ssim')
  if structural.ms_ssim_scales(height, width, window_size=WINDOW_SIZE) >= 2:
    names.append('ms_ssim')
  names += ['mse', 'mae', 'edge_l1', 'gram_distance', 'mean_shift_mse']
  return tuple(names)


def _gram_distance(encode_features, images, reconstructions):
  target = encode_features(None, images)
  reconstructed = encode_features(None, reconstructions)
  per_map = [
    distances.mse(
      transforms.gram(a, normalization='hw'),
      transforms.gram(b, normalization='hw'),
    )
    for a, b in zip(target, reconstructed, strict=True)
  ]
  return sum(per_map) / len(per_map)


def make_suite(image_shape):
  """Builds the metric suite for images of `image_shape`.

  Args:
    image_shape: (H, W, C) of the images.

  Returns:
    `suite(images, reconstructions) -> {name: [B] float32}`, a pure,
    jit-compatible function with the metrics of `suite_names(image_shape)`.
  """
  names = suite_names(image_shape)
  encode_features = feature_nets.random_features(GRAM_SEED, GRAM_WIDTHS)
  ms_ssim = functools.partial(structural.ms_ssim, window_size=WINDOW_SIZE)

  def suite(images, reconstructions):
    values = {
      'psnr': distances.psnr(reconstructions, images),
      'mse': distances.mse(reconstructions, images),
      'mae': distances.mae(reconstructions, images),
      'edge_l1': distances.mae(
        transforms.sobel(reconstructions), transforms.sobel(images)
      ),
      'gram_distance': _gram_distance(encode_features, images, reconstructions),
      'mean_shift_mse': distances.mse(
        transforms.mean_shift(reconstructions),
        transforms.mean_shift(images),
      ),
    }
    if 'ssim' in names:
      values['ssim'] = structural.ssim(
        reconstructions, images, window_size=WINDOW_SIZE
      )
    if 'ms_ssim' in names:
      values['ms_ssim'] = ms_ssim(reconstructions, images)
    return {name: values[name] for name in names}

  return suite
