"""Tests for losses.composite.

Golden sources: the single-term functions in losses.distances and
losses.transforms, checked against NumPy, SciPy and scikit-image in the
neighbouring test files, and the algebraic identities that each term must
satisfy (shift invariance, held-fixed encoder, weighted total).
"""

import logging

import jax
from jax import test_util as jax_test_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from losses import composite
from losses import distances
from losses import regularizers
from losses import structural
from losses import transforms

SHAPE = (2, 8, 8, 3)
DISTANCE_NAMES = ('mse', 'mae', 'rmse', 'huber', 'charbonnier')
# Newer distances run on the pixel term only in the slow per-term tests,
# because test_distances checks them on their own.
ALL_DISTANCE_NAMES = (*DISTANCE_NAMES, 'log_cosh', 'robust')


def make_params(seed=0):
  """Return weights of a two-stage stand-in encoder for SHAPE inputs."""
  rng = np.random.default_rng(seed)
  return {
    'first': jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32),
    'first_bias': jnp.asarray(rng.standard_normal(4), jnp.float32),
    'second': jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32),
  }


def convolve(inputs, kernel, stride):
  return jax.lax.conv_general_dilated(
    inputs,
    kernel,
    window_strides=(stride, stride),
    padding='SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


def encode_features(params, images):
  """Return two NHWC feature maps, 8x8x4 and 4x4x5, from fixed convolutions."""
  first = jnp.tanh(convolve(images, params['first'], 1) + params['first_bias'])
  second = jnp.tanh(convolve(first, params['second'], 2))
  return (first, second)


def make_config(**terms):
  return ml_collections.ConfigDict({'terms': terms})


def full_terms():
  return {
    'pixel': {'weight': 1.0, 'distance': 'mse'},
    'edge': {'weight': 0.0, 'distance': 'mae', 'output': 'components'},
    'mean_shift': {'weight': 0.0, 'distance': 'mse'},
    'gram': {
      'weight': 0.0,
      'distance': 'mse',
      'layers': (0, 1),
      'normalization': 'chw',
    },
    'tv': {'weight': 0.0},
    'standardized': {'weight': 0.0, 'distance': 'mae'},
    'fourier': {'weight': 0.0, 'distance': 'mse'},
    'features': {'weight': 0.0, 'distance': 'mae', 'layers': (1,)},
    'ssim': {'weight': 0.0, 'window_size': 5},
    'ms_ssim': {'weight': 0.0, 'window': 'uniform', 'window_size': 3},
    'focal_frequency': {'weight': 0.0, 'alpha': 1.0},
  }


def term_config(term, distance, **fields):
  """Return a config where only `term` is present, with weight 1."""
  settings = {'weight': 1.0, **fields}
  if distance is not None:
    settings['distance'] = distance
  if term in ('gram', 'features'):
    settings.setdefault('layers', (0, 1))
  return make_config(**{term: settings})


def random_batch(seed=0):
  """Return images in [0, 1] and logits whose sigmoid differs from them."""
  rng = np.random.default_rng(seed)
  images = rng.random(SHAPE).astype(np.float32)
  logits = (2.0 * rng.standard_normal(SHAPE)).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(logits)


def logit(probabilities):
  return np.log(probabilities / (1.0 - probabilities))


def constant_batch(value, logit_value):
  images = jnp.full(SHAPE, value, jnp.float32)
  logits = jnp.full(SHAPE, logit_value, jnp.float32)
  return images, logits


def matched_batch():
  """Return images equal to sigmoid(logits), so that x_hat == x."""
  _, logits = random_batch(seed=1)
  return jax.nn.sigmoid(logits), logits


# (images, logits) pairs where x_hat == x or the images are flat. Logits of
# -20 and 20 give reconstructions of about 2e-9 and exactly 1.0 in float32.
HARD_BATCHES = {
  'matched': matched_batch,
  'zeros': lambda: constant_batch(0.0, -20.0),
  'ones': lambda: constant_batch(1.0, 20.0),
  'halves': lambda: constant_batch(0.5, 0.0),
  'zeros_random_logits': lambda: (jnp.zeros(SHAPE), random_batch()[1]),
}

TERM_CASES = [
  ('pixel', distance, {}) for distance in (*ALL_DISTANCE_NAMES, 'bce')
]
TERM_CASES += [
  ('edge', distance, {'output': output})
  for distance in DISTANCE_NAMES
  for output in ('components', 'magnitude')
]
TERM_CASES += [('mean_shift', distance, {}) for distance in DISTANCE_NAMES]
TERM_CASES += [('gram', distance, {}) for distance in DISTANCE_NAMES]
TERM_CASES += [('features', distance, {}) for distance in ('mse', 'rmse')]
TERM_CASES += [('standardized', distance, {}) for distance in ('mse', 'rmse')]
TERM_CASES += [('fourier', distance, {}) for distance in ('mse', 'rmse')]
TERM_CASES += [
  ('edge', 'mse', {'kernel': 'scharr', 'padding': 'replicate'}),
  ('edge', 'rmse', {'kernel': 'laplacian', 'padding': 'zero'}),
  ('edge', 'mae', {'kernel': 'central', 'output': 'magnitude'}),
  ('mean_shift', 'mse', {'mean': 'image'}),
]


def case_id(case):
  term, distance, fields = case
  return '-'.join([term, distance, *fields.values()])


@pytest.mark.parametrize('case', TERM_CASES, ids=case_id)
def test_term_finite_on_hard_batches(case):
  term, distance, fields = case
  loss_fn = composite.make_loss(
    term_config(term, distance, **fields), encode_features=encode_features
  )
  params = make_params()

  def summed(logits, images):
    total, values = loss_fn(params, images, logits)
    return total.sum(), values

  value_and_grad = jax.jit(jax.value_and_grad(summed, has_aux=True))

  for batch_name, make_batch in HARD_BATCHES.items():
    images, logits = make_batch()
    (total, values), gradient = value_and_grad(logits, images)

    assert np.isfinite(total), batch_name
    assert np.all(np.isfinite(values[term])), batch_name
    assert np.all(np.isfinite(gradient)), batch_name


@pytest.mark.parametrize('distance', DISTANCE_NAMES)
def test_mean_shift_ignores_constant(distance):
  rng = np.random.default_rng(2)
  images = rng.uniform(0.2, 0.6, SHAPE).astype(np.float32)
  reconstructions = rng.uniform(0.2, 0.6, SHAPE).astype(np.float32)
  loss_fn = composite.make_loss(term_config('mean_shift', distance))

  base, _ = loss_fn(None, images, logit(reconstructions))
  offsets = {
    'scalar': np.float32(0.3),
    'per_channel': np.array([0.1, 0.3, -0.15], dtype=np.float32),
  }
  for offset_name, offset in offsets.items():
    shifted, _ = loss_fn(None, images + offset, logit(reconstructions + offset))
    np.testing.assert_allclose(
      shifted, base, rtol=1e-4, atol=1e-6, err_msg=offset_name
    )

  assert np.all(np.asarray(base) > 0)


@pytest.mark.parametrize(
  ('mean', 'offset'),
  [
    ('channel', np.array([0.1, 0.3, -0.15], dtype=np.float32)),
    ('image', np.float32(0.3)),
  ],
)
def test_mean_shift_mean_invariance(mean, offset):
  rng = np.random.default_rng(3)
  images = rng.uniform(0.2, 0.6, SHAPE).astype(np.float32)
  reconstructions = rng.uniform(0.2, 0.6, SHAPE).astype(np.float32)
  loss_fn = composite.make_loss(term_config('mean_shift', 'mse', mean=mean))

  base, _ = loss_fn(None, images, logit(reconstructions))
  shifted, _ = loss_fn(None, images + offset, logit(reconstructions + offset))

  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('mean', ['channel', 'image'])
def test_mean_shift_term_matches_numpy(mean):
  images, logits = random_batch(seed=4)
  loss_fn = composite.make_loss(term_config('mean_shift', 'mse', mean=mean))

  _, values = loss_fn(None, images, logits)

  axes = (1, 2) if mean == 'channel' else (1, 2, 3)
  target = np.asarray(images, np.float64)
  output = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  target = target - target.mean(axis=axes, keepdims=True)
  output = output - output.mean(axis=axes, keepdims=True)
  expected = np.mean(np.square(target - output), axis=(1, 2, 3))
  np.testing.assert_allclose(values['mean_shift'], expected, rtol=1e-5)


def test_mean_shift_image_sees_channel_offset():
  rng = np.random.default_rng(5)
  images = rng.uniform(0.3, 0.7, SHAPE).astype(np.float32)
  offset = np.array([0.2, -0.2, 0.0], dtype=np.float32)
  values = {}
  for mean in ('channel', 'image'):
    loss_fn = composite.make_loss(term_config('mean_shift', 'mse', mean=mean))
    _, terms = loss_fn(None, images, logit(images + offset))
    values[mean] = np.asarray(terms['mean_shift'])

  assert np.all(values['channel'] < 1e-8)
  assert np.all(values['image'] > 1e-2)


def test_gram_holds_encoder_fixed():
  images, logits = random_batch(seed=3)
  params = make_params()
  loss_fn = composite.make_loss(
    term_config('gram', 'mse'), encode_features=encode_features
  )

  def summed(params, images, logits):
    return loss_fn(params, images, logits)[0].sum()

  params_gradient, images_gradient, logits_gradient = jax.grad(
    summed, argnums=(0, 1, 2)
  )(params, images, logits)

  for name, leaf in params_gradient.items():
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf), err_msg=name)
  np.testing.assert_array_equal(images_gradient, np.zeros(SHAPE))
  assert np.abs(np.asarray(logits_gradient)).max() > 0


