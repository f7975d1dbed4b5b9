"""Reconstruction loss terms for convolutional autoencoders.

Images are NHWC float arrays in [0, 1]. Every function computes in float32
and returns one value per example, shape [B], except the transforms, which
return arrays. `make_loss` combines the configured terms into one weighted
loss.
"""

from losses.composite import TERMS
from losses.composite import make_loss
from losses.composite import validate
from losses.distances import DISTANCES
from losses.distances import bce_with_logits
from losses.distances import charbonnier
from losses.distances import huber
from losses.distances import mae
from losses.distances import mse
from losses.distances import psnr
from losses.distances import rmse
from losses.transforms import GRAM_NORMALIZATIONS
from losses.transforms import SOBEL_OUTPUTS
from losses.transforms import gram
from losses.transforms import mean_shift
from losses.transforms import sobel

__all__ = [
  'DISTANCES',
  'GRAM_NORMALIZATIONS',
  'SOBEL_OUTPUTS',
  'TERMS',
  'bce_with_logits',
  'charbonnier',
  'gram',
  'huber',
  'mae',
  'make_loss',
  'mean_shift',
  'mse',
  'psnr',
  'rmse',
  'sobel',
  'validate',
]
