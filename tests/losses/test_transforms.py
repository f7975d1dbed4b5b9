"""Tests for losses.transforms.

Golden sources: scipy.ndimage.sobel (SciPy 1.17) for the Sobel components
and scipy.ndimage.prewitt, laplace, correlate1d and correlate for the other
edge kernels. np.hypot checks the magnitude and np.tensordot the Gram matrix.
Direct NumPy means and standard deviations check the mean shift and the
standardisation, and numpy.fft.fft2 the Fourier amplitude.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from losses import transforms

SHAPE = (2, 5, 7, 3)


def random_images(seed=0, shape=SHAPE):
  rng = np.random.default_rng(seed)
  return rng.random(shape).astype(np.float64).astype(np.float32)


def scipy_sobel_components(images):
  """Stack d/dy and d/dx of every 2-D slice images[b, :, :, c].

  scipy.ndimage.sobel smooths along every axis other than `axis`, so it runs
  on each 2-D slice rather than on the 4-D array, where it would also mix
  neighbouring images and channels.
  """
  batch, height, width, channels = images.shape
  expected = np.zeros((batch, height, width, 2 * channels))
  for b in range(batch):
    for c in range(channels):
      plane = np.float64(images[b, :, :, c])
      expected[b, :, :, 2 * c] = scipy.ndimage.sobel(plane, axis=0)
      expected[b, :, :, 2 * c + 1] = scipy.ndimage.sobel(plane, axis=1)
  return expected


@pytest.mark.parametrize('shape', [SHAPE, (1, 1, 4, 1), (3, 2, 2, 2)])
def test_sobel_components_match_scipy(shape):
  images = random_images(shape=shape)

  result = transforms.sobel(images, output='components')

  assert result.shape == shape[:3] + (2 * shape[3],)
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, scipy_sobel_components(images), atol=1e-5)


def test_sobel_components_channel_order():
  # A ramp along W has d/dy == 0 and d/dx == 8 * slope in the interior.
  ramp = np.tile(np.arange(6, dtype=np.float32), (4, 1))
  images = np.stack([ramp, 2.0 * ramp], axis=-1)[None]

  result = np.asarray(transforms.sobel(images))
  interior = result[0, 1:-1, 1:-1, :]

  np.testing.assert_array_equal(interior[..., 0], 0.0)
  np.testing.assert_array_equal(interior[..., 1], 8.0)
  np.testing.assert_array_equal(interior[..., 2], 0.0)
  np.testing.assert_array_equal(interior[..., 3], 16.0)


@pytest.mark.parametrize('epsilon', [1e-6, 0.5])
def test_sobel_magnitude_matches_hypot(epsilon):
  images = random_images(seed=1)
  components = scipy_sobel_components(images)
  gradient_y = components[..., 0::2]
  gradient_x = components[..., 1::2]
  expected = np.sqrt(np.hypot(gradient_y, gradient_x) ** 2 + epsilon)

  result = transforms.sobel(images, output='magnitude', epsilon=epsilon)

  assert result.shape == SHAPE
  np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('value', [0.0, 0.5, 1.0])
def test_sobel_magnitude_gradient_finite_on_flat(value):
  images = jnp.full(SHAPE, value)

  def summed(x):
    return transforms.sobel(x, output='magnitude').sum()

  gradient = jax.grad(summed)(images)

  assert np.all(np.isfinite(gradient))


def test_sobel_unknown_output_raises():
  with pytest.raises(ValueError, match=r"'components', 'magnitude'"):
    transforms.sobel(random_images(), output='angle')


def test_sobel_nonpositive_epsilon_raises():
  with pytest.raises(ValueError, match=r'epsilon must be positive'):
    transforms.sobel(random_images(), output='magnitude', epsilon=0.0)


def numpy_gram(features, divisor):
  batch, _, _, channels = features.shape
  expected = np.zeros((batch, channels, channels))
  for b in range(batch):
    flat = np.float64(features[b])
    expected[b] = np.tensordot(flat, flat, axes=([0, 1], [0, 1]))
  return expected / divisor


@pytest.mark.parametrize(
  ('normalization', 'divisor'),
  [('none', 1), ('hw', 5 * 7), ('chw', 3 * 5 * 7)],
)
def test_gram_matches_tensordot(normalization, divisor):
  features = random_images(seed=2) - 0.5

  result = transforms.gram(features, normalization=normalization)

  assert result.shape == (SHAPE[0], SHAPE[3], SHAPE[3])
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(
    result, numpy_gram(features, divisor), rtol=1e-5, atol=1e-6
  )


def test_gram_invariant_to_pixel_permutation():
  features = random_images(seed=3)
  batch, height, width, channels = features.shape
  permutation = np.random.default_rng(4).permutation(height * width)
  flat = features.reshape(batch, height * width, channels)
  shuffled = flat[:, permutation].reshape(features.shape)

  original = transforms.gram(features)
  permuted = transforms.gram(shuffled)

  np.testing.assert_allclose(permuted, original, rtol=1e-6)


def test_gram_symmetric():
  result = np.asarray(transforms.gram(random_images(seed=5)))

  np.testing.assert_allclose(result, np.swapaxes(result, 1, 2), rtol=1e-6)


def test_gram_unknown_normalization_raises():
  with pytest.raises(ValueError, match=r"'none', 'hw', 'chw'"):
    transforms.gram(random_images(), normalization='c')


def test_mean_shift_matches_numpy():
  images = random_images(seed=6)
  expected = images - images.mean(axis=(1, 2), keepdims=True)

  result = transforms.mean_shift(images)

  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, atol=1e-6)


def test_mean_shift_zero_mean():
  result = transforms.mean_shift(random_images(seed=7))

  means = np.asarray(result).mean(axis=(1, 2))
  np.testing.assert_allclose(means, np.zeros((SHAPE[0], SHAPE[3])), atol=1e-6)


def test_mean_shift_ignores_channel_offset():
  images = random_images(seed=8)
  offset = np.array([0.1, -0.2, 0.3], dtype=np.float32)

  original = transforms.mean_shift(images)
  shifted = transforms.mean_shift(images + offset)

  np.testing.assert_allclose(shifted, original, atol=1e-6)


def test_mean_shift_image_matches_numpy():
  images = random_images(seed=6)
  expected = images - images.mean(axis=(1, 2, 3), keepdims=True)

  result = transforms.mean_shift(images, mean='image')

  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, atol=1e-6)


def test_mean_shift_image_ignores_global_offset():
  images = random_images(seed=8)

  original = transforms.mean_shift(images, mean='image')
  shifted = transforms.mean_shift(images + np.float32(0.25), mean='image')
  channel_offset = np.array([0.1, -0.2, 0.3], dtype=np.float32)
  cast = transforms.mean_shift(images + channel_offset, mean='image')

  np.testing.assert_allclose(shifted, original, atol=1e-6)
  assert not np.allclose(cast, original, atol=1e-3)


def test_mean_shift_unknown_mean_raises():
  with pytest.raises(ValueError, match=r"'channel', 'image'"):
    transforms.mean_shift(random_images(), mean='pixel')


# scipy.ndimage filters for each kernel, as (d/dy, d/dx) or (laplacian,) on
# one 2-D plane with a scipy border mode. The Scharr kernel is written out
# from its definition: the difference [-1, 0, 1] times the smoothing
# [3, 10, 3] across it.
SCHARR_Y = np.outer([-1.0, 0.0, 1.0], [3.0, 10.0, 3.0])
SCIPY_EDGE_FILTERS = {
  'sobel': (
    lambda plane, mode: scipy.ndimage.sobel(plane, axis=0, mode=mode),
    lambda plane, mode: scipy.ndimage.sobel(plane, axis=1, mode=mode),
  ),
  'prewitt': (
    lambda plane, mode: scipy.ndimage.prewitt(plane, axis=0, mode=mode),
    lambda plane, mode: scipy.ndimage.prewitt(plane, axis=1, mode=mode),
  ),
  'scharr': (
    lambda plane, mode: scipy.ndimage.correlate(plane, SCHARR_Y, mode=mode),
    lambda plane, mode: scipy.ndimage.correlate(plane, SCHARR_Y.T, mode=mode),
  ),
  'central': (
    lambda plane, mode: scipy.ndimage.correlate1d(
      plane, [-0.5, 0.0, 0.5], axis=0, mode=mode
    ),
    lambda plane, mode: scipy.ndimage.correlate1d(
      plane, [-0.5, 0.0, 0.5], axis=1, mode=mode
    ),
  ),
  'laplacian': (lambda plane, mode: scipy.ndimage.laplace(plane, mode=mode),),
}
SCIPY_MODES = {'reflect': 'reflect', 'replicate': 'nearest', 'zero': 'constant'}


def scipy_edge_components(images, kernel, padding):
  filters = SCIPY_EDGE_FILTERS[kernel]
  mode = SCIPY_MODES[padding]
  batch, height, width, channels = images.shape
  count = len(filters)
  expected = np.zeros((batch, height, width, count * channels))
  for b in range(batch):
    for c in range(channels):
      plane = np.float64(images[b, :, :, c])
      for k, edge_filter in enumerate(filters):
        expected[b, :, :, count * c + k] = edge_filter(plane, mode)
  return expected


@pytest.mark.parametrize('padding', transforms.EDGE_PADDINGS)
@pytest.mark.parametrize('kernel', transforms.EDGE_KERNELS)
def test_edge_map_matches_scipy(kernel, padding):
  images = random_images(seed=11)

  result = transforms.edge_map(images, kernel=kernel, padding=padding)

  expected = scipy_edge_components(images, kernel, padding)
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize('kernel', transforms.EDGE_KERNELS)
def test_edge_map_magnitude_matches_components(kernel):
  images = random_images(seed=12)
  count = len(SCIPY_EDGE_FILTERS[kernel])

  result = transforms.edge_map(
    images, kernel=kernel, output='magnitude', epsilon=1e-4
  )

  components = scipy_edge_components(images, kernel, 'reflect')
  squared = components.reshape(*SHAPE, count) ** 2
  expected = np.sqrt(squared.sum(axis=-1) + 1e-4)
  assert result.shape == SHAPE
  np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_edge_map_sobel_default_is_sobel():
  images = random_images(seed=13)

  for output in transforms.EDGE_OUTPUTS:
    np.testing.assert_array_equal(
      transforms.edge_map(images, output=output),
      transforms.sobel(images, output=output),
      err_msg=output,
    )


@pytest.mark.parametrize('kernel', transforms.EDGE_KERNELS)
def test_edge_map_magnitude_gradient_finite_on_flat(kernel):
  images = jnp.full(SHAPE, 0.5, jnp.float32)

  def total(x):
    return transforms.edge_map(x, kernel=kernel, output='magnitude').sum()

  gradient = jax.grad(total)(images)

  assert np.all(np.isfinite(gradient))


@pytest.mark.parametrize(
  ('option', 'value', 'choices'),
  [
    ('kernel', 'canny', "'sobel', 'scharr', 'prewitt', 'laplacian', 'central'"),
    ('padding', 'wrap', "'reflect', 'replicate', 'zero'"),
    ('output', 'angle', "'components', 'magnitude'"),
  ],
)
def test_edge_map_unknown_option_raises(option, value, choices):
  with pytest.raises(ValueError, match=rf'edge_map: {option}') as raised:
    transforms.edge_map(random_images(), **{option: value})
  assert choices in str(raised.value)


def test_standardize_matches_numpy():
  images = random_images(seed=14)

  result = transforms.standardize(images, epsilon=1e-6)

  planes = np.float64(images)
  mean = planes.mean(axis=(1, 2), keepdims=True)
  std = planes.std(axis=(1, 2), keepdims=True)
  expected = (planes - mean) / np.sqrt(std**2 + 1e-6)
  np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def test_standardize_ignores_brightness_and_contrast():
  images = random_images(seed=15)
  scales = np.array([0.5, 2.0, 0.25], dtype=np.float32)
  offsets = np.array([0.1, -0.7, 0.3], dtype=np.float32)

  original = transforms.standardize(images)
  changed = transforms.standardize(scales * images + offsets)

  np.testing.assert_allclose(changed, original, atol=1e-3)


def test_standardize_flat_image_is_zero_with_finite_gradient():
  images = jnp.full(SHAPE, 0.3, jnp.float32)

  result = transforms.standardize(images)
  gradient = jax.grad(lambda x: transforms.standardize(x).sum())(images)

  # The float32 mean of 0.3 is off by a few 1e-8, and dividing by
  # sqrt(epsilon) = 1e-3 scales that rounding error up to about 1e-4.
  np.testing.assert_allclose(result, 0.0, atol=1e-3)
  assert np.all(np.isfinite(gradient))


def test_standardize_nonpositive_epsilon_raises():
  with pytest.raises(ValueError, match=r'epsilon must be positive'):
    transforms.standardize(random_images(), epsilon=0.0)


@pytest.mark.parametrize('shape', [SHAPE, (1, 8, 8, 1)])
def test_fourier_amplitude_matches_numpy(shape):
  images = random_images(seed=16, shape=shape)

  result = transforms.fourier_amplitude(images)

  spectrum = np.fft.fft2(np.float64(images), axes=(1, 2), norm='ortho')
  assert result.shape == shape
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, np.abs(spectrum), atol=1e-5)


def test_fourier_amplitude_ignores_circular_shift():
  images = random_images(seed=17)

  original = transforms.fourier_amplitude(images)
  shifted = transforms.fourier_amplitude(np.roll(images, (2, 3), axis=(1, 2)))

  np.testing.assert_allclose(shifted, original, atol=1e-5)


def test_fourier_amplitude_gradient_finite_on_flat():
  images = jnp.full(SHAPE, 0.5, jnp.float32)

  gradient = jax.grad(lambda x: transforms.fourier_amplitude(x).sum())(images)

  assert np.all(np.isfinite(gradient))


PUBLIC_CALLS = {
  'fourier_amplitude': (transforms.fourier_amplitude, {}),
  'edge_map_scharr_replicate': (
    transforms.edge_map,
    {'kernel': 'scharr', 'padding': 'replicate'},
  ),
  'edge_map_laplacian_magnitude': (
    transforms.edge_map,
    {'kernel': 'laplacian', 'output': 'magnitude', 'padding': 'zero'},
  ),
  'standardize': (transforms.standardize, {}),
  'sobel_components': (transforms.sobel, {'output': 'components'}),
  'sobel_magnitude': (transforms.sobel, {'output': 'magnitude'}),
  'mean_shift': (transforms.mean_shift, {}),
  'gram_none': (transforms.gram, {'normalization': 'none'}),
  'gram_chw': (transforms.gram, {'normalization': 'chw'}),
}


@pytest.mark.parametrize('name', sorted(PUBLIC_CALLS))
def test_jit_matches_eager(name):
  function, options = PUBLIC_CALLS[name]
  images = random_images(seed=9)

  compiled = function(images, **options)
  with jax.disable_jit():
    eager = function(images, **options)

  np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', sorted(PUBLIC_CALLS))
def test_bfloat16_input_gives_float32(name):
  function, options = PUBLIC_CALLS[name]
  images = jnp.asarray(random_images(seed=10), dtype=jnp.bfloat16)

  result = function(images, **options)
  expected = function(np.float32(images), **options)

  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', sorted(PUBLIC_CALLS))
def test_non_nhwc_input_raises(name):
  function, options = PUBLIC_CALLS[name]

  with pytest.raises(ValueError, match=r'NHWC.*\(5, 7, 3\)'):
    function(np.zeros((5, 7, 3), dtype=np.float32), **options)