def test_gram_value_is_layer_mean():
  images, logits = random_batch(seed=4)
  params = make_params()
  config = term_config('gram', 'mse', layers=(0, 1), normalization='hw')
  loss_fn = composite.make_loss(config, encode_features=encode_features)

  _, values = loss_fn(params, images, logits)

  reconstructions = jax.nn.sigmoid(logits)
  per_layer = []
  for target, output in zip(
    encode_features(params, images),
    encode_features(params, reconstructions),
    strict=True,
  ):
    target_gram = transforms.gram(target, normalization='hw')
    output_gram = transforms.gram(output, normalization='hw')
    per_layer.append(distances.mse(target_gram, output_gram))
  np.testing.assert_allclose(values['gram'], np.mean(per_layer, axis=0))


def test_gram_layer_beyond_features_raises():
  images, logits = random_batch()
  config = term_config('gram', 'mse', layers=(0, 2))
  loss_fn = composite.make_loss(config, encode_features=encode_features)

  with pytest.raises(ValueError, match=r'loss\.terms\.gram\.layers.*2 feature'):
    loss_fn(make_params(), images, logits)


def test_gram_without_encoder_raises():
  config = term_config('gram', 'mse')

  with pytest.raises(ValueError, match=r'encode_features is None'):
    composite.make_loss(config)


def test_features_holds_network_fixed():
  images, logits = random_batch(seed=3)
  params = make_params()
  loss_fn = composite.make_loss(
    term_config('features', 'mse'), encode_features=encode_features
  )

  def summed(params, logits):
    return loss_fn(params, images, logits)[0].sum()

  params_gradient, logits_gradient = jax.grad(summed, argnums=(0, 1))(
    params, logits
  )

  for name, leaf in params_gradient.items():
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf), err_msg=name)
  assert np.abs(np.asarray(logits_gradient)).max() > 0


def test_features_value_is_layer_mean():
  images, logits = random_batch(seed=4)
  params = make_params()
  config = term_config('features', 'mae', layers=(1, 0))
  loss_fn = composite.make_loss(config, encode_features=encode_features)

  _, values = loss_fn(params, images, logits)

  reconstructions = jax.nn.sigmoid(logits)
  targets = encode_features(params, images)
  outputs = encode_features(params, reconstructions)
  expected = np.mean(
    [distances.mae(targets[i], outputs[i]) for i in (1, 0)], axis=0
  )
  np.testing.assert_allclose(values['features'], expected, rtol=1e-6)


