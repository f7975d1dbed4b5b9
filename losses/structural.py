"""Structural similarity: SSIM and multi-scale SSIM of NHWC images.

SSIM follows Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image
Quality Assessment: From Error Visibility to Structural Similarity", IEEE
Transactions on Image Processing 13(4), 600-612, 2004. MS-SSIM follows Z.
Wang, E. P. Simoncelli and A. C. Bovik, "Multiscale Structural Similarity for
Image Quality Assessment", Asilomar Conference on Signals, Systems and
Computers, 2003.

Every function takes arrays of shape [B, H, W, C], usually images in [0, 1],
casts them to float32 whatever their dtype and returns float32 values. Local
statistics come from a normalised window, applied separably (along W, then
along H) with 'valid' padding, each pass a matrix product with a banded
matrix. So a window of size K turns an H x W image into an
(H - K + 1) x (W - K + 1) map. Shapes and window sizes are checked when a
function is traced, and a mismatch raises ValueError. These are
similarities, 1 for identical images. A loss uses 1 - SSIM.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

WINDOWS = ('gaussian', 'uniform')
SSIM_OUTPUTS = ('mean', 'channels', 'map')

# Weights of the five scales, finest first, from Wang, Simoncelli and Bovik
# (2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(name: str, a: jax.Array, b: jax.Array) -> None:
  if a.ndim != 4:
    raise ValueError(
      f'{name}: inputs must be NHWC with shape [B, H, W, C], got shape '
      f'{a.shape}.'
    )

  if a.shape != b.shape:
    raise ValueError(
      f'{name}: inputs must have the same shape, got {a.shape} and {b.shape}.'
    )


def _check_options(
  name: str,
  window: str,
  window_size: int,
  sigma: float,
  k1: float,
  k2: float,
  data_range: float,
) -> None:
  if window not in WINDOWS:
    raise ValueError(
      f'{name}: window must be one of {WINDOWS}, got {window!r}.'
    )

  is_integer = isinstance(window_size, int) and not isinstance(
    window_size, bool
  )
  if not is_integer or window_size < 1 or window_size % 2 == 0:
    raise ValueError(
      f'{name}: window_size must be an odd positive integer, got '
      f'{window_size!r}.'
    )

  for option, value in (
    ('sigma', sigma),
    ('k1', k1),
    ('k2', k2),
    ('data_range', data_range),
  ):
    if not value > 0:
      raise ValueError(f'{name}: {option} must be positive, got {value!r}.')


def _check_window_fits(
  name: str, height: int, width: int, window_size: int
) -> None:
  if window_size > min(height, width):
    raise ValueError(
      f'{name}: window_size {window_size} is larger than the {height}x{width} '
      f'images. Set window_size to an odd number no larger than '
      f'{min(height, width)}.'
    )


def _window_1d(window: str, window_size: int, sigma: float) -> np.ndarray:
  """Return the normalised 1-D window, float32 of shape [window_size].

  The Gaussian window is exp(-t^2 / (2 sigma^2)) at integer offsets t from the
  centre, divided by its sum. The uniform window is 1 / window_size
  everywhere, and `sigma` is then unused.
  """
  if window == 'uniform':
    return np.full(window_size, 1.0 / window_size, dtype=np.float32)

  offsets = np.arange(window_size, dtype=np.float64) - (window_size - 1) / 2
  weights = np.exp(-np.square(offsets) / (2.0 * sigma**2))
  return (weights / weights.sum()).astype(np.float32)


def _band_matrix(size: int, weights: np.ndarray) -> np.ndarray:
  """Return the [size, size - K + 1] matrix of a 'valid' 1-D correlation.

  Column o holds the window in rows o to o + K - 1, so x @ band is the
  correlation of each row of x with the window.
  """
  window_size = weights.shape[0]
  band = np.zeros((size, size - window_size + 1), np.float32)
  for offset in range(size - window_size + 1):
    band[offset : offset + window_size, offset] = weights
  return band


def _filter(stats: jax.Array, weights: np.ndarray) -> jax.Array:
  """Apply the separable window with 'valid' padding to [H, S, W] planes.

  Each pass is one matrix product with a banded matrix: x @ band along W,
  then band.T @ x along H. In this layout neither product needs a
  transpose. XLA's CPU backend runs these products many times faster than
  depthwise convolutions, their gradients above all, although they also
  multiply the zeros outside the band: about min(H, W) / K times the
  multiply-adds of a convolution.

  Args:
    stats: [H, S, W] float32, S planes stacked along the middle axis.
    weights: the normalised 1-D window of size K.

  Returns:
    [H - K + 1, S, W - K + 1] float32.
  """
  height, planes, width = stats.shape
  band_w = jnp.asarray(_band_matrix(width, weights))
  band_h = jnp.asarray(_band_matrix(height, weights).T)
  highest = jax.lax.Precision.HIGHEST

  filtered = jnp.dot(stats.reshape(-1, width), band_w, precision=highest)
  filtered = jnp.dot(band_h, filtered.reshape(height, -1), precision=highest)
  return filtered.reshape(band_h.shape[0], planes, band_w.shape[1])


def _ssim_maps(
  a: jax.Array,
  b: jax.Array,
  weights: np.ndarray,
  k1: float,
  k2: float,
  data_range: float,
) -> tuple[jax.Array, jax.Array]:
  """Return the SSIM map and the contrast-structure map of float32 a and b.

  With local means mu, variances var and covariance cov, all weighted by the
  window and with the population (not sample) normalisation:
    cs = (2 cov_ab + C2) / (var_a + var_b + C2)
    ssim = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) * cs
  where C1 = (k1 * data_range)^2 and C2 = (k2 * data_range)^2.

  The maps are laid out [H', B, C, W'], with H' = H - K + 1 and
  W' = W - K + 1, the layout that `_filter` works in. Callers average
  them or transpose them to NHWC.
  """
  # All five statistics are filtered together, stacked along the planes.
  a = jnp.transpose(a, (1, 0, 3, 2))
  b = jnp.transpose(b, (1, 0, 3, 2))
  stacked = jnp.stack([a, b, a * a, b * b, a * b], axis=1)
  height, _, batch, channels, width = stacked.shape
  filtered = _filter(stacked.reshape(height, -1, width), weights)
  filtered = filtered.reshape(filtered.shape[0], 5, batch, channels, -1)
  # `split`, unlike indexing, transposes to one concatenation, which XLA's
  # CPU backend runs much faster in the gradient than five padded copies.
  mean_a, mean_b, mean_aa, mean_bb, mean_ab = (
    statistic[:, 0] for statistic in jnp.split(filtered, 5, axis=1)
  )

  variance_a = mean_aa - jnp.square(mean_a)
  variance_b = mean_bb - jnp.square(mean_b)
  covariance = mean_ab - mean_a * mean_b

  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  luminance = (2.0 * mean_a * mean_b + c1) / (
    jnp.square(mean_a) + jnp.square(mean_b) + c1
  )
  contrast_structure = (2.0 * covariance + c2) / (variance_a + variance_b + c2)
  return luminance * contrast_structure, contrast_structure


@functools.partial(
  jax.jit,
  static_argnames=(
    'window',
    'window_size',
    'sigma',
    'k1',
    'k2',
    'data_range',
    'output',
  ),
)
def ssim(
  a: jax.Array,
  b: jax.Array,
  *,
  window: str = 'gaussian',
  window_size: int = 11,
  sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
  data_range: float = 1.0,
  output: str = 'mean',
) -> jax.Array:
  """Compute the structural similarity index (SSIM) of two image batches.

  SSIM = l * cs per position and channel, from the local statistics under the
  window, with luminance l = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1),
  contrast-structure cs = (2 cov_ab + C2) / (var_a + var_b + C2),
  C1 = (k1 * data_range)^2 and C2 = (k2 * data_range)^2 (Wang et al., IEEE
  TIP 2004). Variances use the population normalisation. With
  the defaults, 'mean' equals
  skimage.metrics.structural_similarity(a[i], b[i], channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1.0) and dm_pix.ssim(a, b), up to float32 rounding.

  Args:
    a: array of shape [B, H, W, C].
    b: array of the same shape as `a`.
    window: 'gaussian' or 'uniform' weights over the window.
    window_size: odd side of the square window, at most min(H, W).
    sigma: standard deviation of the Gaussian window, in pixels.
    k1: positive constant of the luminance term.
    k2: positive constant of the contrast-structure term.
    data_range: positive difference between the largest and smallest possible
      value, 1.0 for images in [0, 1].
    output: 'mean' averages the SSIM map over positions and channels,
      'channels' over positions only, and 'map' returns the map.

  Returns:
    float32 array of shape [B] for 'mean', [B, C] for 'channels', or
    [B, H - window_size + 1, W - window_size + 1, C] for 'map'. Values lie in
    [-1, 1] and are 1 where a == b.

  Raises:
    ValueError: when traced, if the shapes differ or are not rank 4, an option
      is invalid, or window_size exceeds the image height or width.
  """
  _check_pair('ssim', a, b)
  _check_options('ssim', window, window_size, sigma, k1, k2, data_range)
  if output not in SSIM_OUTPUTS:
    raise ValueError(
      f'ssim: output must be one of {SSIM_OUTPUTS}, got {output!r}.'
    )
  _check_window_fits('ssim', a.shape[1], a.shape[2], window_size)

  weights = _window_1d(window, window_size, sigma)
  ssim_map, _ = _ssim_maps(
    a.astype(jnp.float32), b.astype(jnp.float32), weights, k1, k2, data_range
  )

  # ssim_map is [H', B, C, W'].
  if output == 'map':
    return jnp.transpose(ssim_map, (1, 0, 3, 2))
  if output == 'channels':
    return jnp.mean(ssim_map, axis=(0, 3))
  return jnp.mean(ssim_map, axis=(0, 2, 3))


def ms_ssim_scales(height: int, width: int, *, window_size: int = 11) -> int:
  """Return how many MS-SSIM scales fit images of height x width.

  Scale s (counting from 0) compares images of floor(height / 2^s) x
  floor(width / 2^s) pixels, and the window must fit inside them. The count
  is the largest number of leading scales that fit, at most 5, and 0 when
  even the full-size image is smaller than the window.

  Args:
    height: image height in pixels.
    width: image width in pixels.
    window_size: side of the square window.

  Returns:
    The number of scales, from 0 to 5.
  """
  scales = 0
  while scales < len(MS_SSIM_WEIGHTS) and (
    min(height, width) // 2**scales >= window_size
  ):
    scales += 1
  return scales


def _positive_power(values: jax.Array, exponent: float) -> jax.Array:
  """Return relu(values)^exponent, with a gradient of 0 where values <= 0.

  For an exponent below 1 the derivative of t^exponent is infinite at t = 0,
  so a plain power gives NaN gradients once relu has clipped a value. The
  inner where feeds the power 1 there, and the outer one discards that value.
  """
  is_positive = values > 0
  safe_values = jnp.where(is_positive, values, 1.0)
  return jnp.where(is_positive, safe_values**exponent, 0.0)


@functools.partial(
  jax.jit,
  static_argnames=(
    'window',
    'window_size',
    'sigma',
    'k1',
    'k2',
    'data_range',
  ),
)
def ms_ssim(
  a: jax.Array,
  b: jax.Array,
  *,
  window: str = 'gaussian',
  window_size: int = 11,
  sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
  data_range: float = 1.0,
) -> jax.Array:
  """Compute the multi-scale structural similarity (MS-SSIM) per example.

  MS-SSIM = prod over scales s < M - 1 of relu(cs_s)^w_s, times
  relu(ssim_{M-1})^w_{M-1}, per channel, then averaged over channels (Wang,
  Simoncelli and Bovik, Asilomar 2003). cs_s is the mean
  contrast-structure map at scale s, ssim_{M-1} the mean SSIM map at the
  coarsest scale, and the weights w are MS_SSIM_WEIGHTS. Each scale halves
  the previous one by 2x2 average pooling that drops an odd last row or
  column. relu clips anti-correlated scales to 0, as
  tf.image.ssim_multiscale does. The gradient there is 0 rather than NaN.

  Differences from the five-scale metric: when the window does not fit five
  scales (`ms_ssim_scales` < 5), only the M leading scales that fit are used,
  and their weights are divided by their sum so that they add up to 1. The
  value is then not comparable with five-scale MS-SSIM from other code. For
  example, 28x28 images with window_size 11 use two scales (28 and 14
  pixels), and window_size 7 gives three.

  Args:
    a: array of shape [B, H, W, C].
    b: array of the same shape as `a`.
    window: 'gaussian' or 'uniform' weights over the window.
    window_size: odd side of the square window, at most min(H, W).
    sigma: standard deviation of the Gaussian window, in pixels.
    k1: positive constant of the luminance term.
    k2: positive constant of the contrast-structure term.
    data_range: positive difference between the largest and smallest possible
      value, 1.0 for images in [0, 1].

  Returns:
    float32 array of shape [B] with values in [0, 1], 1 where a == b.

  Raises:
    ValueError: when traced, if the shapes differ or are not rank 4, an option
      is invalid, or window_size exceeds the image height or width.
  """
  _check_pair('ms_ssim', a, b)
  _check_options('ms_ssim', window, window_size, sigma, k1, k2, data_range)
  height, width = a.shape[1], a.shape[2]
  _check_window_fits('ms_ssim', height, width, window_size)

  scales = ms_ssim_scales(height, width, window_size=window_size)
  scale_weights = np.asarray(MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
  scale_weights = scale_weights / scale_weights.sum()

  weights = _window_1d(window, window_size, sigma)
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)

  result = jnp.ones((a.shape[0], a.shape[3]), dtype=jnp.float32)
  for scale in range(scales):
    if scale > 0:
      a = _average_pool(a)
      b = _average_pool(b)

    ssim_map, contrast_structure = _ssim_maps(a, b, weights, k1, k2, data_range)
    # The maps are [H', B, C, W'].
    if scale < scales - 1:
      per_channel = jnp.mean(contrast_structure, axis=(0, 3))
    else:
      per_channel = jnp.mean(ssim_map, axis=(0, 3))
    result = result * _positive_power(per_channel, float(scale_weights[scale]))

  return jnp.mean(result, axis=1)


def _average_pool(images: jax.Array) -> jax.Array:
  """Average 2x2 blocks with stride 2, dropping an odd last row or column."""
  summed = jax.lax.reduce_window(
    images, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID'
  )
  return summed / 4.0
