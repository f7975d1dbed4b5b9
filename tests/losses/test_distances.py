"""Tests for losses.distances.

Golden sources: direct NumPy float64 formulas for every distance and for
binary cross-entropy, scipy.special.pseudo_huber (SciPy 1.17) for the
Charbonnier loss, and skimage.metrics.peak_signal_noise_ratio (scikit-image
0.26) for PSNR.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from skimage.metrics import peak_signal_noise_ratio

from losses import distances

SHAPE = (3, 5, 6, 2)


def random_pair(seed=0, shape=SHAPE):
  rng = np.random.default_rng(seed)
  a = rng.random(shape).astype(np.float32)
  b = rng.random(shape).astype(np.float32)
  return a, b


def mean_per_example(values):
  return values.reshape(values.shape[0], -1).mean(axis=1)


def numpy_huber(a, b, delta):
  difference = np.float64(a) - np.float64(b)
  absolute = np.abs(difference)
  elementwise = np.where(
    absolute <= delta,
    0.5 * difference**2,
    delta * (absolute - 0.5 * delta),
  )
  return mean_per_example(elementwise)


def numpy_charbonnier(a, b, epsilon):
  difference = np.float64(a) - np.float64(b)
  return mean_per_example(np.sqrt(difference**2 + epsilon**2) - epsilon)


def numpy_log_cosh(a, b):
  return mean_per_example(np.log(np.cosh(np.float64(a) - np.float64(b))))


def numpy_robust(a, b, alpha, scale):
  """Transcribe Barron's loss, with its limits at alpha = 0, 2 and -inf."""
  squared = ((np.float64(a) - np.float64(b)) / scale) ** 2
  if alpha == 2:
    elementwise = squared / 2
  elif alpha == 0:
    elementwise = np.log(squared / 2 + 1)
  elif alpha == -np.inf:
    elementwise = 1 - np.exp(-squared / 2)
  else:
    shift = abs(alpha - 2)
    elementwise = shift / alpha * ((squared / shift + 1) ** (alpha / 2) - 1)
  return mean_per_example(elementwise)


NUMPY_DISTANCES = {
  'mse': lambda a, b: mean_per_example((np.float64(a) - b) ** 2),
  'mae': lambda a, b: mean_per_example(np.abs(np.float64(a) - b)),
  'rmse': lambda a, b: np.sqrt(mean_per_example((np.float64(a) - b) ** 2)),
  'huber': lambda a, b: numpy_huber(a, b, delta=1.0),
  'charbonnier': lambda a, b: numpy_charbonnier(a, b, epsilon=1e-3),
  'log_cosh': numpy_log_cosh,
  'robust': lambda a, b: numpy_robust(a, b, alpha=1.0, scale=0.1),
}

# Each public function with arguments that exercise it.
PUBLIC_CALLS = {
  'mse': (distances.mse, {}),
  'mae': (distances.mae, {}),
  'rmse': (distances.rmse, {}),
  'huber': (distances.huber, {'delta': 0.3}),
  'charbonnier': (distances.charbonnier, {'epsilon': 0.01}),
  'log_cosh': (distances.log_cosh, {}),
  'robust': (distances.robust, {'alpha': -0.5, 'scale': 0.2}),
  'bce_with_logits': (distances.bce_with_logits, {}),
  'psnr': (distances.psnr, {'data_range': 1.0}),
}


def test_registry_lists_image_distances():
  assert set(distances.DISTANCES) == {
    'mse',
    'mae',
    'rmse',
    'huber',
    'charbonnier',
    'log_cosh',
    'robust',
  }


@pytest.mark.parametrize('name', sorted(NUMPY_DISTANCES))
def test_distance_matches_numpy(name):
  a, b = random_pair()

  result = distances.DISTANCES[name](a, b)

  assert result.shape == (SHAPE[0],)
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, NUMPY_DISTANCES[name](a, b), rtol=1e-5)


@pytest.mark.parametrize('delta', [0.05, 0.3, 2.0])
def test_huber_matches_numpy_for_delta(delta):
  # Differences of a and b lie in (-1, 1), so 0.3 mixes both branches,
  # 0.05 is mostly linear and 2.0 is entirely quadratic.
  a, b = random_pair(seed=1)

  result = distances.huber(a, b, delta=delta)

  np.testing.assert_allclose(result, numpy_huber(a, b, delta), rtol=1e-5)