def test_feature_networks_chosen_per_term():
  images, logits = random_batch(seed=5)
  params = make_params()

  def first_map_only(params, images):
    return encode_features(params, images)[:1]

  config = make_config(
    gram={'weight': 1.0, 'distance': 'mse', 'layers': (1,)},
    features={'weight': 1.0, 'distance': 'mse', 'layers': (0,)},
  )
  loss_fn = composite.make_loss(
    config,
    encode_features=encode_features,
    feature_networks={'features': first_map_only},
  )
  _, values = loss_fn(params, images, logits)

  reconstructions = jax.nn.sigmoid(logits)
  expected_gram = distances.mse(
    transforms.gram(encode_features(params, images)[1]),
    transforms.gram(encode_features(params, reconstructions)[1]),
  )
  expected_features = distances.mse(
    first_map_only(params, images)[0],
    first_map_only(params, reconstructions)[0],
  )
  np.testing.assert_allclose(values['gram'], expected_gram, rtol=1e-6)
  np.testing.assert_allclose(values['features'], expected_features, rtol=1e-6)


def test_features_layer_beyond_network_raises():
  images, logits = random_batch()
  config = term_config('features', 'mse', layers=(3,))
  loss_fn = composite.make_loss(config, encode_features=encode_features)

  with pytest.raises(
    ValueError, match=r'loss\.terms\.features\.layers.*2 feature'
  ):
    loss_fn(make_params(), images, logits)


def test_features_without_network_raises():
  config = term_config('features', 'mse')

  with pytest.raises(ValueError, match=r"no 'features' entry"):
    composite.make_loss(config, feature_networks={'gram': encode_features})


def test_gram_weight_zero_needs_no_encoder():
  images, logits = random_batch()
  loss_fn = composite.make_loss(make_config(**full_terms()))

  _, values = loss_fn(None, images, logits)

  assert set(values) == {'pixel'}


def test_pixel_bce_reads_logits():
  images, logits = random_batch(seed=5)
  loss_fn = composite.make_loss(term_config('pixel', 'bce'))

  _, values = loss_fn(None, images, logits)

  expected = distances.bce_with_logits(logits, images)
  np.testing.assert_allclose(values['pixel'], expected, rtol=1e-6)


def test_pixel_compares_sigmoid_of_logits():
  images, logits = random_batch(seed=6)
  loss_fn = composite.make_loss(term_config('pixel', 'mae'))

  _, values = loss_fn(None, images, logits)

  expected = distances.mae(images, jax.nn.sigmoid(logits))
  np.testing.assert_allclose(values['pixel'], expected, rtol=1e-6)


def test_edge_matches_direct_sobel():
  images, logits = random_batch(seed=7)
  config = term_config('edge', 'mse', output='magnitude')
  loss_fn = composite.make_loss(config)

  _, values = loss_fn(None, images, logits)

  target = transforms.sobel(images, output='magnitude')
  output = transforms.sobel(jax.nn.sigmoid(logits), output='magnitude')
  expected = distances.mse(target, output)
  np.testing.assert_allclose(values['edge'], expected, rtol=1e-6)


def test_default_config_distance_options_override():
  config = default.get_config()
  for name, term in config.loss.terms.items():
    if 'distance' in term:
      assert term.delta == 1.0, name
      assert term.epsilon == 1e-3, name
      assert term.alpha == 1.0, name
      assert term.scale == 0.1, name

  config.loss.terms.pixel.distance = 'huber'
  config.loss.terms.pixel.delta = 0.5
  config.loss.terms.edge.weight = 0.0
  images, logits = random_batch(seed=8)
  _, values = composite.make_loss(config.loss)(None, images, logits)

  reconstructions = jax.nn.sigmoid(logits)
  expected = distances.huber(images, reconstructions, delta=0.5)
  np.testing.assert_allclose(values['pixel'], expected, rtol=1e-6)
  default_delta = distances.huber(images, reconstructions)
  assert not np.allclose(values['pixel'], default_delta)


@pytest.mark.parametrize(
  ('distance', 'field', 'value', 'function'),
  [
    ('huber', 'delta', 0.05, distances.huber),
    ('charbonnier', 'epsilon', 0.2, distances.charbonnier),
    ('robust', 'alpha', -3.0, distances.robust),
    ('robust', 'scale', 0.5, distances.robust),
  ],
)
def test_distance_option_read_from_config(distance, field, value, function):
  images, logits = random_batch(seed=8)
  loss_fn = composite.make_loss(
    term_config('pixel', distance, **{field: value})
  )

  _, values = loss_fn(None, images, logits)

  reconstructions = jax.nn.sigmoid(logits)
  expected = function(images, reconstructions, **{field: value})
  default = function(images, reconstructions)
  np.testing.assert_allclose(values['pixel'], expected, rtol=1e-6)
  assert not np.allclose(values['pixel'], default)


def weighted_terms():
  terms = full_terms()
  terms['pixel']['weight'] = 0.5
  terms['edge']['weight'] = 2.0
  terms['mean_shift']['weight'] = 1.5
  terms['gram']['weight'] = 0.25
  terms['tv']['weight'] = 0.1
  terms['standardized']['weight'] = 0.6
  terms['fourier']['weight'] = 0.4
  terms['features']['weight'] = 0.2
  terms['ssim']['weight'] = 0.75
  terms['ms_ssim']['weight'] = 0.3
  terms['focal_frequency']['weight'] = 0.8
  return terms


