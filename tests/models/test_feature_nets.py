"""Tests for models.feature_nets.

Golden sources: a NumPy and SciPy implementation of VGG16's preprocessing,
convolution, relu and max pooling, run on HDF5 files that the tests write with
random weights in the Keras layout, and the random network's own definition
(He-normal kernels from `jax.random.key(seed)`).
"""

import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import signal

from losses import composite
from models import autoencoder
from models import feature_nets

IMAGE_SHAPE = (2, 8, 8, 1)

# Small stand-in widths for VGG16's first five layers; the real ones are 64,
# 64, 128, 128, 256.
VGG_WIDTHS = {
  'block1_conv1': 4,
  'block1_conv2': 4,
  'block2_conv1': 6,
  'block2_conv2': 6,
  'block3_conv1': 8,
}


def random_images(shape=IMAGE_SHAPE, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.random(shape), jnp.float32)


def test_random_same_seed_same_weights():
  first = feature_nets.random_weights(7, (4, 8), 3)
  second = feature_nets.random_weights(7, (4, 8), 3)

  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)


def test_random_seeds_differ():
  images = random_images()

  first = feature_nets.random_features(0, (4, 8))(None, images)
  second = feature_nets.random_features(1, (4, 8))(None, images)
  again = feature_nets.random_features(0, (4, 8))(None, images)

  assert not np.allclose(first[0], second[0])
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a, b)


def test_random_weights_are_he_normal():
  (kernel,) = feature_nets.random_weights(0, (256,), 16)

  # He-normal has variance 2 / fan_in, with fan_in = 3 * 3 * 16.
  np.testing.assert_allclose(np.var(kernel), 2.0 / 144, rtol=0.05)


def test_random_feature_shapes():
  encode = feature_nets.random_features(0, (4, 8, 16))

  features = encode(None, random_images())

  assert [f.shape for f in features] == [
    (2, 8, 8, 4),
    (2, 4, 4, 8),
    (2, 2, 2, 16),
  ]
  for feature in features:
    assert np.all(np.asarray(feature) >= 0)


