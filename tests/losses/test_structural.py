"""Tests for losses.structural.

Golden sources: skimage.metrics.structural_similarity (scikit-image 0.26) and
dm_pix.ssim (dm-pix 0.4.5) for SSIM, tf.image.ssim_multiscale (TensorFlow
2.21) for five-scale MS-SSIM, and a NumPy transcription of the MS-SSIM
formula, filtering with scipy.ndimage, for fewer scales.
"""

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import skimage.metrics
import skimage.transform

from losses import structural

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def noisy_pair(shape, seed=0, noise=0.2):
  """Return random images and a noisy copy, both in [0, 1]."""
  rng = np.random.default_rng(seed)
  images = rng.random(shape).astype(np.float32)
  noisy = np.clip(images + noise * rng.standard_normal(shape), 0.0, 1.0)
  return images, noisy.astype(np.float32)


def astronaut_pair(size=48):
  """Return two small RGB crops of the astronaut photograph."""
  photograph = skimage.data.astronaut().astype(np.float32) / 255.0
  face = skimage.transform.resize(photograph[0:200, 150:350], (size, size))
  shifted = skimage.transform.resize(photograph[10:210, 160:360], (size, size))
  return (
    face[None].astype(np.float32),
    shifted[None].astype(np.float32),
  )


def skimage_ssim(a, b, **options):
  return np.array(
    [
      skimage.metrics.structural_similarity(
        a[i],
        b[i],
        channel_axis=-1,
        use_sample_covariance=False,
        data_range=1.0,
        **options,
      )
      for i in range(a.shape[0])
    ]
  )


def skimage_gaussian_ssim(a, b):
  return skimage_ssim(a, b, gaussian_weights=True, sigma=1.5)


def numpy_ssim_maps(a, b, window_size, sigma=1.5, k1=0.01, k2=0.03):
  """Return the SSIM and contrast-structure maps of one 2-D channel pair."""
  offsets = np.arange(window_size) - (window_size - 1) / 2
  weights = np.exp(-(offsets**2) / (2 * sigma**2))
  weights /= weights.sum()

  def local_mean(plane):
    filtered = scipy.ndimage.correlate1d(plane, weights, axis=0)
    filtered = scipy.ndimage.correlate1d(filtered, weights, axis=1)
    crop = (window_size - 1) // 2
    return filtered[crop : plane.shape[0] - crop, crop : plane.shape[1] - crop]

  mean_a, mean_b = local_mean(a), local_mean(b)
  variance_a = local_mean(a * a) - mean_a**2
  variance_b = local_mean(b * b) - mean_b**2
  covariance = local_mean(a * b) - mean_a * mean_b
  c1, c2 = k1**2, k2**2

  cs = (2 * covariance + c2) / (variance_a + variance_b + c2)
  luminance = (2 * mean_a * mean_b + c1) / (mean_a**2 + mean_b**2 + c1)
  return luminance * cs, cs


def numpy_ms_ssim(a, b, window_size, scales):
  """Transcribe MS-SSIM with the first `scales` weights, renormalised."""
  weights = WEIGHTS[:scales] / WEIGHTS[:scales].sum()
  result = np.zeros(a.shape[0])
  for i in range(a.shape[0]):
    per_channel = []
    for c in range(a.shape[-1]):
      plane_a = np.float64(a[i, :, :, c])
      plane_b = np.float64(b[i, :, :, c])
      value = 1.0
      for scale in range(scales):
        if scale > 0:
          height, width = plane_a.shape[0] // 2, plane_a.shape[1] // 2
          plane_a = plane_a[: 2 * height, : 2 * width]
          plane_a = plane_a.reshape(height, 2, width, 2).mean(axis=(1, 3))
          plane_b = plane_b[: 2 * height, : 2 * width]
          plane_b = plane_b.reshape(height, 2, width, 2).mean(axis=(1, 3))
        ssim_map, cs_map = numpy_ssim_maps(plane_a, plane_b, window_size)
        last = scale == scales - 1
        mean = ssim_map.mean() if last else cs_map.mean()
        value *= max(mean, 0.0) ** weights[scale]
      per_channel.append(value)
    result[i] = np.mean(per_channel)
  return result