def test_total_is_weighted_sum():
  images, logits = random_batch(seed=9)
  terms = weighted_terms()
  loss_fn = composite.make_loss(
    make_config(**terms), encode_features=encode_features
  )

  total, values = loss_fn(make_params(), images, logits)

  expected = sum(terms[name]['weight'] * values[name] for name in terms)
  assert total.shape == (SHAPE[0],)
  assert set(values) == set(composite.TERMS)
  np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_all_terms_logs_zero_weight_terms():
  images, logits = random_batch(seed=10)
  terms = full_terms()
  terms['mean_shift']['weight'] = 0.5
  config = make_config(**terms)
  params = make_params()

  weighted_fn = composite.make_loss(config, encode_features=encode_features)
  logged_fn = composite.make_loss(
    config, encode_features=encode_features, all_terms=True
  )
  weighted_total, weighted_values = weighted_fn(params, images, logits)
  logged_total, logged_values = logged_fn(params, images, logits)

  assert set(weighted_values) == {'pixel', 'mean_shift'}
  assert set(logged_values) == set(composite.TERMS)
  for name in composite.TERMS:
    assert logged_values[name].shape == (SHAPE[0],), name
  np.testing.assert_allclose(logged_total, weighted_total, rtol=1e-6)


def test_config_omits_terms():
  images, logits = random_batch(seed=11)
  config = make_config(edge={'weight': 1.0, 'distance': 'rmse'})

  _, values = composite.make_loss(config, all_terms=True)(None, images, logits)

  assert set(values) == {'edge'}


def test_jit_matches_eager():
  images, logits = random_batch(seed=12)
  loss_fn = composite.make_loss(
    make_config(**weighted_terms()), encode_features=encode_features
  )
  params = make_params()

  compiled_total, compiled_values = loss_fn(params, images, logits)
  with jax.disable_jit():
    eager_total, eager_values = loss_fn(params, images, logits)

  np.testing.assert_allclose(compiled_total, eager_total, rtol=1e-5)
  for name in composite.TERMS:
    np.testing.assert_allclose(
      compiled_values[name], eager_values[name], rtol=1e-5, err_msg=name
    )


def test_bfloat16_input_gives_float32():
  images, logits = random_batch(seed=13)
  loss_fn = composite.make_loss(
    make_config(**weighted_terms()), encode_features=encode_features
  )

  total, values = loss_fn(
    make_params(),
    images.astype(jnp.bfloat16),
    logits.astype(jnp.bfloat16),
  )

  assert total.dtype == jnp.float32
  for name in composite.TERMS:
    assert values[name].dtype == jnp.float32, name


def test_logits_shape_mismatch_raises():
  images, logits = random_batch()
  loss_fn = composite.make_loss(make_config(**full_terms()))

  with pytest.raises(ValueError, match=r'\(2, 8, 8, 1\).*\(2, 8, 8, 3\)'):
    loss_fn(None, images, logits[..., :1])


def test_images_rank_raises():
  images, logits = random_batch()
  loss_fn = composite.make_loss(make_config(**full_terms()))

  with pytest.raises(ValueError, match=r'NHWC.*\(8, 8, 3\)'):
    loss_fn(None, images[0], logits[0])


def set_field(terms, path, value):
  term, field = path
  terms[term][field] = value
  return terms


