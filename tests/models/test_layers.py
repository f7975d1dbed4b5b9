"""Tests for models.layers: the matrix-product convolutions.

Golden sources: `jax.lax.conv_general_dilated` and `jax.lax.conv_transpose`
with 'SAME' padding, and flax's `nn.Conv` and `nn.ConvTranspose` for the
parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers

# (height, width, kernel (kh, kw), strides (sh, sw)): odd and even sizes,
# kernels smaller and larger than the stride, and unequal axes.
CASES = [
  (28, 28, (3, 3), (2, 2)),
  (7, 7, (3, 3), (2, 2)),
  (14, 9, (3, 3), (2, 2)),
  (8, 8, (1, 1), (1, 1)),
  (5, 6, (3, 3), (1, 1)),
  (9, 10, (2, 4), (2, 1)),
  (11, 7, (5, 3), (3, 3)),
  (4, 6, (1, 2), (2, 3)),
]


def _arrays(height, width, kernel_size, in_channels=3, out_channels=4):
  rng = np.random.default_rng(height * 100 + width)
  inputs = rng.standard_normal((2, height, width, in_channels))
  kernel = rng.standard_normal((*kernel_size, in_channels, out_channels))
  return jnp.asarray(inputs, jnp.float32), jnp.asarray(kernel, jnp.float32)


def _reference_conv(inputs, kernel, strides):
  return jax.lax.conv_general_dilated(
    inputs,
    kernel,
    strides,
    'SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    precision=jax.lax.Precision.HIGHEST,
  )


def _reference_conv_transpose(inputs, kernel, strides):
  return jax.lax.conv_transpose(
    inputs, kernel, strides, 'SAME', precision=jax.lax.Precision.HIGHEST
  )


def _vjp(function, inputs, kernel, strides, seed):
  outputs, pullback = jax.vjp(
    lambda x, k: function(x, k, strides), inputs, kernel
  )
  cotangent = np.random.default_rng(seed).standard_normal(outputs.shape)
  return outputs, pullback(jnp.asarray(cotangent, jnp.float32))


@pytest.mark.parametrize('height, width, kernel_size, strides', CASES)
def test_conv_same_matches_lax(height, width, kernel_size, strides):
  inputs, kernel = _arrays(height, width, kernel_size)

  got, (got_dx, got_dk) = _vjp(layers.conv_same, inputs, kernel, strides, 0)
  want, (want_dx, want_dk) = _vjp(_reference_conv, inputs, kernel, strides, 0)

  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_dk, want_dk, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('height, width, kernel_size, strides', CASES)
def test_conv_transpose_same_matches_lax(height, width, kernel_size, strides):
  inputs, kernel = _arrays(height, width, kernel_size)

  got, (got_dx, got_dk) = _vjp(
    layers.conv_transpose_same, inputs, kernel, strides, 1
  )
  want, (want_dx, want_dk) = _vjp(
    _reference_conv_transpose, inputs, kernel, strides, 1
  )

  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_dk, want_dk, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  'ours, flax_module',
  [
    (layers.Conv, nn.Conv),
    (layers.ConvTranspose, nn.ConvTranspose),
  ],
)
def test_modules_match_flax(ours, flax_module):
  inputs = jnp.asarray(
    np.random.default_rng(2).random((2, 14, 14, 3)), jnp.float32
  )
  ours = ours(5, (3, 3), strides=(2, 2))
  reference = flax_module(5, (3, 3), strides=(2, 2), padding='SAME')

  variables = ours.init(jax.random.key(3), inputs)
  reference_variables = reference.init(jax.random.key(3), inputs)

  assert jax.tree.structure(variables) == jax.tree.structure(
    reference_variables
  )
  for leaf, reference_leaf in zip(
    jax.tree.leaves(variables),
    jax.tree.leaves(reference_variables),
    strict=True,
  ):
    np.testing.assert_array_equal(leaf, reference_leaf)
  np.testing.assert_allclose(
    ours.apply(variables, inputs),
    reference.apply(reference_variables, inputs),
    rtol=1e-5,
    atol=1e-5,
  )


def test_forward_mode_matches_reverse():
  inputs, kernel = _arrays(7, 7, (3, 3))
  tangent = jnp.ones_like(inputs)

  def function(x):
    return jnp.sum(layers.conv_transpose_same(x, kernel, (2, 2)) ** 2)

  _, forward = jax.jvp(function, (inputs,), (tangent,))
  reverse = jnp.vdot(jax.grad(function)(inputs), tangent)

  np.testing.assert_allclose(forward, reverse, rtol=1e-4)


def test_rank_mismatch_raises():
  with pytest.raises(ValueError, match='rank 4'):
    layers.conv_same(jnp.zeros((4, 4, 3)), jnp.zeros((3, 3, 3, 2)), (1, 1))


def test_channel_mismatch_raises():
  with pytest.raises(ValueError, match='3 channels'):
    layers.conv_transpose_same(
      jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 2, 2)), (2, 2)
    )