@pytest.mark.parametrize('shape', [(2, 16, 16, 3), (1, 11, 13, 1)])
def test_ssim_matches_skimage_random(shape):
  a, b = noisy_pair(shape)

  result = structural.ssim(a, b)

  assert result.shape == shape[:1]
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, skimage_gaussian_ssim(a, b), atol=1e-4)


def test_ssim_matches_skimage_photograph():
  a, b = astronaut_pair()

  result = structural.ssim(a, b)

  np.testing.assert_allclose(result, skimage_gaussian_ssim(a, b), atol=1e-4)
  assert 0.0 < result[0] < 0.99


def test_ssim_uniform_matches_skimage():
  a, b = noisy_pair((2, 12, 10, 2), seed=1)

  result = structural.ssim(a, b, window='uniform', window_size=7)

  np.testing.assert_allclose(result, skimage_ssim(a, b, win_size=7), atol=1e-4)


def test_ssim_matches_dm_pix():
  a, b = noisy_pair((2, 20, 18, 3), seed=2)

  np.testing.assert_allclose(
    structural.ssim(a, b), dm_pix.ssim(a, b), atol=1e-4
  )
  np.testing.assert_allclose(
    structural.ssim(a, b, window_size=5, sigma=0.8),
    dm_pix.ssim(a, b, filter_size=5, filter_sigma=0.8),
    atol=1e-4,
  )


def test_ssim_outputs_channels_and_map():
  a, b = noisy_pair((2, 16, 14, 3), seed=3)

  ssim_map = structural.ssim(a, b, output='map')
  per_channel = structural.ssim(a, b, output='channels')
  mean = structural.ssim(a, b)

  assert ssim_map.shape == (2, 6, 4, 3)
  assert per_channel.shape == (2, 3)
  np.testing.assert_allclose(
    ssim_map, dm_pix.ssim(a, b, return_map=True), atol=1e-4
  )
  np.testing.assert_allclose(per_channel.mean(axis=1), mean, atol=1e-6)
  for c in range(3):
    expected = skimage_gaussian_ssim(a[..., c : c + 1], b[..., c : c + 1])
    np.testing.assert_allclose(per_channel[:, c], expected, atol=1e-4)


CONSTANTS = {'black': 0.0, 'white': 1.0, 'grey': 0.5}


