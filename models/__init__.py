"""Flax models: the convolutional autoencoder and its convolution layers."""

from models.autoencoder import Autoencoder
from models.autoencoder import Decoder
from models.autoencoder import Encoder
from models.autoencoder import create_model
from models.autoencoder import feature_extractor
from models.autoencoder import init_params

__all__ = [
  'Autoencoder',
  'Decoder',
  'Encoder',
  'create_model',
  'feature_extractor',
  'init_params',
]