@pytest.mark.parametrize('epsilon', [1e-3, 0.1, 1.0])
def test_charbonnier_matches_numpy_for_epsilon(epsilon):
  a, b = random_pair(seed=2)

  result = distances.charbonnier(a, b, epsilon=epsilon)

  np.testing.assert_allclose(
    result, numpy_charbonnier(a, b, epsilon), rtol=1e-5
  )


def test_charbonnier_matches_pseudo_huber():
  # scipy.special.pseudo_huber(e, d) = e^2 * (sqrt(1 + (d / e)^2) - 1), which
  # is epsilon times the elementwise Charbonnier term.
  a, b = random_pair(seed=12)
  epsilon = 0.05
  elementwise = scipy.special.pseudo_huber(epsilon, np.float64(a) - b)

  result = distances.charbonnier(a, b, epsilon=epsilon)

  expected = mean_per_example(elementwise) / epsilon
  np.testing.assert_allclose(result, expected, rtol=1e-5)


@pytest.mark.parametrize('name', sorted(NUMPY_DISTANCES))
def test_distance_zero_when_equal(name):
  a, _ = random_pair()

  result = distances.DISTANCES[name](a, a)

  np.testing.assert_array_equal(result, np.zeros(SHAPE[0]))


@pytest.mark.parametrize('name', sorted(NUMPY_DISTANCES))
def test_distance_gradient_finite_when_equal(name):
  a, _ = random_pair()

  def summed(first, second):
    return distances.DISTANCES[name](first, second).sum()

  gradient = jax.grad(summed)(jnp.asarray(a), jnp.asarray(a))

  assert np.all(np.isfinite(gradient))
  np.testing.assert_array_equal(gradient, np.zeros(SHAPE))


def test_rmse_gradient_matches_formula():
  # d/da sqrt(mean(d^2)) = d / (N * rmse) with d = a - b and N elements.
  a, b = random_pair(seed=3)
  difference = np.float64(a) - b
  size = np.prod(SHAPE[1:])
  root = np.sqrt(mean_per_example(difference**2))
  expected = difference / (size * root[:, None, None, None])

  gradient = jax.grad(lambda x: distances.rmse(x, b).sum())(jnp.asarray(a))

  np.testing.assert_allclose(gradient, expected, rtol=1e-4)


def test_rmse_one_equal_example_keeps_others():
  a, b = random_pair(seed=4)
  b[1] = a[1]

  gradient = jax.grad(lambda x: distances.rmse(x, b).sum())(jnp.asarray(a))

  assert np.all(np.isfinite(gradient))
  np.testing.assert_array_equal(gradient[1], np.zeros(SHAPE[1:]))
  assert np.abs(gradient[0]).max() > 0
  assert np.abs(gradient[2]).max() > 0


def numpy_bce(logits, targets):
  logits = np.float64(logits)
  probabilities = 1.0 / (1.0 + np.exp(-logits))
  elementwise = -(
    targets * np.log(probabilities)
    + (1.0 - targets) * np.log(1.0 - probabilities)
  )
  return mean_per_example(elementwise)


def test_bce_matches_numpy_soft_targets():
  rng = np.random.default_rng(5)
  logits = (3.0 * rng.standard_normal(SHAPE)).astype(np.float32)
  targets = rng.random(SHAPE).astype(np.float32)

  result = distances.bce_with_logits(logits, targets)

  assert result.shape == (SHAPE[0],)
  np.testing.assert_allclose(result, numpy_bce(logits, targets), rtol=1e-5)


def test_bce_minimum_is_target_entropy():
  targets = np.full((2, 3, 3, 1), 0.25, dtype=np.float32)
  logits = np.log(targets / (1.0 - targets))
  entropy = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))

  result = distances.bce_with_logits(logits, targets)

  np.testing.assert_allclose(result, np.full(2, entropy), rtol=1e-6)


def test_bce_gradient_at_zero_logit():
  # The derivative is sigmoid(z) - t, which is 0.5 - t at z == 0.
  targets = np.linspace(0.0, 1.0, 8, dtype=np.float32).reshape(2, 2, 2, 1)
  logits = jnp.zeros(targets.shape)

  def summed(z):
    return distances.bce_with_logits(z, targets).sum()

  gradient = jax.grad(summed)(logits)

  np.testing.assert_allclose(gradient, (0.5 - targets) / 4, atol=1e-7)