# (change to full_terms(), expected message start, expected fix in message).
# Each message must name the config field and the rejected value.
REJECTED_CONFIGS = {
  'unknown_term': (
    lambda terms: {**terms, 'lpips': {'weight': 1.0, 'distance': 'mse'}},
    r'loss\.terms\.lpips is not a known term',
    "'pixel', 'edge', 'mean_shift', 'gram', 'ssim', 'ms_ssim', 'tv'",
  ),
  'unknown_edge_kernel': (
    lambda terms: set_field(terms, ('edge', 'kernel'), 'canny'),
    r"loss\.terms\.edge\.kernel is 'canny', which is invalid",
    "'sobel', 'scharr', 'prewitt', 'laplacian', 'central'",
  ),
  'unknown_edge_padding': (
    lambda terms: set_field(terms, ('edge', 'padding'), 'wrap'),
    r"loss\.terms\.edge\.padding is 'wrap', which is invalid",
    "'reflect', 'replicate', 'zero'",
  ),
  'zero_focal_frequency_alpha': (
    lambda terms: set_field(terms, ('focal_frequency', 'alpha'), 0.0),
    r'loss\.terms\.focal_frequency\.alpha is 0\.0, which is invalid',
    'positive finite number',
  ),
  'focal_frequency_distance': (
    lambda terms: set_field(terms, ('focal_frequency', 'distance'), 'mse'),
    r'loss\.terms\.focal_frequency\.distance is not a known field',
    "'weight', 'alpha'",
  ),
  'unknown_mean_shift_mean': (
    lambda terms: set_field(terms, ('mean_shift', 'mean'), 'pixel'),
    r"loss\.terms\.mean_shift\.mean is 'pixel', which is invalid",
    "'channel', 'image'",
  ),
  'nan_alpha': (
    lambda terms: set_field(terms, ('pixel', 'alpha'), float('nan')),
    r'loss\.terms\.pixel\.alpha is nan, which is invalid',
    "float('-inf')",
  ),
  'string_alpha': (
    lambda terms: set_field(terms, ('standardized', 'alpha'), '1'),
    r"loss\.terms\.standardized\.alpha is '1', which is invalid",
    'real number',
  ),
  'nonpositive_scale': (
    lambda terms: set_field(terms, ('edge', 'scale'), 0.0),
    r'loss\.terms\.edge\.scale is 0\.0, which is invalid',
    'positive finite number',
  ),
  'tv_distance_field': (
    lambda terms: set_field(terms, ('tv', 'distance'), 'mse'),
    r'loss\.terms\.tv\.distance is not a known field',
    "Valid fields: 'weight'.",
  ),
  'standardized_bce': (
    lambda terms: set_field(terms, ('standardized', 'distance'), 'bce'),
    r"loss\.terms\.standardized\.distance is 'bce'",
    'only on loss.terms.pixel',
  ),
  'ssim_unknown_window': (
    lambda terms: {**terms, 'ssim': {'weight': 1.0, 'window': 'box'}},
    r"loss\.terms\.ssim\.window is 'box', which is invalid",
    "'gaussian', 'uniform'",
  ),
  'ms_ssim_even_window_size': (
    lambda terms: {**terms, 'ms_ssim': {'weight': 1.0, 'window_size': 8}},
    r'loss\.terms\.ms_ssim\.window_size is 8, which is invalid',
    'odd positive integer',
  ),
  'ssim_float_window_size': (
    lambda terms: {**terms, 'ssim': {'weight': 1.0, 'window_size': 7.0}},
    r'loss\.terms\.ssim\.window_size is 7\.0, which is invalid',
    'odd positive integer',
  ),
  'ssim_nonpositive_sigma': (
    lambda terms: {**terms, 'ssim': {'weight': 1.0, 'sigma': 0.0}},
    r'loss\.terms\.ssim\.sigma is 0\.0, which is invalid',
    'positive finite number',
  ),
  'ssim_distance_field': (
    lambda terms: {**terms, 'ssim': {'weight': 1.0, 'distance': 'mse'}},
    r'loss\.terms\.ssim\.distance is not a known field',
    "'weight', 'window', 'window_size', 'sigma', 'k1', 'k2'",
  ),
  'unknown_field': (
    lambda terms: set_field(terms, ('pixel', 'wieght'), 1.0),
    r'loss\.terms\.pixel\.wieght is not a known field',
    "'weight', 'distance', 'delta', 'epsilon'",
  ),
  'unknown_distance': (
    lambda terms: set_field(terms, ('edge', 'distance'), 'l3'),
    r"loss\.terms\.edge\.distance is 'l3'",
    "'mse', 'mae', 'rmse', 'huber', 'charbonnier', 'log_cosh', 'robust', 'bce'",
  ),
  'missing_distance': (
    lambda terms: {**terms, 'pixel': {'weight': 1.0}},
    r'loss\.terms\.pixel\.distance is missing',
    "'mse', 'mae'",
  ),
  'unknown_edge_output': (
    lambda terms: set_field(terms, ('edge', 'output'), 'angle'),
    r"loss\.terms\.edge\.output is 'angle'",
    "'components', 'magnitude'",
  ),
  'unknown_gram_normalization': (
    lambda terms: set_field(terms, ('gram', 'normalization'), 'c'),
    r"loss\.terms\.gram\.normalization is 'c'",
    "'none', 'hw', 'chw'",
  ),
  'negative_weight': (
    lambda terms: set_field(terms, ('edge', 'weight'), -0.5),
    r'loss\.terms\.edge\.weight is -0\.5, which is negative',
    'number >= 0',
  ),
  'string_weight': (
    lambda terms: set_field(terms, ('pixel', 'weight'), '1.0'),
    r"loss\.terms\.pixel\.weight is '1\.0', which is not a finite number",
    'number >= 0',
  ),
  'bool_weight': (
    lambda terms: set_field(terms, ('pixel', 'weight'), True),
    r'loss\.terms\.pixel\.weight is True, which is not a finite number',
    'number >= 0',
  ),
  'nan_weight': (
    lambda terms: set_field(terms, ('pixel', 'weight'), float('nan')),
    r'loss\.terms\.pixel\.weight is nan, which is not a finite number',
    'number >= 0',
  ),
  'missing_weight': (
    lambda terms: {**terms, 'pixel': {'distance': 'mse'}},
    r'loss\.terms\.pixel\.weight is missing',
    'number >= 0',
  ),
  'bce_on_edge': (
    lambda terms: set_field(terms, ('edge', 'distance'), 'bce'),
    r"loss\.terms\.edge\.distance is 'bce'.*targets in \[0, 1\].*logits",
    "'huber', 'charbonnier', 'log_cosh', 'robust'.",
  ),
  'bce_on_mean_shift': (
    lambda terms: set_field(terms, ('mean_shift', 'distance'), 'bce'),
    r"loss\.terms\.mean_shift\.distance is 'bce'.*only on loss\.terms\.pixel",
    "'huber', 'charbonnier', 'log_cosh', 'robust'.",
  ),
  'bce_on_gram': (
    lambda terms: set_field(terms, ('gram', 'distance'), 'bce'),
    r"loss\.terms\.gram\.distance is 'bce'.*only on loss\.terms\.pixel",
    "'huber', 'charbonnier', 'log_cosh', 'robust'.",
  ),
  'gram_layer_out_of_range': (
    lambda terms: set_field(terms, ('gram', 'layers'), (0, 3)),
    r'loss\.terms\.gram\.layers is \(0, 3\), and 3 is out of range',
    'in 0..2',
  ),
  'gram_layers_empty': (
    lambda terms: set_field(terms, ('gram', 'layers'), ()),
    r'loss\.terms\.gram\.layers is empty',
    'non-empty tuple',
  ),
  'gram_layers_missing': (
    lambda terms: {**terms, 'gram': {'weight': 1.0, 'distance': 'mse'}},
    r'loss\.terms\.gram\.layers is missing',
    'non-empty tuple',
  ),
  'gram_layer_negative': (
    lambda terms: set_field(terms, ('gram', 'layers'), (-1,)),
    r'loss\.terms\.gram\.layers is \(-1,\), and -1 is not a valid index',
    'in 0..2',
  ),
  'gram_layers_repeated': (
    lambda terms: set_field(terms, ('gram', 'layers'), (1, 1)),
    r'loss\.terms\.gram\.layers is \(1, 1\), which repeats an index',
    'distinct',
  ),
  'gram_layers_string': (
    lambda terms: set_field(terms, ('gram', 'layers'), '01'),
    r"loss\.terms\.gram\.layers is '01', which is not a tuple",
    'non-empty tuple',
  ),
  'nonpositive_delta': (
    lambda terms: set_field(terms, ('pixel', 'delta'), 0.0),
    r'loss\.terms\.pixel\.delta is 0\.0, which is invalid',
    'positive finite number',
  ),
  'negative_epsilon': (
    lambda terms: set_field(terms, ('edge', 'epsilon'), -1e-3),
    r'loss\.terms\.edge\.epsilon is -0\.001, which is invalid',
    'positive finite number',
  ),
  'unknown_network': (
    lambda terms: set_field(terms, ('gram', 'network'), 'resnet'),
    r"loss\.terms\.gram\.network is 'resnet', which is invalid",
    "'encoder', 'random', 'checkpoint', 'vgg16'",
  ),
  'vgg16_without_weights_path': (
    lambda terms: set_field(terms, ('features', 'network'), 'vgg16'),
    r"loss\.terms\.features\.weights_path is None, but network 'vgg16'",
    'HDF5 weights file',
  ),
  'vgg16_layer_indices': (
    lambda terms: {
      **terms,
      'gram': {
        'weight': 0.0,
        'distance': 'mse',
        'network': 'vgg16',
        'weights_path': '/data/vgg16.h5',
        'layers': (0, 1),
      },
    },
    r'loss\.terms\.gram\.layers is \(0, 1\), and 0 is not a layer name',
    "'block1_conv2'",
  ),
  'checkpoint_without_dir': (
    lambda terms: set_field(terms, ('gram', 'network'), 'checkpoint'),
    r"loss\.terms\.gram\.checkpoint_dir is None, but network 'checkpoint'",
    '--workdir of an earlier run',
  ),
  'checkpoint_dir_empty': (
    lambda terms: {
      **terms,
      'gram': {
        **terms['gram'],
        'network': 'checkpoint',
        'checkpoint_dir': '',
      },
    },
    r"loss\.terms\.gram\.checkpoint_dir is '', but network 'checkpoint'",
    '--workdir of an earlier run',
  ),
  'random_layer_out_of_range': (
    lambda terms: {
      **terms,
      'features': {
        **terms['features'],
        'network': 'random',
        'widths': (4, 8),
        'layers': (2,),
      },
    },
    r'loss\.terms\.features\.layers is \(2,\), and 2 is out of range',
    '0..1',
  ),
  'random_widths_invalid': (
    lambda terms: {
      **terms,
      'gram': {**terms['gram'], 'network': 'random', 'widths': (4, 0)},
    },
    r'loss\.terms\.gram\.widths is \(4, 0\), which is invalid',
    'positive channel counts',
  ),
  'random_seed_invalid': (
    lambda terms: {
      **terms,
      'gram': {**terms['gram'], 'network': 'random', 'seed': 1.5},
    },
    r'loss\.terms\.gram\.seed is 1\.5, which is invalid',
    'integer',
  ),
  'features_unknown_field': (
    lambda terms: set_field(terms, ('features', 'normalization'), 'hw'),
    r'loss\.terms\.features\.normalization is not a known field',
    "'network', 'seed'",
  ),
  'no_positive_weight': (
    lambda terms: set_field(terms, ('pixel', 'weight'), 0.0),
    r"loss\.terms has no term with a positive weight.*'pixel'",
    'weight above 0',
  ),
  'term_not_config': (
    lambda terms: {**terms, 'edge': 1.0},
    r'loss\.terms\.edge is 1\.0, which is invalid',
    "'weight', 'distance'",
  ),
}


