"""Fixed feature networks for the gram and features loss terms.

Each builder returns `encode_features(params, images)`, which maps NHWC images
[B, H, W, C] in [0, 1] to a tuple of NHWC feature maps, the contract that
`losses.composite.make_loss` expects. `params` is the autoencoder's parameter
tree. Only the 'encoder' network reads it. The other networks carry their own
weights as constants closed over by the function, so no gradient can reach
them and they are not part of the trained parameters.

Networks, selected by `loss.terms.<term>.network`:

  encoder     the autoencoder's own encoder, one map per stage.
  random      a conv net with fixed He-normal random weights from `seed`.
  checkpoint  the encoder of an earlier run, restored from its workdir.
  vgg16       VGG16 convolutions with ImageNet weights from a local Keras
              HDF5 file, the maps of the named layers.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from losses import composite
from models import autoencoder
from models import layers

DEFAULT_RANDOM_WIDTHS = composite.DEFAULT_RANDOM_WIDTHS

# VGG16's convolution layers in order, as Keras names them, grouped by block.
# A 2x2 max pool with stride 2 follows the last convolution of every block.
VGG16_BLOCKS = (
  ('block1_conv1', 'block1_conv2'),
  ('block2_conv1', 'block2_conv2'),
  ('block3_conv1', 'block3_conv2', 'block3_conv3'),
  ('block4_conv1', 'block4_conv2', 'block4_conv3'),
  ('block5_conv1', 'block5_conv2', 'block5_conv3'),
)
VGG16_LAYERS = tuple(name for block in VGG16_BLOCKS for name in block)
# ImageNet channel means in BGR order, subtracted from 0..255 BGR inputs, as
# in Keras's `imagenet_utils.preprocess_input` in 'caffe' mode.
VGG16_BGR_MEANS = (103.939, 116.779, 123.68)


def _conv(inputs, kernel, stride):
  return layers.conv_same(inputs, kernel, (stride, stride))


def encoder_features(model):
  """Returns the autoencoder's encoder stage features, read from `params`."""
  return autoencoder.feature_extractor(model)


def random_weights(seed, widths, channels):
  """Draws the kernels [3, 3, in, out] of the random network, one per stage.

  The kernels are He-normal (truncated normal, variance 2 / fan_in) from
  `jax.random.key(seed)`, so the same seed, widths and input channels give
  identical kernels.
  """
  initializer = jax.nn.initializers.he_normal()
  keys = jax.random.split(jax.random.key(seed), len(widths))
  kernels = []
  in_channels = channels
  for key, width in zip(keys, widths, strict=True):
    kernels.append(initializer(key, (3, 3, in_channels, width), jnp.float32))
    in_channels = width
  return tuple(kernels)


def random_features(seed, widths=DEFAULT_RANDOM_WIDTHS):
  """Builds a conv net with fixed random weights: 3x3 conv + relu per stage.

  The first stage keeps the image size and every later stage halves it with
  stride 2. Kernels come from `random_weights` and there are no biases.
  Random, untrained filters already capture much of the texture statistics
  that Gram matrices of trained networks capture (Ustyuzhaninov et al., 2016,
  "Texture synthesis using shallow convolutional networks with random
  filters"), so this network is a cheap, fixed alternative to the encoder.

  Args:
    seed: integer seed of the weights.
    widths: output channels of each stage.

  Returns:
    `encode_features(params, images)`; it ignores `params`.
  """
  widths = tuple(int(width) for width in widths)
  kernels_by_channels = {}

  def encode_features(params, images):
    channels = images.shape[-1]
    if channels not in kernels_by_channels:
      # Draw the kernels once per channel count as concrete arrays, even
      # while a caller traces this function, so they enter as constants.
      with jax.ensure_compile_time_eval():
        kernels_by_channels[channels] = random_weights(seed, widths, channels)

    features = []
    x = images
    for i, kernel in enumerate(kernels_by_channels[channels]):
      x = jax.nn.relu(_conv(x, kernel, 1 if i == 0 else 2))
      features.append(x)
    return tuple(features)

  return encode_features


def _checkpoint_directory(workdir):
  checkpoints = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if os.path.isdir(checkpoints):
    return checkpoints
  return os.path.abspath(workdir)