def test_bce_finite_for_large_logits():
  logits = jnp.array([-1e4, -100.0, 100.0, 1e4]).reshape(1, 2, 2, 1)
  targets = jnp.array([0.0, 1.0, 0.0, 1.0]).reshape(1, 2, 2, 1)

  def summed(z):
    return distances.bce_with_logits(z, targets).sum()

  value, gradient = jax.value_and_grad(summed)(logits)

  np.testing.assert_allclose(value, (0.0 + 100.0 + 100.0 + 0.0) / 4)
  assert np.all(np.isfinite(gradient))


def test_psnr_matches_skimage():
  a, b = random_pair(seed=6)

  result = distances.psnr(a, b, data_range=1.0)

  expected = [
    peak_signal_noise_ratio(a[index], b[index], data_range=1.0)
    for index in range(SHAPE[0])
  ]
  assert result.shape == (SHAPE[0],)
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_psnr_matches_skimage_data_range():
  a, b = random_pair(seed=7)
  a = 255.0 * a
  b = 255.0 * b

  result = distances.psnr(a, b, data_range=255.0)

  expected = [
    peak_signal_noise_ratio(a[index], b[index], data_range=255.0)
    for index in range(SHAPE[0])
  ]
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_psnr_infinite_when_equal():
  a, b = random_pair(seed=8)
  b[0] = a[0]

  result = distances.psnr(a, b)

  assert result[0] == np.inf
  assert np.all(np.isfinite(result[1:]))


@pytest.mark.parametrize('name', sorted(PUBLIC_CALLS))
def test_jit_matches_eager(name):
  function, options = PUBLIC_CALLS[name]
  a, b = random_pair(seed=9)

  compiled = function(a, b, **options)
  with jax.disable_jit():
    eager = function(a, b, **options)

  np.testing.assert_allclose(compiled, eager, rtol=1e-6)


@pytest.mark.parametrize('name', sorted(PUBLIC_CALLS))
def test_bfloat16_input_gives_float32(name):
  function, options = PUBLIC_CALLS[name]
  a, b = random_pair(seed=10)
  a16 = jnp.asarray(a, dtype=jnp.bfloat16)
  b16 = jnp.asarray(b, dtype=jnp.bfloat16)

  result = function(a16, b16, **options)
  expected = function(np.float32(a16), np.float32(b16), **options)

  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, rtol=1e-6)


@pytest.mark.parametrize('name', sorted(PUBLIC_CALLS))
def test_shape_mismatch_raises(name):
  function, options = PUBLIC_CALLS[name]
  a = np.zeros((2, 4, 4, 1), dtype=np.float32)
  b = np.zeros((2, 4, 4, 3), dtype=np.float32)

  with pytest.raises(ValueError, match=r'\(2, 4, 4, 1\) and \(2, 4, 4, 3\)'):
    function(a, b, **options)


@pytest.mark.parametrize('name', sorted(PUBLIC_CALLS))
def test_scalar_input_raises(name):
  function, options = PUBLIC_CALLS[name]

  with pytest.raises(ValueError, match=r'batch axis'):
    function(np.float32(0.5), np.float32(0.25), **options)


@pytest.mark.parametrize(
  ('function', 'option'),
  [
    (distances.huber, 'delta'),
    (distances.charbonnier, 'epsilon'),
    (distances.robust, 'scale'),
    (distances.psnr, 'data_range'),
  ],
)
@pytest.mark.parametrize('value', [0.0, -1.0])
def test_nonpositive_option_raises(function, option, value):
  a, b = random_pair()

  with pytest.raises(ValueError, match=rf'{option} must be positive'):
    function(a, b, **{option: value})


def test_mae_gradient_is_sign():
  a, b = random_pair(seed=11)
  b[0, 0, 0, 0] = a[0, 0, 0, 0]
  size = np.prod(SHAPE[1:])
  expected = np.sign(np.float64(a) - b) / size

  gradient = jax.grad(lambda x: distances.mae(x, b).sum())(jnp.asarray(a))

  assert gradient[0, 0, 0, 0] == 0.0
  np.testing.assert_allclose(gradient, expected, rtol=1e-6)


