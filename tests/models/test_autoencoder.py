"""Tests for the Flax autoencoder: shapes, parameters, the encoder alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import autoencoder


def _model_and_params(widths=(32, 64), latent_dim=32, shape=(28, 28, 1)):
  model = autoencoder.Autoencoder(widths, latent_dim, shape)
  params = autoencoder.init_params(model, jax.random.key(0), shape)
  return model, params


@pytest.mark.parametrize(
  'widths, shape',
  [((32, 64), (28, 28, 1)), ((8,), (32, 32, 3)), ((4, 8, 16), (32, 32, 3))],
)
def test_logits_match_image_shape(widths, shape):
  model, params = _model_and_params(widths, 16, shape)
  images = jnp.full((3, *shape), 0.5)

  logits = model.apply({'params': params}, images)

  assert logits.shape == (3, *shape)
  assert logits.dtype == jnp.float32


def test_parameter_count():
  _, params = _model_and_params()
  count = sum(leaf.size for leaf in jax.tree.leaves(params))
  # Hand count, weights + biases: conv0 3*3*1*32+32, conv1 3*3*32*64+64,
  # to_latent 7*7*64*32+32, from_latent 32*7*7*64+7*7*64,
  # deconv0 3*3*64*32+32, deconv1 3*3*32*1+1.
  expected = 320 + 18_496 + 100_384 + 103_488 + 18_464 + 289
  assert count == expected


def test_encoder_runs_alone():
  model, params = _model_and_params()
  images = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))

  latent, features = model.apply(
    {'params': params}, images, method=autoencoder.Autoencoder.encode
  )
  standalone = autoencoder.Encoder((32, 64), 32).apply(
    {'params': params['encoder']}, images
  )

  assert latent.shape == (2, 32)
  assert [f.shape for f in features] == [(2, 14, 14, 32), (2, 7, 7, 64)]
  np.testing.assert_allclose(standalone[0], latent, rtol=1e-6)


def test_feature_extractor_matches_encode():
  model, params = _model_and_params()
  images = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))

  features = autoencoder.feature_extractor(model)(params, images)
  _, expected = model.apply(
    {'params': params}, images, method=autoencoder.Autoencoder.encode
  )

  for got, want in zip(features, expected, strict=True):
    np.testing.assert_array_equal(got, want)


def test_decode_of_encode_equals_call():
  model, params = _model_and_params()
  images = jax.random.uniform(jax.random.key(3), (2, 28, 28, 1))

  latent, _ = model.apply(
    {'params': params}, images, method=autoencoder.Autoencoder.encode
  )
  decoded = model.apply(
    {'params': params}, latent, method=autoencoder.Autoencoder.decode
  )

  np.testing.assert_allclose(
    decoded, model.apply({'params': params}, images), rtol=1e-5, atol=1e-6
  )
