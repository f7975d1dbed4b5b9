"""Image transforms applied before a distance: Sobel edges, mean shift, Gram.

Every function takes NHWC arrays of shape [B, H, W, C], usually images in
[0, 1] or encoder feature maps, casts them to float32 whatever their dtype and
returns float32 arrays. The rank is checked when the function is traced, and
an input that is not rank 4 raises ValueError.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

SOBEL_OUTPUTS = ('components', 'magnitude')
GRAM_NORMALIZATIONS = ('none', 'hw', 'chw')

# Sobel kernels in correlation order, indexed [dy, dx] with offsets -1, 0, 1.
# Each is a central difference [-1, 0, 1] along its own axis times the
# smoothing [1, 2, 1] along the other, as in scipy.ndimage.sobel.
_DIFFERENCE = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
_SMOOTHING = np.array([1.0, 2.0, 1.0], dtype=np.float32)
_SOBEL_Y = np.outer(_DIFFERENCE, _SMOOTHING)
_SOBEL_X = np.outer(_SMOOTHING, _DIFFERENCE)


def _check_nhwc(name: str, images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(
      f'{name}: input must be NHWC with shape [B, H, W, C], got shape '
      f'{images.shape}.'
    )


@functools.partial(jax.jit, static_argnames=('output', 'epsilon'))
def sobel(
  images: jax.Array, *, output: str = 'components', epsilon: float = 1e-6
) -> jax.Array:
  """Compute Sobel edge maps of each channel.

  Fixed 3x3 Sobel kernels run over every channel separately in one depthwise
  convolution. The border is padded by 1 pixel in numpy's 'symmetric' mode
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
  _check_nhwc('sobel', images)
  if output not in SOBEL_OUTPUTS:
    raise ValueError(
      f'sobel: output must be one of {SOBEL_OUTPUTS}, got {output!r}.'
    )

  if output == 'magnitude' and not epsilon > 0:
    raise ValueError(
      f'sobel: epsilon must be positive for the magnitude, so that its '
      f'gradient is finite on flat images, got {epsilon!r}.'
    )

  images = images.astype(jnp.float32)
  channels = images.shape[-1]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='symmetric')

  # Kernel layout HWIO with one input channel per group. Group c owns output
  # channels 2c (d/dy) and 2c+1 (d/dx), which sets the documented order.
  pair = np.stack([_SOBEL_Y, _SOBEL_X], axis=-1)
  kernel = np.tile(pair, (1, 1, channels))[:, :, None, :]

  components = jax.lax.conv_general_dilated(
    padded,
    jnp.asarray(kernel),
    window_strides=(1, 1),
    padding='VALID',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=channels,
    precision=jax.lax.Precision.HIGHEST,
  )
  if output == 'components':
    return components

  gradient_y = components[..., 0::2]
  gradient_x = components[..., 1::2]
  return jnp.sqrt(jnp.square(gradient_y) + jnp.square(gradient_x) + epsilon)


@jax.jit
def mean_shift(images: jax.Array) -> jax.Array:
  """Subtract from each image its per-channel mean over H and W.

  Adding a constant to one channel of an image leaves the output unchanged,
  so a distance between mean-shifted images ignores global brightness shifts.

  Args:
    images: array of shape [B, H, W, C].

  Returns:
    float32 array of shape [B, H, W, C] whose mean over H and W is 0 for
    every image and channel, up to float32 rounding.
  """
  _check_nhwc('mean_shift', images)
  images = images.astype(jnp.float32)
  return images - jnp.mean(images, axis=(1, 2), keepdims=True)


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