def test_log_cosh_small_and_large_differences():
  a = np.array([[0.0, 0.0, 0.0]], np.float32)
  b = np.array([[1e-3, 30.0, -100.0]], np.float32)

  result = distances.log_cosh(a, b)

  expected = (0.5e-6 + (30.0 - np.log(2.0)) + (100.0 - np.log(2.0))) / 3
  np.testing.assert_allclose(result, [expected], rtol=1e-6)


def test_log_cosh_gradient_is_tanh():
  a, b = random_pair(seed=12)
  b[0, 0, 0, 0] = a[0, 0, 0, 0]
  size = np.prod(SHAPE[1:])
  expected = np.tanh(np.float64(a) - b) / size

  gradient = jax.grad(lambda x: distances.log_cosh(x, b).sum())(jnp.asarray(a))

  assert gradient[0, 0, 0, 0] == 0.0
  np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-9)


ALPHAS = [2.0, 1.0, 0.5, 1e-4, 0.0, -1e-4, -2.0, -10.0, -np.inf, 3.0]


@pytest.mark.parametrize(
  ('alpha', 'scale'), [(alpha, 0.05) for alpha in ALPHAS] + [(-2.0, 1.0)]
)
def test_robust_matches_numpy(alpha, scale):
  a, b = random_pair(seed=13)

  result = distances.robust(a, b, alpha=alpha, scale=scale)

  expected = numpy_robust(a, b, alpha=alpha, scale=scale)
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_robust_special_cases():
  a, b = random_pair(seed=14)
  difference = np.float64(a) - b

  np.testing.assert_allclose(
    distances.robust(a, b, alpha=2.0, scale=1.0),
    0.5 * mean_per_example(difference**2),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    distances.robust(a, b, alpha=1.0, scale=0.3),
    numpy_charbonnier(a / 0.3, b / 0.3, epsilon=1.0),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    distances.robust(a, b, alpha=1e-6, scale=0.5),
    distances.robust(a, b, alpha=0.0, scale=0.5),
    rtol=1e-5,
  )


@pytest.mark.parametrize('alpha', ALPHAS)
def test_robust_gradient_finite_when_equal(alpha):
  a, _ = random_pair(seed=15)

  def loss(x):
    return distances.robust(x, a, alpha=alpha, scale=0.1).sum()

  gradient = jax.grad(loss)(jnp.asarray(a))

  np.testing.assert_array_equal(gradient, np.zeros(SHAPE))


@pytest.mark.parametrize('alpha', [float('nan'), float('inf')])
def test_robust_invalid_alpha_raises(alpha):
  a, b = random_pair()

  with pytest.raises(ValueError, match=r'alpha must be a real number or -inf'):
    distances.robust(a, b, alpha=alpha)


def random_weights(seed=0, shape=(SHAPE[0], SHAPE[1], SHAPE[2], 1)):
  """Return integer weights in {0, 1, 2}, each example with some weight."""
  rng = np.random.default_rng(seed)
  weights = rng.integers(0, 3, shape).astype(np.float32)
  weights[:, 0, 0] = 1.0
  return weights


@pytest.mark.parametrize('name', sorted(NUMPY_DISTANCES))
@pytest.mark.parametrize('channels', [1, SHAPE[3]])
def test_weighted_distance_matches_numpy(name, channels):
  a, b = random_pair(seed=3)
  weights = random_weights(shape=(*SHAPE[:3], channels))

  result = distances.DISTANCES[name](a, b, weights=jnp.asarray(weights))

  # An integer weight w counts its element w times in an unweighted mean.
  counts = np.broadcast_to(weights, SHAPE).astype(int)
  expected = []
  for i in range(SHAPE[0]):
    repeated_a = np.repeat(a[i].ravel(), counts[i].ravel())[None]
    repeated_b = np.repeat(b[i].ravel(), counts[i].ravel())[None]
    expected.append(NUMPY_DISTANCES[name](repeated_a, repeated_b)[0])
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, rtol=1e-5)


@pytest.mark.parametrize('name', sorted(NUMPY_DISTANCES))
def test_weights_of_ones_match_unweighted(name):
  a, b = random_pair(seed=4)
  ones = jnp.ones((*SHAPE[:3], 1), jnp.float32)

  weighted = distances.DISTANCES[name](a, b, weights=ones)

  np.testing.assert_allclose(weighted, distances.DISTANCES[name](a, b), 1e-6)


