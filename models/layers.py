"""2-D convolutions with 'SAME' padding, computed as matrix products.

`conv_same` equals `lax.conv_general_dilated(inputs, kernel, strides, 'SAME',
dimension_numbers=('NHWC', 'HWIO', 'NHWC'))` and `conv_transpose_same`
equals `lax.conv_transpose(inputs, kernel, strides, 'SAME')` (kernel not
flipped), up to float32 rounding: they are the same linear maps with the
products summed in another order. `Conv` and `ConvTranspose` are drop-in
replacements for `flax.linen.Conv` and `flax.linen.ConvTranspose` with
'SAME' padding. They create the same parameters, `kernel` [kh, kw, in, out]
and `bias` [out], with the same initialisers, so a parameter tree or
checkpoint of one loads into the other.

XLA's CPU backend runs strided and transposed convolutions, and above all
their gradients, far below its matrix-product speed. Here a convolution
gathers its kh * kw input taps with strided slices and multiplies them by
the kernel in one matrix product (im2col). A transposed convolution
multiplies every input pixel by the whole kernel in one matrix product and
adds the products into the `strides` output phases with shifted slices.
The gradients are then matrix products, pads and slices as well, which XLA
runs well on every backend.

Inputs are NHWC arrays of rank 4.
"""

from collections.abc import Sequence

import flax.linen as nn
from flax.linen import dtypes
import jax
import jax.numpy as jnp


def _check_rank(name, inputs, kernel):
  if inputs.ndim != 4 or kernel.ndim != 4:
    raise ValueError(
      f'{name}: inputs must be NHWC and the kernel HWIO, both of rank 4, got '
      f'shapes {inputs.shape} and {kernel.shape}.'
    )
  if inputs.shape[-1] != kernel.shape[2]:
    raise ValueError(
      f'{name}: inputs have {inputs.shape[-1]} channels but the kernel of '
      f'shape {kernel.shape} expects {kernel.shape[2]}.'
    )


def _shift(inputs, offset_h, offset_w):
  """Returns out[b, i, j] = inputs[b, i + offset_h, j + offset_w], 0 outside.

  One `lax.pad` with negative padding on the far side does the shift, and
  its transpose is again one pad, so the gradient costs no more than the
  value.
  """
  return jax.lax.pad(
    inputs,
    jnp.zeros((), inputs.dtype),
    ((0, 0, 0), (-offset_h, offset_h, 0), (-offset_w, offset_w, 0), (0, 0, 0)),
  )


def _split_phases(inputs, stride_h, stride_w):
  """Splits [B, H, W, C] into its stride phases, H and W multiples of them.

  Returns:
    phases[r][q] = inputs[:, r::stride_h, q::stride_w, :], each
    [B, H / sh, W / sw, C].
  """
  batch, height, width, channels = inputs.shape
  grouped = inputs.reshape(
    batch, height // stride_h, stride_h, width // stride_w, stride_w, channels
  )
  # `split`, unlike indexing, transposes to one concatenation, so the
  # gradient does not add up one full-size padded array per phase.
  phases = []
  for row in jnp.split(grouped, stride_h, axis=2):
    columns = jnp.split(row[:, :, 0], stride_w, axis=3)
    phases.append([column[:, :, :, 0] for column in columns])
  return phases