@pytest.mark.parametrize('case', sorted(REJECTED_CONFIGS))
def test_validate_rejects(case):
  change, message, fix = REJECTED_CONFIGS[case]
  config = make_config(**change(full_terms()))

  with pytest.raises(ValueError, match=message) as raised:
    composite.validate(config, num_feature_maps=3)

  assert fix in str(raised.value)


def test_validate_rejects_missing_terms():
  with pytest.raises(ValueError, match=r'loss\.terms is None'):
    composite.validate(ml_collections.ConfigDict({'other': 1}))


def test_validate_rejects_missing_loss():
  with pytest.raises(ValueError, match=r'loss is None'):
    composite.validate(None)


def test_make_loss_validates_config():
  terms = set_field(full_terms(), ('edge', 'distance'), 'l3')

  with pytest.raises(ValueError, match=r"loss\.terms\.edge\.distance is 'l3'"):
    composite.make_loss(make_config(**terms))


def test_validate_accepts_full_config():
  terms = full_terms()
  terms['edge']['delta'] = 0.5
  terms['gram']['epsilon'] = 0.01

  composite.validate(make_config(**terms), num_feature_maps=2)


def test_validate_accepts_every_network():
  terms = full_terms()
  terms['gram'].update(network='random', seed=3, widths=(4, 8, 8))
  terms['gram']['layers'] = (2,)
  terms['features'].update(network='vgg16', weights_path='/data/vgg16.h5')
  terms['features']['layers'] = ('block1_conv2', 'block3_conv3')
  composite.validate(make_config(**terms), num_feature_maps=1)

  terms['gram'].update(network='checkpoint', checkpoint_dir='runs/digits')
  terms['gram']['layers'] = (5,)
  composite.validate(make_config(**terms), num_feature_maps=1)


def test_validate_accepts_plain_dict():
  composite.validate({'terms': full_terms()})


STRUCTURAL_OPTIONS = {'window_size': 5, 'sigma': 1.0}


@pytest.mark.parametrize('term', ['ssim', 'ms_ssim'])
def test_structural_term_is_one_minus_similarity(term):
  images, logits = random_batch(seed=5)
  config = make_config(**{term: {'weight': 2.0, **STRUCTURAL_OPTIONS}})
  loss_fn = composite.make_loss(config)

  total, values = loss_fn(None, images, logits)

  similarity = getattr(structural, term)
  expected = 1.0 - similarity(
    jax.nn.sigmoid(logits), images, **STRUCTURAL_OPTIONS
  )
  np.testing.assert_allclose(values[term], expected, atol=1e-6)
  np.testing.assert_allclose(total, 2.0 * expected, atol=1e-6)


