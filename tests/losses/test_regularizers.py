"""Tests for losses.regularizers.

Golden source: a direct NumPy transcription of the anisotropic total
variation with np.diff.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losses import regularizers

SHAPE = (3, 5, 7, 2)


def random_images(seed=0, shape=SHAPE):
  rng = np.random.default_rng(seed)
  return rng.random(shape).astype(np.float32)


def numpy_total_variation(images):
  images = np.float64(images)
  result = np.zeros(images.shape[0])
  for axis in (1, 2):
    difference = np.abs(np.diff(images, axis=axis))
    if difference.size:
      result += difference.reshape(images.shape[0], -1).mean(axis=1)
  return result


@pytest.mark.parametrize('shape', [SHAPE, (2, 1, 6, 3), (1, 4, 1, 1)])
def test_total_variation_matches_numpy(shape):
  images = random_images(shape=shape)

  result = regularizers.total_variation(images)

  assert result.shape == shape[:1]
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, numpy_total_variation(images), rtol=1e-5)


def test_total_variation_constant_is_zero():
  images = np.full(SHAPE, 0.4, np.float32)

  result = regularizers.total_variation(images)
  gradient = jax.grad(lambda x: regularizers.total_variation(x).sum())(images)

  np.testing.assert_array_equal(result, np.zeros(SHAPE[0]))
  np.testing.assert_array_equal(gradient, np.zeros(SHAPE))


def test_total_variation_gradient_is_sign_of_differences():
  images = np.zeros((1, 1, 3, 1), np.float32)
  images[0, 0, 1, 0] = 1.0

  gradient = jax.grad(lambda x: regularizers.total_variation(x).sum())(images)

  # Two horizontal pairs: d0 = x1 - x0 = 1 and d1 = x2 - x1 = -1, each / 2.
  np.testing.assert_allclose(gradient[0, 0, :, 0], [-0.5, 1.0, -0.5])


def test_total_variation_jit_matches_eager_and_bfloat16():
  images = random_images(seed=1)

  compiled = regularizers.total_variation(images)
  with jax.disable_jit():
    eager = regularizers.total_variation(images)
  from_bfloat16 = regularizers.total_variation(
    jnp.asarray(images, jnp.bfloat16)
  )

  np.testing.assert_allclose(compiled, eager, rtol=1e-6)
  assert from_bfloat16.dtype == jnp.float32
  np.testing.assert_allclose(from_bfloat16, compiled, rtol=2e-2)


def test_total_variation_non_nhwc_raises():
  with pytest.raises(ValueError, match=r'NHWC.*\(5, 7, 2\)'):
    regularizers.total_variation(np.zeros((5, 7, 2), np.float32))
