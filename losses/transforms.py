"""Image transforms applied before a distance: edges, normalisation, Gram.

Every function takes NHWC arrays of shape [B, H, W, C], usually images in
[0, 1] or encoder feature maps, casts them to float32 whatever their dtype and
returns float32 arrays. The rank is checked when the function is traced, and
an input that is not rank 4 raises ValueError.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

SOBEL_OUTPUTS = ('components', 'magnitude')
EDGE_OUTPUTS = SOBEL_OUTPUTS
EDGE_KERNELS = ('sobel', 'scharr', 'prewitt', 'laplacian', 'central')
GRAM_NORMALIZATIONS = ('none', 'hw', 'chw')
MEAN_SHIFT_MEANS = ('channel', 'image')

# Border modes of `edge_map`. 'reflect' repeats the edge pixel
# (d c b a | a b c d), which numpy.pad calls 'symmetric' and scipy.ndimage
# calls 'reflect'. 'replicate' is numpy's 'edge' and scipy's 'nearest', and
# 'zero' is scipy's 'constant' with cval 0. The border is 1 pixel wide, where
# 'reflect' and 'replicate' give the same values.
EDGE_PADDINGS = ('reflect', 'replicate', 'zero')


def _gradient_pair(smoothing: list[float]) -> np.ndarray:
  """Return [d/dy, d/dx] 3x3 kernels: [-1, 0, 1] times `smoothing` across."""
  difference = np.array([-1.0, 0.0, 1.0])
  across = np.array(smoothing)
  return np.stack([np.outer(difference, across), np.outer(across, difference)])


# Kernels in correlation order, indexed [component, dy, dx] with offsets -1,
# 0, 1. The gradient kernels are a difference [-1, 0, 1] along their own axis
# times a smoothing across it: [1, 2, 1] for Sobel and [1, 1, 1] for Prewitt,
# as in scipy.ndimage.sobel and scipy.ndimage.prewitt, and [3, 10, 3] for
# Scharr. 'central' is the unsmoothed central difference [-1, 0, 1] / 2, and
# 'laplacian' the 5-point Laplacian of scipy.ndimage.laplace, with one
# component.
_EDGE_KERNELS = {
  'sobel': _gradient_pair([1.0, 2.0, 1.0]),
  'scharr': _gradient_pair([3.0, 10.0, 3.0]),
  'prewitt': _gradient_pair([1.0, 1.0, 1.0]),
  'central': _gradient_pair([0.0, 0.5, 0.0]),
  'laplacian': np.array([[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]]),
}


def _powers_of_two(weight: float) -> list[float]:
  """Return signed powers of two that sum exactly to `weight`, largest first.

  Empty for 0. The edge kernels' weights are integers and halves, which
  need at most two terms each.
  """
  terms = []
  remainder = abs(weight)
  while remainder > 0:
    power = 2.0 ** math.floor(math.log2(remainder))
    terms.append(math.copysign(power, weight))
    remainder -= power
  return terms


def _replicate_columns(rows: jax.Array) -> jax.Array:
  """Pad [B, 1, W, C] by one column on each side, repeating the edge pixel."""
  return jnp.concatenate([rows[:, :, :1], rows, rows[:, :, -1:]], axis=2)


def _correlate(
  padded: jax.Array, weights: np.ndarray, height: int, width: int
) -> jax.Array | None:
  """Return the 'valid' correlation of `padded` with a small fixed kernel.

  The result, [B, height, width, C], is the sum over nonzero weights of
  weight * padded[:, dy : dy + height, dx : dx + width]. XLA fuses these
  sums and their gradient into a few elementwise loops, which run much
  faster on CPU than a depthwise convolution and its gradient. Each weight
  enters as a sum of powers of two, so every product is exact, and a fused
  multiply-add rounds the same as a multiply and an add: the result is then
  the same with and without jit. None if every weight is 0.
  """
  total = None
  for (dy, dx), weight in np.ndenumerate(weights):
    shifted = padded[:, dy : dy + height, dx : dx + width, :]
    for power in _powers_of_two(float(weight)):
      term = power * shifted
      total = term if total is None else total + term
  return total


def _check_nhwc(name: str, images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(
      f'{name}: input must be NHWC with shape [B, H, W, C], got shape '
      f'{images.shape}.'
    )


@functools.partial(
  jax.jit, static_argnames=('kernel', 'output', 'padding', 'epsilon')
)
def edge_map(
  images: jax.Array,
  *,
  kernel: str = 'sobel',
  output: str = 'components',
  padding: str = 'reflect',
  epsilon: float = 1e-6,
) -> jax.Array:
  """Compute edge maps of each channel with a fixed 3x3 kernel.

  The kernel is correlated with every channel separately (a depthwise
  convolution), after padding the border by 1 pixel. Each component equals
  the matching scipy.ndimage filter on the 2-D slice images[b, :, :, c] with
  the matching mode, up to float32 rounding: sobel, prewitt and laplace,
  correlate1d with [-0.5, 0, 0.5] for 'central', and correlate with the
  Scharr kernel.
  d/dy is the difference along H (row below minus row above) and d/dx along
  W (right column minus left column).

  Args:
    images: array of shape [B, H, W, C].
    kernel: 'sobel', 'scharr' or 'prewitt' (a difference smoothed across its
      axis), 'central' (unsmoothed [-1, 0, 1] / 2), each with the components
      d/dy and d/dx, or 'laplacian' (5-point), with one component.
    output: 'components' returns every component of every channel.
      'magnitude' returns sqrt(sum of squared components + epsilon) per
      channel.
    padding: border mode. 'reflect' repeats the edge pixel
      (d c b a | a b c d), which scipy.ndimage calls 'reflect'. 'replicate'
      copies the edge pixel (scipy's 'nearest'), and 'zero' pads zeros
      (scipy's 'constant').
    epsilon: positive constant added inside the square root of the magnitude,
      so that the gradient stays finite on flat regions. Used only when
      output is 'magnitude'.

  Returns:
    For 'components', float32 array of shape [B, H, W, K * C], where K is 2
    for the gradient kernels and 1 for 'laplacian'. Channel K * c + k is
    component k (0 is d/dy, 1 is d/dx) of input channel c. For 'magnitude',
    float32 array of shape [B, H, W, C].
  """
  return _edge_map('edge_map', images, kernel, output, padding, epsilon)


def _edge_map(
  name: str,
  images: jax.Array,
  kernel: str,
  output: str,
  padding: str,
  epsilon: float,
) -> jax.Array:
  """Implement `edge_map`, naming `name` in error messages."""
  _check_nhwc(name, images)
  for option, value, choices in (
    ('kernel', kernel, EDGE_KERNELS),
    ('output', output, EDGE_OUTPUTS),
    ('padding', padding, EDGE_PADDINGS),
  ):
    if value not in choices:
      raise ValueError(
        f'{name}: {option} must be one of {choices}, got {value!r}.'
      )

  if output == 'magnitude' and not epsilon > 0:
    raise ValueError(
      f'{name}: epsilon must be positive for the magnitude, so that its '
      f'gradient is finite on flat images, got {epsilon!r}.'
    )

  images = images.astype(jnp.float32)
  channels = images.shape[-1]
  height, width = images.shape[1:3]

  # The correlation runs on the zero-padded image. For 'reflect' and
  # 'replicate', which both repeat the edge pixel when the border is 1
  # pixel wide, corrections then add the border taps' share to the first
  # and last rows and columns. Padding the image with its edge pixels
  # directly gives the same values, but XLA's CPU backend runs that
  # gradient about ten times slower on 128x128 images.
  zero_padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  if padding != 'zero':
    top = _replicate_columns(images[:, :1])
    bottom = _replicate_columns(images[:, -1:])
    left = jnp.pad(images[:, :, :1], ((0, 0), (1, 1), (0, 0), (0, 0)))
    right = jnp.pad(images[:, :, -1:], ((0, 0), (1, 1), (0, 0), (0, 0)))

  per_component = []
  for component in _EDGE_KERNELS[kernel]:
    total = _correlate(zero_padded, component, height, width)
    if padding != 'zero':
      corrections = (
        (_correlate(top, component[:1], 1, width), (0, height - 1), (0, 0)),
        (
          _correlate(bottom, component[2:], 1, width),
          (height - 1, 0),
          (0, 0),
        ),
        (_correlate(left, component[:, :1], height, 1), (0, 0), (0, width - 1)),
        (
          _correlate(right, component[:, 2:], height, 1),
          (0, 0),
          (width - 1, 0),
        ),
      )
      for correction, rows, columns in corrections:
        if correction is not None:
          total = total + jnp.pad(correction, ((0, 0), rows, columns, (0, 0)))
    per_component.append(total)

  # [B, H, W, C, K] flattens to channel K * c + k, the documented order.
  stacked = jnp.stack(per_component, axis=-1)
  if output == 'components':
    return stacked.reshape((*stacked.shape[:3], channels * len(per_component)))

  return jnp.sqrt(jnp.sum(jnp.square(stacked), axis=-1) + epsilon)


@functools.partial(jax.jit, static_argnames=('output', 'epsilon'))
def sobel(
  images: jax.Array, *, output: str = 'components', epsilon: float = 1e-6
) -> jax.Array:
  """Compute Sobel edge maps of each channel.

  The same as `edge_map(images, kernel='sobel', padding='reflect')`. Fixed
  3x3 Sobel kernels are correlated with every channel separately. The border
  is padded by 1 pixel in numpy's 'symmetric' mode
  (d c b a | a b c d | d c b a), which is scipy.ndimage's default 'reflect'
  mode. So each component equals scipy.ndimage.sobel on the 2-D slice
  images[b, :, :, c], with axis=0 for d/dy and axis=1 for d/dx, up to float32
  rounding. d/dy is the difference along H (row below minus row above) and
  d/dx along W (right column minus left column), each smoothed by [1, 2, 1]
  across the other axis.

  Args:
    images: array of shape [B, H, W, C].
    output: 'components' returns both derivatives of every channel.
      'magnitude' returns sqrt(dy^2 + dx^2 + epsilon) per channel.
    epsilon: positive constant added inside the square root of the magnitude,
      so that the gradient stays finite on flat regions where dy = dx = 0.
      Used only when output is 'magnitude'.

  Returns:
    For 'components', float32 array of shape [B, H, W, 2 * C] where channel
    2 * c is d/dy of input channel c and channel 2 * c + 1 is d/dx of it. For
    'magnitude', float32 array of shape [B, H, W, C].
  """
  return _edge_map('sobel', images, 'sobel', output, 'reflect', epsilon)


@functools.partial(jax.jit, static_argnames=('mean',))
def mean_shift(images: jax.Array, *, mean: str = 'channel') -> jax.Array:
  """Subtract from each image its mean, per channel or over all channels.

  With mean='channel', adding a constant to one channel of an image leaves
  the output unchanged. With mean='image', adding one constant to every
  channel leaves it unchanged, but a shift of one channel against the others
  still shows. So a distance between mean-shifted images ignores global
  brightness shifts, and with 'image' it still penalises colour casts.

  Args:
    images: array of shape [B, H, W, C].
    mean: 'channel' subtracts the mean over H and W of each channel, and
      'image' subtracts one mean over H, W and C.

  Returns:
    float32 array of shape [B, H, W, C] whose mean over H and W ('channel')
    or over H, W and C ('image') is 0 for every image, up to float32
    rounding.
  """
  _check_nhwc('mean_shift', images)
  if mean not in MEAN_SHIFT_MEANS:
    raise ValueError(
      f'mean_shift: mean must be one of {MEAN_SHIFT_MEANS}, got {mean!r}.'
    )

  images = images.astype(jnp.float32)
  axes = (1, 2) if mean == 'channel' else (1, 2, 3)
  return images - jnp.mean(images, axis=axes, keepdims=True)


@functools.partial(jax.jit, static_argnames=('epsilon',))
def standardize(images: jax.Array, *, epsilon: float = 1e-6) -> jax.Array:
  """Standardise each image per channel to zero mean and unit variance.

  The output is (x - mean) / sqrt(var + epsilon), with the mean and the
  population variance over H and W of each image and channel. Mapping one
  channel of an image to a * x + b with a > 0 leaves the output unchanged up
  to the epsilon, so a distance between standardised images ignores global
  brightness and contrast changes.

  Args:
    images: array of shape [B, H, W, C].
    epsilon: positive constant added to the variance, so that flat channels
      map to 0 and the gradient stays finite. It matters only where the
      variance is not much larger than epsilon.

  Returns:
    float32 array of shape [B, H, W, C].
  """
  _check_nhwc('standardize', images)
  if not epsilon > 0:
    raise ValueError(
      f'standardize: epsilon must be positive, so that flat channels have a '
      f'finite output and gradient, got {epsilon!r}.'
    )

  images = images.astype(jnp.float32)
  centred = images - jnp.mean(images, axis=(1, 2), keepdims=True)
  variance = jnp.mean(jnp.square(centred), axis=(1, 2), keepdims=True)
  return centred / jnp.sqrt(variance + epsilon)


@jax.jit
def fourier_amplitude(images: jax.Array) -> jax.Array:
  """Compute the amplitude spectrum |FFT2(x)| of each image and channel.

  The 2-D discrete Fourier transform runs over H and W with the orthonormal
  scaling 1 / sqrt(H * W), as numpy.fft.fft2(x, axes=(1, 2), norm='ortho'),
  so by Parseval's theorem the squared amplitudes sum to the sum of squared
  pixels. The phase is discarded, so the output does not change when an
  image is shifted circularly. Where an amplitude is exactly 0 its gradient
  is defined as 0, because the derivative of |z| is undefined at z = 0.

  Args:
    images: array of shape [B, H, W, C].

  Returns:
    float32 array of shape [B, H, W, C], where [b, u, v, c] is the amplitude
    at frequency index u along H and v along W, zero frequency first.
  """
  _check_nhwc('fourier_amplitude', images)
  images = images.astype(jnp.float32)

  spectrum = jnp.fft.fft2(images, axes=(1, 2), norm='ortho')
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)

  # jnp.where differentiates both branches, so the sqrt must never see 0. The
  # inner where feeds it 1 instead, and the outer one discards that result.
  is_positive = power > 0
  safe_power = jnp.where(is_positive, power, 1.0)
  return jnp.where(is_positive, jnp.sqrt(safe_power), 0.0)


@functools.partial(jax.jit, static_argnames=('normalization',))
def gram(features: jax.Array, *, normalization: str = 'chw') -> jax.Array:
  """Compute the Gram matrix of each example's feature map.

  G[b, c, d] = sum over h, w of F[b, h, w, c] * F[b, h, w, d] / N, the inner
  products between channels as in L. A. Gatys, A. S. Ecker and M. Bethge,
  "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016. The
  Gram matrix discards where features occur, so it does not change when the
  pixels are permuted spatially.

  Args:
    features: array of shape [B, H, W, C].
    normalization: the divisor N. 'none' is 1, 'hw' is H * W (a mean over
      positions), 'chw' is C * H * W.

  Returns:
    float32 array of shape [B, C, C], symmetric in its last two axes.
  """
  _check_nhwc('gram', features)
  if normalization not in GRAM_NORMALIZATIONS:
    raise ValueError(
      f'gram: normalization must be one of {GRAM_NORMALIZATIONS}, got '
      f'{normalization!r}.'
    )

  features = features.astype(jnp.float32)
  _, height, width, channels = features.shape
  divisors = {'none': 1, 'hw': height * width, 'chw': channels * height * width}

  products = jnp.einsum(
    'bhwc,bhwd->bcd',
    features,
    features,
    precision=jax.lax.Precision.HIGHEST,
  )
  return products / divisors[normalization]