@pytest.mark.parametrize('term', ['ssim', 'ms_ssim'])
def test_structural_term_finite_on_hard_batches(term):
  config = make_config(**{term: {'weight': 1.0, 'window_size': 3}})
  loss_fn = composite.make_loss(config)

  def summed(logits, images):
    total, values = loss_fn(None, images, logits)
    return total.sum(), values

  value_and_grad = jax.jit(jax.value_and_grad(summed, has_aux=True))
  batches = {
    **HARD_BATCHES,
    'anti_correlated': lambda: (1.0 - matched_batch()[0], matched_batch()[1]),
  }
  for batch_name, make_batch in batches.items():
    images, logits = make_batch()
    (total, values), gradient = value_and_grad(logits, images)

    assert np.isfinite(total), batch_name
    assert np.all(np.isfinite(values[term])), batch_name
    assert np.all(np.isfinite(gradient)), batch_name


@pytest.mark.parametrize('term', ['ssim', 'ms_ssim'])
def test_structural_window_larger_than_images_raises(term):
  images, logits = random_batch()
  loss_fn = composite.make_loss(make_config(**{term: {'weight': 1.0}}))

  message = rf'loss\.terms\.{term}\.window_size is 11.*8x8 images'
  with pytest.raises(ValueError, match=message) as raised:
    loss_fn(None, images, logits)
  assert 'no larger than 8' in str(raised.value)


def test_ms_ssim_term_logs_scale_count(caplog):
  images, logits = random_batch(seed=6)
  config = make_config(ms_ssim={'weight': 1.0, 'window_size': 3})
  loss_fn = composite.make_loss(config)

  with caplog.at_level(logging.INFO):
    loss_fn(None, images, logits)

  assert 'loss.terms.ms_ssim uses 2 of 5 scales for 8x8 images' in caplog.text


def test_default_config_validates():
  config = default.get_config()

  composite.validate(config.loss, num_feature_maps=2)
  for term in composite.TERMS:
    assert term in config.loss.terms, term


@pytest.mark.parametrize(
  ('kernel', 'padding', 'output'),
  [
    ('laplacian', 'zero', 'components'),
    ('scharr', 'replicate', 'magnitude'),
    ('central', 'reflect', 'components'),
  ],
)
def test_edge_kernel_and_padding_read_from_config(kernel, padding, output):
  images, logits = random_batch(seed=12)
  options = {'kernel': kernel, 'padding': padding, 'output': output}
  loss_fn = composite.make_loss(term_config('edge', 'mae', **options))

  _, values = loss_fn(None, images, logits)

  target = transforms.edge_map(images, **options)
  edges = transforms.edge_map(jax.nn.sigmoid(logits), **options)
  np.testing.assert_allclose(
    values['edge'], distances.mae(target, edges), rtol=1e-6
  )


def test_tv_term_reads_reconstruction():
  images, logits = random_batch(seed=13)
  loss_fn = composite.make_loss(term_config('tv', None))

  total, values = loss_fn(None, images, logits)
  flat_total, _ = loss_fn(None, images, jnp.zeros_like(logits))

  expected = regularizers.total_variation(jax.nn.sigmoid(logits))
  np.testing.assert_allclose(values['tv'], expected, rtol=1e-6)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  np.testing.assert_array_equal(flat_total, np.zeros(SHAPE[0]))


def test_tv_term_finite_on_hard_batches():
  loss_fn = composite.make_loss(term_config('tv', None))

  def summed(logits, images):
    return loss_fn(None, images, logits)[0].sum()

  value_and_grad = jax.jit(jax.value_and_grad(summed))
  for batch_name, make_batch in HARD_BATCHES.items():
    images, logits = make_batch()
    total, gradient = value_and_grad(logits, images)

    assert np.isfinite(total), batch_name
    assert np.all(np.isfinite(gradient)), batch_name


@pytest.mark.parametrize('distance', ['mse', 'log_cosh', 'robust'])
def test_standardized_ignores_brightness_and_contrast(distance):
  rng = np.random.default_rng(14)
  images = rng.uniform(0.3, 0.6, SHAPE).astype(np.float32)
  reconstructions = rng.uniform(0.3, 0.6, SHAPE).astype(np.float32)
  loss_fn = composite.make_loss(term_config('standardized', distance))

  base, _ = loss_fn(None, images, logit(reconstructions))
  changes = {
    'brighter': (1.0, 0.2),
    'more_contrast': (1.5, -0.2),
    'less_contrast_per_channel': (np.array([0.5, 0.8, 0.3], np.float32), 0.1),
  }
  for change_name, (scale, offset) in changes.items():
    changed_images = scale * images + offset
    changed_reconstructions = scale * reconstructions + offset
    changed, _ = loss_fn(None, changed_images, logit(changed_reconstructions))
    np.testing.assert_allclose(changed, base, rtol=2e-3, err_msg=change_name)

  assert np.all(np.asarray(base) > 0)


def test_fourier_term_matches_direct_amplitude():
  images, logits = random_batch(seed=15)
  loss_fn = composite.make_loss(term_config('fourier', 'mae'))

  _, values = loss_fn(None, images, logits)

  target = transforms.fourier_amplitude(images)
  amplitude = transforms.fourier_amplitude(jax.nn.sigmoid(logits))
  np.testing.assert_allclose(
    values['fourier'], distances.mae(target, amplitude), rtol=1e-6
  )


def all_terms_loss():
  """Return a loss that computes every term, each with weight 1."""
  terms = full_terms()
  for term in terms.values():
    term['weight'] = 1.0
  return composite.make_loss(
    make_config(**terms), encode_features=encode_features
  )


@pytest.mark.parametrize('channels', [1, SHAPE[3]])
def test_mask_of_ones_matches_unmasked(channels):
  images, logits = random_batch(seed=9)
  loss_fn = all_terms_loss()
  ones = jnp.ones((*SHAPE[:3], channels), jnp.float32)

  params = make_params()
  total, values = loss_fn(params, images, logits)
  masked_total, masked_values = loss_fn(params, images, logits, ones)

  for name in composite.TERMS:
    np.testing.assert_allclose(
      masked_values[name], values[name], rtol=1e-5, atol=1e-7, err_msg=name
    )
  np.testing.assert_allclose(masked_total, total, rtol=1e-5)


