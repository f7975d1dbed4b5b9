"""The PyTorch side of the benchmarks: optional imports and the peer models.

`import_peers` imports torch, pytorch-msssim, piq and kornia where they are
installed (the `bench` extra). The rest of this module needs torch and is
only called when it imported.

`TorchAutoencoder` is `models.autoencoder.Autoencoder` written in PyTorch:
the same layers, parameter shapes and 'SAME' padding. `load_jax_params`
copies a Flax parameter tree into it, so both compute the same logits, which
the benchmark checks before it times them.
"""

from collections import OrderedDict
import importlib
import os

import numpy as np

PEER_MODULES = {
  'torch': 'torch',
  'pytorch-msssim': 'pytorch_msssim',
  'piq': 'piq',
  'kornia': 'kornia',
}

# Sobel kernels in correlation order, [component, dy, dx]: d/dy, then d/dx,
# as `losses.transforms.edge_map` orders its output channels.
SOBEL = np.array(
  [
    [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],
    [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
  ],
  np.float32,
)


def import_peers() -> tuple[dict, list[str]]:
  """Imports the PyTorch peers that are installed.

  Returns:
    (distribution name -> module, or None if it is not installed or failed
    to import; one message per peer that is missing).
  """
  modules = {}
  messages = []
  for name, module_name in PEER_MODULES.items():
    try:
      modules[name] = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001  (any import failure skips it)
      modules[name] = None
      messages.append(
        f'{name} is not available ({type(err).__name__}: {err}), so its '
        "rows are skipped. Install it with pip install -e '.[bench]'."
      )
  if modules['torch'] is None:
    for name in PEER_MODULES:
      modules[name] = None
  else:
    modules['torch'].set_num_threads(os.cpu_count() or 1)
  return modules, messages


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """Returns (before, after) padding of XLA's 'SAME' for one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def build_autoencoder(torch, widths, latent_dim, image_shape):
  """Builds the PyTorch autoencoder; see the module docstring.

  Args:
    torch: the torch module.
    widths: encoder stage widths.
    latent_dim: latent size.
    image_shape: (H, W, C).

  Returns:
    A `torch.nn.Module` mapping NCHW images to NCHW logits.
  """
  nn = torch.nn
  functional = torch.nn.functional
  height, width, channels = image_shape

  class TorchAutoencoder(nn.Module):
    """Stride-2 3x3 convolutions, dense latent, stride-2 transposed convs."""

    def __init__(self):
      super().__init__()
      self.convs = nn.ModuleList()
      in_channels = channels
      sizes = []
      size = (height, width)
      for stage_width in widths:
        sizes.append(size)
        self.convs.append(nn.Conv2d(in_channels, stage_width, 3, stride=2))
        in_channels = stage_width
        size = (-(-size[0] // 2), -(-size[1] // 2))
      self.input_sizes = sizes
      self.bottom = (widths[-1], *size)
      flat = widths[-1] * size[0] * size[1]
      self.to_latent = nn.Linear(flat, latent_dim)
      self.from_latent = nn.Linear(latent_dim, flat)
      out_widths = (*reversed(widths[:-1]), channels)
      self.deconvs = nn.ModuleList()
      in_channels = widths[-1]
      for stage_width in out_widths:
        # Padding 0 and a crop of the last row and column give lax's
        # 'SAME' transposed convolution with a flipped kernel.
        self.deconvs.append(
          nn.ConvTranspose2d(in_channels, stage_width, 3, stride=2)
        )
        in_channels = stage_width

    def forward(self, images):
      x = images
      for conv, (size_h, size_w) in zip(
        self.convs, self.input_sizes, strict=True
      ):
        top, bottom = same_padding(size_h, 3, 2)
        left, right = same_padding(size_w, 3, 2)
        x = functional.relu(conv(functional.pad(x, (left, right, top, bottom))))
      latent = self.to_latent(x.flatten(1))
      x = functional.relu(self.from_latent(latent))
      x = x.view(-1, *self.bottom)
      for i, deconv in enumerate(self.deconvs):
        size_h, size_w = 2 * x.shape[2], 2 * x.shape[3]
        x = deconv(x)[:, :, :size_h, :size_w]
        if i < len(self.deconvs) - 1:
          x = functional.relu(x)
      return x

  return TorchAutoencoder()


def load_jax_params(torch, model, params) -> None:
  """Copies the Flax autoencoder's parameters into `model` in place.

  Flax flattens NHWC feature maps in (h, w, c) order and PyTorch NCHW maps
  in (c, h, w) order, so the dense kernels are permuted. The transposed
  convolutions' kernels are flipped, because lax's 'SAME' transposed
  convolution correlates with the kernel that PyTorch's convolves with.
  """
  encoder = params['encoder']
  decoder = params['decoder']
  channels, height, width = model.bottom

  def tensor(array):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array)))

  with torch.no_grad():
    for i, conv in enumerate(model.convs):
      kernel = np.asarray(encoder[f'conv{i}']['kernel'])
      conv.weight.copy_(tensor(kernel.transpose(3, 2, 0, 1)))
      conv.bias.copy_(tensor(encoder[f'conv{i}']['bias']))

    kernel = np.asarray(encoder['to_latent']['kernel'])
    kernel = kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3)
    model.to_latent.weight.copy_(tensor(kernel.reshape(-1, kernel.shape[-1]).T))
    model.to_latent.bias.copy_(tensor(encoder['to_latent']['bias']))

    kernel = np.asarray(decoder['from_latent']['kernel'])
    kernel = kernel.reshape(-1, height, width, channels).transpose(0, 3, 1, 2)
    model.from_latent.weight.copy_(
      tensor(kernel.reshape(kernel.shape[0], -1).T)
    )
    bias = np.asarray(decoder['from_latent']['bias'])
    bias = bias.reshape(height, width, channels).transpose(2, 0, 1)
    model.from_latent.bias.copy_(tensor(bias.reshape(-1)))

    for i, deconv in enumerate(model.deconvs):
      kernel = np.asarray(decoder[f'deconv{i}']['kernel'])
      flipped = kernel[::-1, ::-1].transpose(2, 3, 0, 1)
      deconv.weight.copy_(tensor(flipped))
      deconv.bias.copy_(tensor(decoder[f'deconv{i}']['bias']))


def sobel_components(torch, images):
  """Returns the Sobel d/dy and d/dx of NCHW images, 2C channels.

  The border is padded by repeating the edge pixel. For a 1-pixel border
  that equals the 'reflect' padding of `losses.transforms.edge_map`.
  """
  channels = images.shape[1]
  kernel = torch.from_numpy(np.tile(SOBEL[:, None], (channels, 1, 1, 1)))
  padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode='replicate')
  return torch.nn.functional.conv2d(padded, kernel, groups=channels)


def encoder_network(torch, encoder_params, image_shape):
  """Builds the Flax encoder's convolution stages as an nn.Sequential.

  The stages are named pad{i}, conv{i} and relu{i}, so piq's StyleLoss can
  select the relu{i} maps. The weights are copied from `encoder_params`, and
  each pad is the 'SAME' padding of the stage's input size.
  """
  nn = torch.nn
  height, width, in_channels = image_shape
  stages = OrderedDict()
  index = 0
  while f'conv{index}' in encoder_params:
    kernel = np.asarray(encoder_params[f'conv{index}']['kernel'])
    bias = np.asarray(encoder_params[f'conv{index}']['bias'])
    conv = nn.Conv2d(in_channels, kernel.shape[-1], 3, stride=2)
    with torch.no_grad():
      conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
      conv.bias.copy_(torch.from_numpy(bias.copy()))
    top, bottom = same_padding(height, 3, 2)
    left, right = same_padding(width, 3, 2)
    stages[f'pad{index}'] = nn.ZeroPad2d((left, right, top, bottom))
    stages[f'conv{index}'] = conv
    stages[f'relu{index}'] = nn.ReLU()
    height, width = -(-height // 2), -(-width // 2)
    in_channels = kernel.shape[-1]
    index += 1
  return nn.Sequential(stages)