@pytest.mark.parametrize('function', [structural.ssim, structural.ms_ssim])
def test_identical_images_score_one(function):
  random_images, _ = noisy_pair((2, 24, 24, 3))
  cases = {'random': random_images}
  for name, value in CONSTANTS.items():
    cases[name] = np.full((2, 24, 24, 3), value, np.float32)

  for name, images in cases.items():
    result = function(images, images, window_size=7)
    np.testing.assert_allclose(result, 1.0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize('function', [structural.ssim, structural.ms_ssim])
def test_gradient_finite_on_hard_pairs(function):
  random_images, _ = noisy_pair((2, 24, 24, 3), seed=4)
  pairs = {'identical': (random_images, random_images)}
  for name, value in CONSTANTS.items():
    constant = np.full((2, 24, 24, 3), value, np.float32)
    pairs[name] = (constant, constant)
  pairs['anti_correlated'] = (random_images, 1.0 - random_images)
  pairs['black_against_random'] = (np.zeros_like(random_images), random_images)

  def loss(reconstructions, images):
    return jnp.sum(1.0 - function(images, reconstructions, window_size=7))

  value_and_grad = jax.jit(jax.value_and_grad(loss))
  for name, (images, reconstructions) in pairs.items():
    value, gradient = value_and_grad(reconstructions, images)

    assert np.isfinite(value), name
    assert np.all(np.isfinite(gradient)), name


def test_anti_correlated_pairs():
  images, _ = noisy_pair((2, 24, 24, 3), seed=5)
  inverted = 1.0 - images

  assert np.all(np.asarray(structural.ssim(images, inverted)) < -0.5)
  np.testing.assert_array_equal(structural.ms_ssim(images, inverted), 0.0)


def test_window_larger_than_image_raises():
  images = np.zeros((1, 8, 9, 1), np.float32)

  for function in (structural.ssim, structural.ms_ssim):
    with pytest.raises(ValueError, match=r'window_size 11.*8x9') as raised:
      function(images, images)
    assert 'Set window_size to an odd number no larger than 8' in str(
      raised.value
    )


@pytest.mark.parametrize(
  ('options', 'message'),
  [
    ({'window': 'box'}, 'window must be one of'),
    ({'window_size': 4}, 'odd positive integer'),
    ({'sigma': 0.0}, 'sigma must be positive'),
    ({'k2': -0.1}, 'k2 must be positive'),
    ({'output': 'median'}, 'output must be one of'),
  ],
)
def test_ssim_invalid_options_raise(options, message):
  images = np.zeros((1, 16, 16, 1), np.float32)

  with pytest.raises(ValueError, match=message):
    structural.ssim(images, images, **options)


def test_shape_mismatch_raises():
  a = np.zeros((1, 16, 16, 1), np.float32)

  with pytest.raises(ValueError, match=r'same shape.*\(1, 16, 16, 2\)'):
    structural.ssim(a, np.zeros((1, 16, 16, 2), np.float32))
  with pytest.raises(ValueError, match=r'NHWC.*\(16, 16, 1\)'):
    structural.ms_ssim(a[0], a[0])


def test_bfloat16_input_gives_float32():
  a, b = noisy_pair((2, 16, 16, 3), seed=6)
  a16 = jnp.asarray(a, jnp.bfloat16)
  b16 = jnp.asarray(b, jnp.bfloat16)

  for function in (structural.ssim, structural.ms_ssim):
    result = function(a16, b16, window_size=7)
    expected = function(
      a16.astype(jnp.float32), b16.astype(jnp.float32), window_size=7
    )
    assert result.dtype == jnp.float32
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_jit_matches_eager():
  a, b = noisy_pair((2, 24, 24, 3), seed=7)

  jitted = (structural.ssim(a, b), structural.ms_ssim(a, b, window_size=5))
  with jax.disable_jit():
    eager = (structural.ssim(a, b), structural.ms_ssim(a, b, window_size=5))

  np.testing.assert_allclose(jitted[0], eager[0], atol=1e-6)
  np.testing.assert_allclose(jitted[1], eager[1], atol=1e-6)


@pytest.mark.parametrize(
  ('height', 'width', 'window_size', 'expected'),
  [
    (176, 176, 11, 5),
    (512, 300, 11, 5),
    (28, 28, 11, 2),
    (28, 28, 7, 3),
    (28, 28, 3, 4),
    (32, 20, 11, 1),
    (10, 10, 11, 0),
  ],
)
def test_ms_ssim_scales(height, width, window_size, expected):
  result = structural.ms_ssim_scales(height, width, window_size=window_size)

  assert result == expected


def test_ms_ssim_five_scales_match_tensorflow():
  import tensorflow as tf  # noqa: PLC0415

  a, b = noisy_pair((2, 176, 176, 3), seed=8, noise=0.3)

  result = structural.ms_ssim(a, b)

  expected = tf.image.ssim_multiscale(a, b, max_val=1.0).numpy()
  np.testing.assert_allclose(result, expected, atol=1e-4)


@pytest.mark.parametrize(('window_size', 'scales'), [(11, 2), (7, 3), (3, 4)])
def test_ms_ssim_fewer_scales_match_numpy(window_size, scales):
  a, b = noisy_pair((2, 28, 30, 2), seed=9)
  assert structural.ms_ssim_scales(28, 30, window_size=window_size) == scales

  result = structural.ms_ssim(a, b, window_size=window_size)

  expected = numpy_ms_ssim(a, b, window_size, scales)
  np.testing.assert_allclose(result, expected, atol=1e-4)


def test_ms_ssim_photograph_matches_numpy():
  a, b = astronaut_pair(size=44)

  result = structural.ms_ssim(a, b)

  np.testing.assert_allclose(result, numpy_ms_ssim(a, b, 11, 3), atol=1e-4)


def test_ms_ssim_one_scale_is_ssim():
  a, b = noisy_pair((2, 16, 21, 3), seed=10)
  assert structural.ms_ssim_scales(16, 21, window_size=11) == 1

  np.testing.assert_allclose(
    structural.ms_ssim(a, b), structural.ssim(a, b), atol=1e-6
  )