def test_weighted_bce_matches_numpy():
  logits, targets = random_pair(seed=5)
  logits = 4.0 * logits - 2.0
  weights = random_weights(seed=1)

  result = distances.bce_with_logits(logits, targets, weights=weights)

  elementwise = np.logaddexp(0.0, np.float64(logits)) - logits * targets
  full_weights = np.broadcast_to(weights, SHAPE)
  expected = (full_weights * elementwise).sum(axis=(1, 2, 3)) / (
    full_weights.sum(axis=(1, 2, 3))
  )
  np.testing.assert_allclose(result, expected, rtol=1e-5)


@pytest.mark.parametrize('name', sorted(NUMPY_DISTANCES))
def test_zero_weights_give_zero_and_finite_gradient(name):
  a, b = random_pair(seed=6)
  weights = np.ones((*SHAPE[:3], 1), np.float32)
  weights[0] = 0.0
  distance = distances.DISTANCES[name]

  result = distance(a, b, weights=weights)
  gradient = jax.grad(lambda x: jnp.sum(distance(a, x, weights=weights)))(b)

  assert result[0] == 0.0
  assert np.all(np.asarray(result[1:]) > 0)
  assert np.all(np.isfinite(gradient))
  assert np.all(np.asarray(gradient[0]) == 0.0)


@pytest.mark.parametrize(
  'shape',
  [(SHAPE[0], SHAPE[1], SHAPE[2]), (SHAPE[0], SHAPE[1], 3, 1), (1, *SHAPE[1:])],
)
def test_weights_shape_mismatch_raises(shape):
  a, b = random_pair()

  with pytest.raises(ValueError, match=r'mse: weights must have the rank'):
    distances.mse(a, b, weights=jnp.ones(shape))


def numpy_focal_frequency(a, b, alpha):
  """Transcribe the focal frequency loss in NumPy float64."""
  spectrum_a = np.fft.fft2(np.float64(a), axes=(1, 2), norm='ortho')
  spectrum_b = np.fft.fft2(np.float64(b), axes=(1, 2), norm='ortho')
  error = np.abs(spectrum_a - spectrum_b) ** 2
  weight = np.sqrt(error) ** alpha
  weight = weight / weight.max(axis=(1, 2, 3), keepdims=True)
  return (weight * error).mean(axis=(1, 2, 3))


@pytest.mark.parametrize('alpha', [1.0, 0.5, 2.0])
def test_focal_frequency_matches_numpy(alpha):
  a, b = random_pair(seed=7)

  result = distances.focal_frequency(a, b, alpha=alpha)

  assert result.dtype == jnp.float32
  expected = numpy_focal_frequency(a, b, alpha)
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_focal_frequency_gradient_holds_weight_fixed():
  a, b = random_pair(seed=8)

  gradient = jax.grad(lambda x: jnp.sum(distances.focal_frequency(a, x)))(b)

  # With the weight constant, the gradient of mean(w * |F(a - b)|^2) is
  # -2 / N * IFFT2(w * F(a - b)), taken here with NumPy's orthonormal FFT.
  spectrum = np.fft.fft2(np.float64(a) - b, axes=(1, 2), norm='ortho')
  weight = np.abs(spectrum)
  weight = weight / weight.max(axis=(1, 2, 3), keepdims=True)
  weighted = np.fft.ifft2(weight * spectrum, axes=(1, 2), norm='ortho')
  expected = -2.0 * weighted.real / np.prod(SHAPE[1:])
  np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-7)


def test_focal_frequency_zero_with_finite_gradient_when_equal():
  a, _ = random_pair(seed=9)

  result = distances.focal_frequency(a, a)
  gradient = jax.grad(lambda x: jnp.sum(distances.focal_frequency(a, x)))(a)

  np.testing.assert_array_equal(result, np.zeros(SHAPE[0]))
  assert np.all(np.isfinite(gradient))
  np.testing.assert_array_equal(gradient, np.zeros(SHAPE))


@pytest.mark.parametrize('alpha', [0.0, -1.0, float('inf')])
def test_focal_frequency_invalid_alpha_raises(alpha):
  a, b = random_pair()

  with pytest.raises(ValueError, match=r'alpha must be a positive finite'):
    distances.focal_frequency(a, b, alpha=alpha)


def test_focal_frequency_non_nhwc_raises():
  a, b = random_pair(shape=(3, 5, 6))

  with pytest.raises(ValueError, match=r'NHWC.*\(3, 5, 6\)'):
    distances.focal_frequency(a, b)
