"""Tests for train.metrics, the fixed evaluation suite.

Golden sources: skimage.metrics.structural_similarity (scikit-image 0.26) for
SSIM, scipy.ndimage.sobel (SciPy 1.17) for the edge error and NumPy for the
pixel errors and the mean-shifted error.
"""

import jax
import numpy as np
import pytest
import scipy.ndimage
import skimage.metrics

from train import metrics


def _pair(shape, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(0.2, 0.8, shape).astype(np.float32)
  noisy = np.clip(images + 0.1 * rng.standard_normal(shape), 0.0, 1.0)
  return images, noisy.astype(np.float32)


@pytest.mark.parametrize(
  'shape, expected',
  [
    ((28, 28, 1), ('psnr', 'ssim', 'ms_ssim')),
    ((32, 32, 3), ('psnr', 'ssim', 'ms_ssim')),
    ((16, 16, 1), ('psnr', 'ssim')),
    ((8, 8, 3), ('psnr',)),
  ],
)
def test_structural_metrics_need_the_window(shape, expected):
  names = metrics.suite_names(shape)

  assert names[: len(expected)] == expected
  assert names[len(expected) :] == (
    'mse',
    'mae',
    'edge_l1',
    'gram_distance',
    'mean_shift_mse',
  )
  images, noisy = _pair((2, *shape))
  values = jax.jit(metrics.make_suite(shape))(images, noisy)
  assert sorted(values) == sorted(names)
  for name, value in values.items():
    assert value.shape == (2,), name
    assert np.all(np.isfinite(value)), name


def test_values_match_golden_sources():
  images, noisy = _pair((3, 28, 28, 1))

  values = jax.jit(metrics.make_suite((28, 28, 1)))(images, noisy)

  error = noisy.astype(np.float64) - images
  mse = (error**2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(values['mse'], mse, rtol=1e-5)
  np.testing.assert_allclose(
    values['mae'], np.abs(error).mean(axis=(1, 2, 3)), rtol=1e-5
  )
  np.testing.assert_allclose(values['psnr'], -10 * np.log10(mse), rtol=1e-5)
  centred = error - error.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(
    values['mean_shift_mse'], (centred**2).mean(axis=(1, 2, 3)), rtol=1e-4
  )
  for i in range(3):
    a, b = images[i, ..., 0], noisy[i, ..., 0]
    expected_ssim = skimage.metrics.structural_similarity(
      b,
      a,
      data_range=1.0,
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
    )
    np.testing.assert_allclose(values['ssim'][i], expected_ssim, atol=1e-4)
    edge_errors = [
      np.abs(
        scipy.ndimage.sobel(b.astype(np.float64), axis=axis, mode='reflect')
        - scipy.ndimage.sobel(a.astype(np.float64), axis=axis, mode='reflect')
      ).mean()
      for axis in (0, 1)
    ]
    np.testing.assert_allclose(
      values['edge_l1'][i], np.mean(edge_errors), rtol=1e-4
    )


def test_perfect_reconstruction_scores():
  images, _ = _pair((2, 32, 32, 3))

  values = metrics.make_suite((32, 32, 3))(images, images)

  for name in ('mse', 'mae', 'edge_l1', 'gram_distance', 'mean_shift_mse'):
    np.testing.assert_allclose(values[name], 0.0, atol=1e-7, err_msg=name)
  np.testing.assert_allclose(values['ssim'], 1.0, atol=1e-5)
  np.testing.assert_allclose(values['ms_ssim'], 1.0, atol=1e-5)


def test_mean_shift_ignores_brightness():
  images, _ = _pair((2, 28, 28, 1))
  brighter = images + 0.1

  values = metrics.make_suite((28, 28, 1))(images, brighter)

  np.testing.assert_allclose(values['mean_shift_mse'], 0.0, atol=1e-10)
  np.testing.assert_allclose(values['mse'], 0.01, rtol=1e-4)


def test_gram_network_is_fixed():
  images, noisy = _pair((2, 28, 28, 1))

  first = metrics.make_suite((28, 28, 1))(images, noisy)['gram_distance']
  second = metrics.make_suite((28, 28, 1))(images, noisy)['gram_distance']

  np.testing.assert_array_equal(first, second)
  assert np.all(first > 0)