def conv_same(inputs, kernel, strides):
  """Computes a strided 2-D convolution with 'SAME' padding by im2col.

  Args:
    inputs: array [B, H, W, C].
    kernel: array [kh, kw, C, O], applied as a correlation, as
      `lax.conv_general_dilated` does.
    strides: (stride along H, stride along W).

  Returns:
    Array [B, ceil(H / sh), ceil(W / sw), O].
  """
  _check_rank('conv_same', inputs, kernel)
  batch, height, width, channels = inputs.shape
  kernel_height, kernel_width, _, features = kernel.shape
  stride_h, stride_w = strides
  out_height = -(-height // stride_h)
  out_width = -(-width // stride_w)

  # Tap (ty, tx) of output pixel (i, j) reads padded pixel
  # (i * sh + ty, j * sw + tx). That is pixel (i + ty // sh, j + tx // sw)
  # of stride phase (ty % sh, tx % sw). Extra zeros after the 'SAME'
  # padding make the padded size a whole number of strides that covers
  # every tap.
  (before_h, _), (before_w, _) = jax.lax.padtype_to_pads(
    (height, width), (kernel_height, kernel_width), strides, 'SAME'
  )
  padded_height = stride_h * (out_height + (kernel_height - 1) // stride_h)
  padded_width = stride_w * (out_width + (kernel_width - 1) // stride_w)
  padded = jnp.pad(
    inputs,
    (
      (0, 0),
      (before_h, padded_height - height - before_h),
      (before_w, padded_width - width - before_w),
      (0, 0),
    ),
  )
  phases = _split_phases(padded, stride_h, stride_w)

  # Taps in the kernel's (ty, tx, C) order, so the kernel reshapes to
  # [kh * kw * C, O].
  taps = []
  for tap_h in range(kernel_height):
    for tap_w in range(kernel_width):
      phase = phases[tap_h % stride_h][tap_w % stride_w]
      start_h = tap_h // stride_h
      start_w = tap_w // stride_w
      taps.append(
        phase[:, start_h : start_h + out_height, start_w : start_w + out_width]
      )
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)

  # A dot of two rank-2 arrays: XLA's CPU backend runs a rank-4 dot far
  # more slowly.
  weights = kernel.reshape(kernel_height * kernel_width * channels, features)
  outputs = jnp.dot(patches.reshape(-1, weights.shape[0]), weights)
  return outputs.reshape(batch, out_height, out_width, features)


def _transpose_phases(kernel_size, stride):
  """Lists, per output phase, the taps that reach it and their input offset.

  `lax.conv_transpose` with 'SAME' padding correlates the kernel with the
  input dilated by `stride` and padded by `pad_before` in front. Output
  position stride * m + r then receives tap t from input position m + d,
  where d = (r + t - pad_before) / stride, for every t for which that
  division is exact.

  Returns:
    A list over phases r of [(t, d), ...].
  """
  pad_length = kernel_size + stride - 2
  if stride > kernel_size - 1:
    pad_before = kernel_size - 1
  else:
    pad_before = -(-pad_length // 2)

  phases = []
  for phase in range(stride):
    taps = []
    for tap in range(kernel_size):
      shift = phase + tap - pad_before
      if shift % stride == 0:
        taps.append((tap, shift // stride))
    phases.append(taps)
  return phases


def conv_transpose_same(inputs, kernel, strides):
  """Computes a strided 2-D transposed convolution with 'SAME' padding.

  Args:
    inputs: array [B, H, W, C].
    kernel: array [kh, kw, C, O], not flipped, as
      `lax.conv_transpose(..., transpose_kernel=False)` reads it.
    strides: (stride along H, stride along W).

  Returns:
    Array [B, H * sh, W * sw, O].
  """
  _check_rank('conv_transpose_same', inputs, kernel)
  batch, height, width, channels = inputs.shape
  kernel_height, kernel_width, _, features = kernel.shape
  stride_h, stride_w = strides

  # Every input pixel times every tap, in one dot of two rank-2 arrays:
  # products[t][b, i, j, o] for tap t = ty * kw + tx.
  weights = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(channels, -1)
  products = jnp.dot(inputs.reshape(-1, channels), weights).reshape(
    batch, height, width, kernel_height * kernel_width * features
  )
  products = jnp.split(products, kernel_height * kernel_width, axis=-1)

  rows = []
  for taps_h in _transpose_phases(kernel_height, stride_h):
    columns = []
    for taps_w in _transpose_phases(kernel_width, stride_w):
      phase = jnp.zeros((batch, height, width, features), inputs.dtype)
      for tap_h, offset_h in taps_h:
        for tap_w, offset_w in taps_w:
          product = products[tap_h * kernel_width + tap_w]
          phase = phase + _shift(product, offset_h, offset_w)
      columns.append(phase)
    rows.append(jnp.stack(columns, axis=3))
  # [B, H, sh, W, sw, O]: output pixel (i * sh + r, j * sw + q) is phase
  # (r, q) at (i, j).
  interleaved = jnp.stack(rows, axis=2)
  return interleaved.reshape(
    batch, height * stride_h, width * stride_w, features
  )


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(value, int):
    return value, value
  first, second = value
  return int(first), int(second)


class Conv(nn.Module):
  """`flax.linen.Conv` with 'SAME' padding, computed by `conv_same`.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw), or one int for both.
    strides: (sh, sw), or one int for both.
    kernel_init: initialiser of the [kh, kw, in, features] kernel, LeCun
      normal as in `flax.linen.Conv`.
    bias_init: initialiser of the [features] bias, zeros.
  """

  features: int
  kernel_size: int | Sequence[int] = (3, 3)
  strides: int | Sequence[int] = (1, 1)
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs):
    kernel_shape = (*_pair(self.kernel_size), inputs.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, kernel_shape, jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    inputs, kernel, bias = dtypes.promote_dtype(inputs, kernel, bias)
    return conv_same(inputs, kernel, _pair(self.strides)) + bias


class ConvTranspose(nn.Module):
  """`flax.linen.ConvTranspose` with 'SAME' padding, by `conv_transpose_same`.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw), or one int for both.
    strides: (sh, sw), or one int for both.
    kernel_init: initialiser of the [kh, kw, in, features] kernel, LeCun
      normal as in `flax.linen.ConvTranspose`.
    bias_init: initialiser of the [features] bias, zeros.
  """

  features: int
  kernel_size: int | Sequence[int] = (3, 3)
  strides: int | Sequence[int] = (1, 1)
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs):
    kernel_shape = (*_pair(self.kernel_size), inputs.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, kernel_shape, jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    inputs, kernel, bias = dtypes.promote_dtype(inputs, kernel, bias)
    return conv_transpose_same(inputs, kernel, _pair(self.strides)) + bias