def restore_encoder_params(workdir):
  """Restores the encoder parameters of the newest checkpoint in `workdir`.

  Args:
    workdir: the workdir of an earlier run of this project, which contains
      `checkpoints/`, or that `checkpoints/` directory itself.

  Returns:
    The `encoder` subtree of the saved parameters, {'conv0': {'kernel',
    'bias'}, ..., 'to_latent': ...}, as arrays.

  Raises:
    ValueError: if there is no checkpoint, or its parameters have no encoder.
  """
  directory = _checkpoint_directory(workdir)
  fix = (
    'Set loss.terms.<term>.checkpoint_dir to the --workdir of a run that '
    'trained for at least one checkpoint, or pick another network.'
  )
  if not os.path.isdir(directory):
    raise ValueError(f'Checkpoint directory {directory} does not exist. {fix}')

  options = ocp.CheckpointManagerOptions(read_only=True)
  manager = ocp.CheckpointManager(directory, options=options)
  try:
    step = manager.latest_step()
    if step is None:
      raise ValueError(f'No checkpoint found in {directory}. {fix}')
    # Without a target, StandardRestore returns the saved tree as nested
    # dicts, so no model widths are needed to read it.
    state = manager.restore(step, args=ocp.args.StandardRestore())
  finally:
    manager.close()

  params = state.get('params', {}) if isinstance(state, dict) else {}
  if 'encoder' not in params:
    raise ValueError(
      f'The checkpoint at step {step} in {directory} has no params.encoder '
      f'subtree, so it was not written by this project. {fix}'
    )
  return params['encoder']


def checkpoint_features(workdir):
  """Builds the encoder of an earlier run, restored from its newest checkpoint.

  The stage count and widths are read from the checkpoint's kernels, so the
  run's config is not needed. Only the convolution stages run, each a stride-2
  `layers.Conv` with the saved kernel and bias followed by relu as in
  `autoencoder.Encoder`, so images of any size that divides by the stride
  work.

  Returns:
    `encode_features(params, images)`; it ignores `params`.
  """
  encoder_params = restore_encoder_params(workdir)
  stage_params = []
  while f'conv{len(stage_params)}' in encoder_params:
    stage = encoder_params[f'conv{len(stage_params)}']
    stage_params.append(jax.tree.map(jnp.asarray, stage))

  stages = [
    layers.Conv(int(stage['kernel'].shape[-1]), (3, 3), strides=(2, 2))
    for stage in stage_params
  ]

  def encode_features(params, images):
    features = []
    x = images
    for stage, weights in zip(stages, stage_params, strict=True):
      x = nn.relu(stage.apply({'params': weights}, x))
      features.append(x)
    return tuple(features)

  return encode_features


def _read_vgg16_layer(weights_file, path, layer):
  """Reads (kernel [3, 3, in, out], bias [out]) of `layer` from an h5py file."""
  if layer not in weights_file:
    raise ValueError(
      f'VGG16 weights file {path} has no group {layer!r}. Use a Keras VGG16 '
      f'"notop" HDF5 file, which has groups block1_conv1 to block5_conv3, or '
      f'request only layers that the file contains.'
    )

  group = weights_file[layer]
  # Keras files nest the datasets in a subgroup named after the layer.
  if layer in group and 'kernel:0' in group[layer]:
    group = group[layer]
    kernel_name, bias_name = 'kernel:0', 'bias:0'
  else:
    kernel_name, bias_name = 'kernel', 'bias'

  if kernel_name not in group or bias_name not in group:
    raise ValueError(
      f'VGG16 weights file {path}: layer {layer!r} has no kernel and bias '
      f'datasets. Expected {layer}/{layer}/kernel:0 and bias:0 (Keras) or '
      f'{layer}/kernel and {layer}/bias.'
    )

  kernel = np.asarray(group[kernel_name], np.float32)
  bias = np.asarray(group[bias_name], np.float32)
  if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
    raise ValueError(
      f'VGG16 weights file {path}: layer {layer!r} has a kernel of shape '
      f'{kernel.shape}, but a [3, 3, in, out] kernel is expected.'
    )
  if bias.shape != (kernel.shape[-1],):
    raise ValueError(
      f'VGG16 weights file {path}: layer {layer!r} has a bias of shape '
      f'{bias.shape} for a kernel with {kernel.shape[-1]} outputs.'
    )
  return kernel, bias