def half_mask(channels=1):
  """Return a mask that is 1 on the top half of each image and 0 below."""
  mask = np.zeros((*SHAPE[:3], channels), np.float32)
  mask[:, : SHAPE[1] // 2] = 1.0
  return jnp.asarray(mask)


# Terms whose value cannot depend on x_hat where the mask is 0.
MASK_INDEPENDENT_CASES = [
  ('pixel', distance, {}) for distance in (*ALL_DISTANCE_NAMES, 'bce')
]
MASK_INDEPENDENT_CASES += [
  ('gram', 'mse', {}),
  ('features', 'mae', {}),
  ('fourier', 'mse', {}),
  ('tv', None, {}),
  ('ms_ssim', None, {'window_size': 3}),
  ('focal_frequency', None, {}),
]


@pytest.mark.parametrize(
  'case', MASK_INDEPENDENT_CASES, ids=lambda case: f'{case[0]}-{case[1]}'
)
def test_mask_zero_region_has_no_gradient(case):
  term, distance, fields = case
  images, logits = random_batch(seed=10)
  loss_fn = composite.make_loss(
    term_config(term, distance, **fields), encode_features=encode_features
  )
  mask = half_mask()
  params = make_params()

  def term_value(logits):
    return jnp.sum(loss_fn(params, images, logits, mask)[1][term])

  gradient = np.asarray(jax.grad(term_value)(logits))
  changed_logits = logits.at[:, SHAPE[1] // 2 :].add(1.5)

  assert np.all(gradient[:, SHAPE[1] // 2 :] == 0.0)
  assert np.any(gradient[:, : SHAPE[1] // 2] != 0.0)
  np.testing.assert_allclose(
    term_value(changed_logits), term_value(logits), rtol=1e-6
  )


def test_mask_weights_pixel_term():
  images, logits = random_batch(seed=11)
  mask = np.random.default_rng(0).random((*SHAPE[:3], 1)).astype(np.float32)
  loss_fn = composite.make_loss(term_config('pixel', 'mse'))

  _, values = loss_fn(None, images, logits, jnp.asarray(mask))

  reconstructions = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  squared = np.square(np.asarray(images, np.float64) - reconstructions)
  full_mask = np.broadcast_to(mask, SHAPE)
  expected = np.sum(full_mask * squared, axis=(1, 2, 3)) / np.sum(
    full_mask, axis=(1, 2, 3)
  )
  np.testing.assert_allclose(values['pixel'], expected, rtol=1e-5)


def test_mask_weights_ssim_map_at_window_centres():
  images, logits = random_batch(seed=12)
  mask = half_mask(channels=SHAPE[3])
  loss_fn = composite.make_loss(term_config('ssim', None, window_size=5))

  _, values = loss_fn(None, images, logits, mask)

  ssim_map = np.asarray(
    structural.ssim(
      jax.nn.sigmoid(logits), images, window_size=5, output='map'
    ),
    np.float64,
  )
  centre_mask = np.asarray(mask)[:, 2:6, 2:6, :]
  expected = 1.0 - np.sum(centre_mask * ssim_map, axis=(1, 2, 3)) / np.sum(
    centre_mask, axis=(1, 2, 3)
  )
  np.testing.assert_allclose(values['ssim'], expected, rtol=1e-5, atol=1e-6)


def test_mask_per_channel_on_edge_components():
  images, logits = random_batch(seed=13)
  mask = np.ones((*SHAPE[:3], SHAPE[3]), np.float32)
  mask[..., 1] = 0.0
  loss_fn = composite.make_loss(term_config('edge', 'mse'))

  _, values = loss_fn(None, images, logits, jnp.asarray(mask))

  target = transforms.edge_map(images)
  output = transforms.edge_map(jax.nn.sigmoid(logits))
  # Components 2 and 3 belong to image channel 1, which the mask removes.
  unmasked_components = np.asarray([0, 1, 4, 5])
  expected = np.mean(
    np.square(
      np.asarray(target - output, np.float64)[..., unmasked_components]
    ),
    axis=(1, 2, 3),
  )
  np.testing.assert_allclose(values['edge'], expected, rtol=1e-5)


@pytest.mark.parametrize(
  'shape',
  [
    (SHAPE[0], SHAPE[1], SHAPE[2]),
    (SHAPE[0], SHAPE[1], SHAPE[2], 2),
    (SHAPE[0], SHAPE[1], 4, 1),
    (1, SHAPE[1], SHAPE[2], 1),
  ],
)
def test_mask_shape_mismatch_raises(shape):
  images, logits = random_batch()
  loss_fn = composite.make_loss(term_config('pixel', 'mse'))

  with pytest.raises(ValueError, match=r'loss: mask must have shape'):
    loss_fn(None, images, logits, jnp.ones(shape))


def test_focal_frequency_term_reads_config():
  images, logits = random_batch(seed=14)
  loss_fn = composite.make_loss(term_config('focal_frequency', None, alpha=2.0))

  _, values = loss_fn(None, images, logits)

  reconstructions = jax.nn.sigmoid(logits)
  expected = distances.focal_frequency(images, reconstructions, alpha=2.0)
  default = distances.focal_frequency(images, reconstructions)
  np.testing.assert_allclose(values['focal_frequency'], expected, rtol=1e-6)
  assert not np.allclose(values['focal_frequency'], default)


@pytest.mark.parametrize('term', sorted(full_terms()))
def test_gradient_matches_finite_differences(term):
  """jax.test_util.check_grads: reverse-mode gradient against central
  differences, on random images where every term is smooth."""
  settings = {**full_terms()[term], 'weight': 1.0}
  loss_fn = composite.make_loss(
    make_config(**{term: settings}), encode_features=encode_features
  )
  params = make_params()
  images, logits = random_batch(seed=3)

  def total(logits):
    return loss_fn(params, images, logits)[0].sum()

  jax_test_util.check_grads(
    total, (logits,), order=1, modes=('rev',), eps=1e-3, atol=5e-2, rtol=5e-2
  )
