"""Reconstruction loss terms for convolutional autoencoders.

Images are NHWC float arrays in [0, 1]. Every function computes in float32
and returns one value per example, shape [B], except the transforms, which
return arrays, and `ssim` with output 'channels' or 'map'. `make_loss`
combines the configured terms into one weighted loss.
"""

from losses.composite import TERMS
from losses.composite import make_loss
from losses.composite import validate
from losses.distances import DISTANCES
from losses.distances import bce_with_logits
from losses.distances import charbonnier
from losses.distances import focal_frequency
from losses.distances import huber
from losses.distances import log_cosh
from losses.distances import mae
from losses.distances import mse
from losses.distances import psnr
from losses.distances import rmse
from losses.distances import robust
from losses.regularizers import total_variation
from losses.structural import MS_SSIM_WEIGHTS
from losses.structural import SSIM_OUTPUTS
from losses.structural import WINDOWS
from losses.structural import ms_ssim
from losses.structural import ms_ssim_scales
from losses.structural import ssim
from losses.transforms import EDGE_KERNELS
from losses.transforms import EDGE_OUTPUTS
from losses.transforms import EDGE_PADDINGS
from losses.transforms import GRAM_NORMALIZATIONS
from losses.transforms import SOBEL_OUTPUTS
from losses.transforms import edge_map
from losses.transforms import fourier_amplitude
from losses.transforms import gram
from losses.transforms import mean_shift
from losses.transforms import sobel
from losses.transforms import standardize

__all__ = [
  'DISTANCES',
  'EDGE_KERNELS',
  'EDGE_OUTPUTS',
  'EDGE_PADDINGS',
  'GRAM_NORMALIZATIONS',
  'MS_SSIM_WEIGHTS',
  'SOBEL_OUTPUTS',
  'SSIM_OUTPUTS',
  'TERMS',
  'WINDOWS',
  'bce_with_logits',
  'charbonnier',
  'edge_map',
  'focal_frequency',
  'fourier_amplitude',
  'gram',
  'huber',
  'log_cosh',
  'mae',
  'make_loss',
  'mean_shift',
  'ms_ssim',
  'ms_ssim_scales',
  'mse',
  'psnr',
  'rmse',
  'robust',
  'sobel',
  'ssim',
  'standardize',
  'total_variation',
  'validate',
]