def test_random_jit_matches_eager():
  encode = feature_nets.random_features(3, (4, 8))
  images = random_images(shape=(2, 8, 8, 3))

  compiled = jax.jit(encode)(None, images)
  eager = encode(None, images)

  for a, b in zip(compiled, eager, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_random_ignores_params():
  encode = feature_nets.random_features(0, (4, 8))
  params = {'kernel': jnp.ones((3, 3, 1, 4))}

  def feature_sum(params):
    return sum(f.sum() for f in encode(params, random_images()))

  gradient = jax.grad(feature_sum)(params)

  np.testing.assert_array_equal(gradient['kernel'], np.zeros((3, 3, 1, 4)))


def test_random_gram_gradient_reaches_only_reconstruction():
  config = ml_collections.ConfigDict(
    {
      'terms': {
        'gram': {
          'weight': 1.0,
          'distance': 'mse',
          'layers': (0, 1),
          'normalization': 'hw',
          'network': 'random',
          'seed': 0,
          'widths': (4, 8),
        }
      }
    }
  )
  encode = feature_nets.create(config.terms.gram, model=None)
  loss_fn = composite.make_loss(config, feature_networks={'gram': encode})
  images = random_images()
  logits = jnp.asarray(
    np.random.default_rng(1).standard_normal(IMAGE_SHAPE), jnp.float32
  )
  params = {'kernel': jnp.ones((3, 3, 1, 4))}

  def summed(params, logits):
    return loss_fn(params, images, logits)[0].sum()

  params_gradient, logits_gradient = jax.grad(summed, argnums=(0, 1))(
    params, logits
  )

  np.testing.assert_array_equal(
    params_gradient['kernel'], np.zeros((3, 3, 1, 4))
  )
  assert np.abs(np.asarray(logits_gradient)).max() > 0


def test_create_encoder_network_reads_params():
  model = autoencoder.Autoencoder(
    widths=(4, 8), latent_dim=4, image_shape=IMAGE_SHAPE[1:]
  )
  params = autoencoder.init_params(model, jax.random.key(0), IMAGE_SHAPE[1:])
  term = {'weight': 1.0, 'distance': 'mse', 'layers': (0,)}
  images = random_images()

  features = feature_nets.create(term, model)(params, images)

  expected = autoencoder.feature_extractor(model)(params, images)
  for a, b in zip(features, expected, strict=True):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_missing_names_path(tmp_path):
  with pytest.raises(ValueError, match='No checkpoint found in') as raised:
    feature_nets.checkpoint_features(str(tmp_path))

  assert str(tmp_path) in str(raised.value)
  assert 'checkpoint_dir' in str(raised.value)


def test_checkpoint_directory_missing(tmp_path):
  missing = tmp_path / 'never_trained'

  with pytest.raises(ValueError, match='does not exist') as raised:
    feature_nets.checkpoint_features(str(missing))

  assert str(missing) in str(raised.value)


def vgg_weights(layers=tuple(VGG_WIDTHS), seed=0):
  """Return {layer: (kernel [3, 3, in, out], bias [out])} with small values."""
  rng = np.random.default_rng(seed)
  weights = {}
  in_channels = 3
  for layer in layers:
    out_channels = VGG_WIDTHS[layer]
    kernel = rng.standard_normal((3, 3, in_channels, out_channels)) * 0.01
    bias = rng.standard_normal(out_channels) * 0.1
    weights[layer] = (kernel.astype(np.float32), bias.astype(np.float32))
    in_channels = out_channels
  return weights


def write_vgg_file(path, weights, *, keras_layout):
  with h5py.File(path, 'w') as f:
    for layer, (kernel, bias) in weights.items():
      group = f.create_group(layer)
      if keras_layout:
        group.attrs['weight_names'] = [
          f'{layer}/kernel:0'.encode(),
          f'{layer}/bias:0'.encode(),
        ]
        inner = group.create_group(layer)
        inner.create_dataset('kernel:0', data=kernel)
        inner.create_dataset('bias:0', data=bias)
      else:
        group.create_dataset('kernel', data=kernel)
        group.create_dataset('bias', data=bias)
  return str(path)


def reference_conv_relu(x, kernel, bias):
  """Return relu of a 'SAME' 3x3 convolution of one HWC image, by SciPy."""
  height, width, _ = x.shape
  output = np.zeros((height, width, kernel.shape[-1]))
  for out in range(kernel.shape[-1]):
    for channel in range(kernel.shape[2]):
      output[:, :, out] += signal.correlate(
        x[:, :, channel], kernel[:, :, channel, out], mode='same'
      )
    output[:, :, out] += bias[out]
  return np.maximum(output, 0.0)


def reference_max_pool(x):
  height, width, channels = x.shape
  blocks = x[: height // 2 * 2, : width // 2 * 2]
  blocks = blocks.reshape(height // 2, 2, width // 2, 2, channels)
  return blocks.max(axis=(1, 3))


def reference_vgg(image, weights, layers):
  """Return the requested VGG16 layer outputs of one HWC image in [0, 1]."""
  x = np.asarray(image, np.float64)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  x = x[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68])

  outputs = {}
  for layer, (kernel, bias) in weights.items():
    x = reference_conv_relu(x, kernel, bias)
    outputs[layer] = x
    if layer in ('block1_conv2', 'block2_conv2'):
      x = reference_max_pool(x)
  return [outputs[layer] for layer in layers]


@pytest.mark.parametrize('keras_layout', [True, False])
@pytest.mark.parametrize('channels', [1, 3])
def test_vgg16_matches_numpy(tmp_path, keras_layout, channels):
  weights = vgg_weights()
  path = write_vgg_file(
    tmp_path / 'vgg16.h5', weights, keras_layout=keras_layout
  )
  layers = ('block3_conv1', 'block1_conv2', 'block2_conv1')
  images = random_images(shape=(2, 8, 8, channels), seed=channels)

  features = feature_nets.vgg16_features(path, layers)(None, images)

  assert [f.shape for f in features] == [
    (2, 2, 2, 8),
    (2, 8, 8, 4),
    (2, 4, 4, 6),
  ]
  for index in range(images.shape[0]):
    expected = reference_vgg(images[index], weights, layers)
    for layer, feature, reference in zip(
      layers, features, expected, strict=True
    ):
      np.testing.assert_allclose(
        feature[index], reference, rtol=1e-4, atol=1e-3, err_msg=layer
      )


def test_vgg16_reads_only_needed_layers(tmp_path):
  weights = vgg_weights(layers=('block1_conv1', 'block1_conv2'))
  path = write_vgg_file(tmp_path / 'vgg16.h5', weights, keras_layout=True)

  (feature,) = feature_nets.vgg16_features(path, ('block1_conv2',))(
    None, random_images()
  )

  assert feature.shape == (2, 8, 8, 4)


def test_vgg16_missing_layer_names_file(tmp_path):
  weights = vgg_weights(layers=('block1_conv1', 'block1_conv2'))
  path = write_vgg_file(tmp_path / 'vgg16.h5', weights, keras_layout=True)

  with pytest.raises(ValueError, match="no group 'block2_conv1'") as raised:
    feature_nets.vgg16_features(path, ('block2_conv2',))

  assert path in str(raised.value)


def test_vgg16_missing_file_names_path(tmp_path):
  path = str(tmp_path / 'absent.h5')

  with pytest.raises(ValueError, match='was not found') as raised:
    feature_nets.vgg16_features(path, ('block1_conv1',))

  assert path in str(raised.value)
  assert 'weights_path' in str(raised.value)


def test_vgg16_unknown_layer_name(tmp_path):
  path = write_vgg_file(tmp_path / 'vgg16.h5', vgg_weights(), keras_layout=True)

  with pytest.raises(ValueError, match="layer 'block1_pool' is not known"):
    feature_nets.vgg16_features(path, ('block1_pool',))


def test_vgg16_channel_mismatch(tmp_path):
  weights = vgg_weights(layers=('block1_conv1', 'block1_conv2'))
  kernel, bias = weights['block1_conv2']
  weights['block1_conv2'] = (kernel[:, :, :2], bias)
  path = write_vgg_file(tmp_path / 'vgg16.h5', weights, keras_layout=False)

  with pytest.raises(ValueError, match=r"'block1_conv2' expects 2 input"):
    feature_nets.vgg16_features(path, ('block1_conv2',))


def test_vgg16_input_convention():
  images = jnp.asarray([[[[1.0, 0.5, 0.0]]]], jnp.float32)

  converted = feature_nets.vgg16_input(images)

  np.testing.assert_allclose(
    converted[0, 0, 0],
    [0.0 - 103.939, 127.5 - 116.779, 255.0 - 123.68],
    rtol=1e-6,
  )
