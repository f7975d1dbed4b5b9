"""A convolutional autoencoder in Flax linen.

Inputs are NHWC float images in [0, 1]. The encoder halves the spatial size at
every stage with a stride-2 3x3 convolution, then a dense layer maps the last
feature map to a latent vector. The decoder mirrors it with stride-2 transposed
convolutions, the last of which outputs the image's channels. The model
returns logits; the reconstruction is `jax.nn.sigmoid(logits)`.

The convolutions are `models.layers.Conv` and `models.layers.ConvTranspose`:
the same parameters and maps as flax's `nn.Conv` and `nn.ConvTranspose` with
'SAME' padding, computed as matrix products, which XLA's CPU backend runs
faster (docs/benchmarks.md has the measurements).

Height and width must both divide by `2 ** len(widths)`.
"""

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers


class Encoder(nn.Module):
  """Maps images [B, H, W, C] to latents [B, latent_dim] and stage features.

  Attributes:
    widths: output channels of each stride-2 stage.
    latent_dim: size of the latent vector.
  """

  widths: Sequence[int]
  latent_dim: int

  @nn.compact
  def __call__(self, images):
    features = []
    x = images
    for i, width in enumerate(self.widths):
      x = layers.Conv(width, (3, 3), strides=(2, 2), name=f'conv{i}')(x)
      x = nn.relu(x)
      features.append(x)

    latent = nn.Dense(self.latent_dim, name='to_latent')(
      x.reshape(x.shape[0], -1)
    )
    return latent, tuple(features)


class Decoder(nn.Module):
  """Maps latents [B, latent_dim] to logits [B, H, W, C].

  Attributes:
    widths: the encoder's stage widths, in encoder order.
    image_shape: (H, W, C) of the images to reconstruct.
  """

  widths: Sequence[int]
  image_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, latent):
    height, width, channels = self.image_shape
    scale = 2 ** len(self.widths)
    bottom_shape = (height // scale, width // scale, self.widths[-1])

    x = nn.Dense(
      bottom_shape[0] * bottom_shape[1] * bottom_shape[2], name='from_latent'
    )(latent)
    x = nn.relu(x).reshape(latent.shape[0], *bottom_shape)
    # Each stage doubles the size; the last one outputs the image's channels.
    out_widths = (*reversed(self.widths[:-1]), channels)
    for i, stage_width in enumerate(out_widths):
      x = layers.ConvTranspose(
        stage_width, (3, 3), strides=(2, 2), name=f'deconv{i}'
      )(x)
      if i < len(out_widths) - 1:
        x = nn.relu(x)
    return x


class Autoencoder(nn.Module):
  """Encoder and decoder; `__call__` returns reconstruction logits.

  Attributes:
    widths: channels of each encoder stage; the decoder mirrors them.
    latent_dim: size of the latent vector.
    image_shape: (H, W, C) of the input images.
  """

  widths: Sequence[int]
  latent_dim: int
  image_shape: tuple[int, int, int]

  def setup(self):
    self.encoder = Encoder(self.widths, self.latent_dim)
    self.decoder = Decoder(self.widths, self.image_shape)

  def __call__(self, images):
    latent, _ = self.encoder(images)
    return self.decoder(latent)

  def encode(self, images):
    """Returns (latent [B, latent_dim], per-stage NHWC feature maps)."""
    return self.encoder(images)

  def decode(self, latent):
    """Returns logits [B, H, W, C] for latents [B, latent_dim]."""
    return self.decoder(latent)


def create_model(model_config, image_shape):
  """Builds the autoencoder described by `config.model` for `image_shape`.

  Args:
    model_config: ConfigDict with `widths` and `latent_dim`.
    image_shape: (H, W, C) of the dataset's images.

  Returns:
    An `Autoencoder`.
  """
  return Autoencoder(
    widths=tuple(model_config.widths),
    latent_dim=model_config.latent_dim,
    image_shape=tuple(image_shape),
  )


def feature_extractor(model):
  """Returns `encode_features(params, images)`: the encoder's stage features.

  The loss terms that read encoder features call this with the autoencoder's
  full parameter tree; only the encoder's parameters are used.
  """

  def encode_features(params, images):
    _, features = model.apply(
      {'params': params}, images, method=Autoencoder.encode
    )
    return features

  return encode_features


@functools.cache
def _jitted_init(model):
  # Modules hash by their fields, so equal models share one compiled init.
  return jax.jit(model.init)


def init_params(model, rng, image_shape):
  """Initialises the autoencoder's parameters for one dummy image."""
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  return _jitted_init(model)(rng, dummy)['params']