def load_vgg16_weights(path, layers):
  """Reads the VGG16 weights up to the deepest of `layers` from a HDF5 file.

  Two layouts are read. The Keras "notop" file
  (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`) stores each layer as
  `<layer>/<layer>/kernel:0` and `<layer>/<layer>/bias:0`, for example
  `block1_conv1/block1_conv1/kernel:0`. The plain layout stores
  `<layer>/kernel` and `<layer>/bias`. Kernels are [3, 3, in, out] (HWIO) and
  biases [out]. Only the layers from block1_conv1 to the deepest requested
  one are read, and each layer's input channels must match the previous
  layer's outputs, with 3 for block1_conv1.

  Args:
    path: path of the HDF5 file.
    layers: requested layer names from `VGG16_LAYERS`.

  Returns:
    A list of (name, kernel, bias) from block1_conv1 to the deepest layer.

  Raises:
    ValueError: if the file or a layer is missing, or a shape is invalid.
  """
  import h5py  # noqa: PLC0415  (imported only when a VGG16 network is built)

  for layer in layers:
    if layer not in VGG16_LAYERS:
      raise ValueError(
        f'VGG16 layer {layer!r} is not known. Use names from: '
        f'{", ".join(VGG16_LAYERS)}.'
      )
  if not os.path.isfile(path):
    raise ValueError(
      f'VGG16 weights file {path} was not found. Set '
      f'loss.terms.<term>.weights_path to a local copy of the Keras VGG16 '
      f'ImageNet "notop" HDF5 file; nothing is downloaded.'
    )

  deepest = max(VGG16_LAYERS.index(layer) for layer in layers)
  weights = []
  in_channels = 3
  with h5py.File(path, 'r') as weights_file:
    for layer in VGG16_LAYERS[: deepest + 1]:
      kernel, bias = _read_vgg16_layer(weights_file, path, layer)
      if kernel.shape[2] != in_channels:
        raise ValueError(
          f'VGG16 weights file {path}: layer {layer!r} expects '
          f'{kernel.shape[2]} input channels, but the layer before it '
          f'outputs {in_channels}.'
        )
      weights.append((layer, kernel, bias))
      in_channels = kernel.shape[-1]
  return weights


def vgg16_input(images):
  """Converts images in [0, 1] to VGG16's input: BGR in 0..255 minus means.

  Grayscale images are repeated to three channels first. The channel order
  is reversed (RGB to BGR), values are scaled by 255, and the ImageNet means
  `VGG16_BGR_MEANS` (103.939, 116.779, 123.68 for B, G, R) are subtracted.
  """
  channels = images.shape[-1]
  if channels == 1:
    images = jnp.repeat(images, 3, axis=-1)
  elif channels != 3:
    raise ValueError(
      f'VGG16 features need 1 or 3 image channels, got {channels}. Use '
      f"another network, such as 'encoder' or 'random'."
    )
  bgr = images[..., ::-1] * 255.0
  return bgr - jnp.asarray(VGG16_BGR_MEANS, jnp.float32)


def _max_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


def vgg16_features(weights_path, layers):
  """Builds VGG16's convolutions with weights from a local HDF5 file.

  Each convolution is 3x3 with 'SAME' padding, a bias and relu, and a 2x2
  max pool with stride 2 follows each block, as in Keras's VGG16. Only the
  layers up to the deepest requested one are built.

  Args:
    weights_path: path of the HDF5 weights file, see `load_vgg16_weights`.
    layers: layer names from `VGG16_LAYERS`, for example ('block1_conv2',
      'block2_conv2', 'block3_conv3').

  Returns:
    `encode_features(params, images)` that returns the relu outputs of
    `layers` in the requested order; it ignores `params`.
  """
  layers = tuple(layers)
  weights = [
    (name, jnp.asarray(kernel), jnp.asarray(bias))
    for name, kernel, bias in load_vgg16_weights(weights_path, layers)
  ]
  last_in_block = {block[-1] for block in VGG16_BLOCKS}

  def encode_features(params, images):
    x = vgg16_input(images)
    outputs = {}
    for name, kernel, bias in weights:
      x = jax.nn.relu(_conv(x, kernel, 1) + bias)
      outputs[name] = x
      if name in last_in_block:
        x = _max_pool(x)
    return tuple(outputs[layer] for layer in layers)

  return encode_features


def create(term_config, model):
  """Builds the feature network that a gram or features term config selects.

  Args:
    term_config: the term's ConfigDict (or dict), already checked by
      `composite.validate`. It reads `network` and that network's options.
    model: the autoencoder, used by the 'encoder' network.

  Returns:
    `encode_features(params, images)` for `composite.make_loss`.
  """
  network = term_config.get('network', composite.DEFAULT_FEATURE_NETWORK)
  if network == 'encoder':
    return encoder_features(model)
  if network == 'random':
    widths = term_config.get('widths', DEFAULT_RANDOM_WIDTHS)
    return random_features(int(term_config.get('seed', 0)), widths)
  if network == 'checkpoint':
    return checkpoint_features(term_config.get('checkpoint_dir'))
  if network == 'vgg16':
    return vgg16_features(
      term_config.get('weights_path'), tuple(term_config.get('layers'))
    )
  raise ValueError(
    f'Feature network {network!r} is not known. Use one of: '
    f'{", ".join(composite.FEATURE_NETWORKS)}.'
  )


__all__ = [
  'DEFAULT_RANDOM_WIDTHS',
  'VGG16_BGR_MEANS',
  'VGG16_LAYERS',
  'checkpoint_features',
  'create',
  'encoder_features',
  'load_vgg16_weights',
  'random_features',
  'random_weights',
  'restore_encoder_params',
  'vgg16_features',
  'vgg16_input',
]
