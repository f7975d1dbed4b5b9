"""Weighted sum of reconstruction loss terms, built from `config.loss`.

The loss compares a batch of NHWC images x of shape [B, H, W, C] in [0, 1]
with the autoencoder's logits of the same shape. The reconstruction is
x_hat = sigmoid(logits). Most terms are a distance D from `losses.distances`
applied after a transform from `losses.transforms`. The ssim, ms_ssim, tv
and focal_frequency terms are computed directly:

  pixel       D(x, x_hat). With distance 'bce' it is the binary
              cross-entropy between the logits and targets x.
  edge        D(E(x), E(x_hat)) for a 3x3 edge kernel E, Sobel by default.
  mean_shift  D(x - mean(x), x_hat - mean(x_hat)), means per image and channel,
              or per image over all channels with mean 'image'.
  standardized
              D(S(x), S(x_hat)), where S(x) = (x - mean(x)) / std(x) per
              image and channel, see `transforms.standardize`.
  gram        D(Gram(F(x)), Gram(F(x_hat))) for each listed feature map of
              a feature network F, averaged over the maps.
  features    D(F(x), F(x_hat)) for each listed feature map of F, averaged
              over the maps (perceptual feature matching).
  ssim        1 - SSIM(x, x_hat), see `losses.structural.ssim`.
  ms_ssim     1 - MS-SSIM(x, x_hat), see `losses.structural.ms_ssim`.
  tv          total variation of x_hat alone, see
              `losses.regularizers.total_variation`.
  fourier     D(|FFT2(x)|, |FFT2(x_hat)|), amplitude spectra over H and W
              per image and channel, see `transforms.fourier_amplitude`.
  focal_frequency
              focal frequency loss, the squared spectrum error weighted by
              its own magnitude, see `distances.focal_frequency`.

Config schema, one optional entry per term under `loss.terms`:

  pixel:      weight, distance
  edge:       weight, distance, output ('components' or 'magnitude',
              default 'components'), kernel ('sobel', 'scharr', 'prewitt',
              'laplacian' or 'central', default 'sobel'), padding
              ('reflect', 'replicate' or 'zero', default 'reflect')
  mean_shift: weight, distance, mean ('channel' or 'image', default
              'channel')
  standardized: weight, distance
  gram:       weight, distance, layers, normalization ('none', 'hw' or
              'chw', default 'chw'), and the feature network fields below
  features:   weight, distance, layers, and the feature network fields
  ssim:       weight, window ('gaussian' or 'uniform', default
              'gaussian'), window_size (odd, default 11), sigma (default
              1.5), k1 (default 0.01), k2 (default 0.03)
  ms_ssim:    the fields of ssim
  tv:         weight
  fourier:    weight, distance
  focal_frequency:
              weight, alpha (positive, default 1.0)

Feature network fields of the gram and features terms, built by
`models.feature_nets.create`:

  network     'encoder' (default), 'random', 'checkpoint' or 'vgg16'
  seed        'random' only: integer seed of the weights, default 0
  widths      'random' only: channels of each stage, default (32, 64, 128)
  checkpoint_dir
              'checkpoint' only, required: workdir of an earlier run
  weights_path
              'vgg16' only, required: local Keras VGG16 HDF5 weights file

`layers` are indices into the network's feature maps, except for 'vgg16',
where they are VGG16 layer names such as 'block2_conv2'. A field that the
chosen network does not read is ignored, so a config may carry the options
of every network.

The ssim, ms_ssim, tv and focal_frequency terms have no distance. The ssim
and ms_ssim window must fit inside the images. The config alone does not
know the image size, so the trainer checks the window against the dataset
before compiling, and the loss function checks it again when traced.
MS-SSIM uses as many of its five scales as the window fits
(`losses.structural.ms_ssim_scales`) and logs the count when traced.

Any term with a distance may also set `delta` (used by the 'huber' distance),
`epsilon` (used by 'charbonnier'), and `alpha` and `scale` (used by 'robust',
defaults 1.0 and 0.1). The edge magnitude keeps the default epsilon of
`transforms.edge_map`, and the standardized term that of
`transforms.standardize`, so neither reads this field. All values are
computed in float32 and every term returns one value per example, shape [B].
The caller reduces over the batch.

The loss function takes an optional per-pixel weight map `mask` of shape
[B, H, W, 1] or [B, H, W, C] with values in [0, 1], which each term applies
as follows:

  pixel, edge, mean_shift, standardized
              The distance's elementwise values are weighted by the mask and
              divided by the mask's sum per example, see
              `losses.distances`. A mask of ones gives the unmasked value.
              The edge kernel, the means and the standard deviations still
              read every pixel, so for these three terms a pixel of mask 0
              still affects the value through its neighbours or the
              statistics. For the pixel term it does not.
  ssim        The SSIM map is averaged with the mask, cropped to the map's
              positions (the window centres), as weights.
  ms_ssim, gram, features, fourier, focal_frequency
              x and x_hat are both multiplied by the mask before the term.
  tv          x_hat is multiplied by the mask before the total variation.

An example whose mask is 0 everywhere gets the value 0 from the weighted
terms. The mask is not checked to lie in [0, 1].
"""

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import functools
import logging
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from losses import distances
from losses import regularizers
from losses import structural
from losses import transforms

TERMS = (
  'pixel',
  'edge',
  'mean_shift',
  'gram',
  'ssim',
  'ms_ssim',
  'tv',
  'standardized',
  'fourier',
  'features',
  'focal_frequency',
)
# Terms built on structural similarity, 1 - SSIM or 1 - MS-SSIM.
_STRUCTURAL_TERMS = ('ssim', 'ms_ssim')

# Binary cross-entropy reads logits, so it is valid only on the pixel term.
_BCE = 'bce'
_DISTANCE_CHOICES = (*distances.DISTANCES, _BCE)

# Options of a distance, keyed by the distance's config name.
_DISTANCE_OPTIONS = {
  'huber': ('delta',),
  'charbonnier': ('epsilon',),
  'robust': ('alpha', 'scale'),
}

_COMMON_FIELDS = ('weight', 'distance', 'delta', 'epsilon', 'alpha', 'scale')
# Feature networks of the gram and features terms, see models.feature_nets.
FEATURE_NETWORKS = ('encoder', 'random', 'checkpoint', 'vgg16')
DEFAULT_FEATURE_NETWORK = 'encoder'
DEFAULT_RANDOM_WIDTHS = (32, 64, 128)
_FEATURE_TERMS = ('gram', 'features')
_NETWORK_FIELDS = (
  'network',
  'seed',
  'widths',
  'checkpoint_dir',
  'weights_path',
)
_STRUCTURAL_FIELDS = ('weight', 'window', 'window_size', 'sigma', 'k1', 'k2')
_TERM_FIELDS = {
  'pixel': _COMMON_FIELDS,
  'edge': (*_COMMON_FIELDS, 'output', 'kernel', 'padding'),
  'mean_shift': (*_COMMON_FIELDS, 'mean'),
  'gram': (*_COMMON_FIELDS, 'layers', 'normalization', *_NETWORK_FIELDS),
  'features': (*_COMMON_FIELDS, 'layers', *_NETWORK_FIELDS),
  'ssim': _STRUCTURAL_FIELDS,
  'ms_ssim': _STRUCTURAL_FIELDS,
  'tv': ('weight',),
  'standardized': _COMMON_FIELDS,
  'fourier': _COMMON_FIELDS,
  'focal_frequency': ('weight', 'alpha'),
}

_DEFAULT_EDGE_OUTPUT = 'components'
_DEFAULT_EDGE_KERNEL = 'sobel'
_DEFAULT_EDGE_PADDING = 'reflect'
_DEFAULT_GRAM_NORMALIZATION = 'chw'
_DEFAULT_MEAN_SHIFT_MEAN = 'channel'
# Defaults of the structural terms, those of `losses.structural.ssim`.
_STRUCTURAL_DEFAULTS = {
  'window': 'gaussian',
  'window_size': 11,
  'sigma': 1.5,
  'k1': 0.01,
  'k2': 0.03,
}

# encode_features(params, images) -> a feature network's NHWC feature maps.
EncodeFeatures = Callable[[Any, jax.Array], Sequence[jax.Array]]
# loss_fn(params, images, logits, mask=None)
#   -> (total [B], {term name: value [B]}).
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
# term(params, images, logits, reconstructions, mask) -> value [B], where
# mask is None or broadcasts to images.
_TermFn = Callable[
  [Any, jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array
]


def _format_choices(choices: Sequence[str]) -> str:
  return ', '.join(repr(choice) for choice in choices)


def _is_real_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_config(value: Any) -> bool:
  # ConfigDict is not a collections.abc.Mapping, so check for its methods.
  return hasattr(value, 'keys') and hasattr(value, 'get')


def _validate_positive_option(field: str, value: Any) -> None:
  if value is None:
    return

  if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
    raise ValueError(
      f'{field} is {value!r}, which is invalid. Set it to a positive finite '
      f'number or remove it to use the default.'
    )


def _validate_alpha(field: str, value: Any) -> None:
  if value is None:
    return

  if not _is_real_number(value) or math.isnan(value) or value == math.inf:
    raise ValueError(
      f'{field} is {value!r}, which is invalid. Set it to a real number or '
      f"float('-inf'), such as 1.0, or remove it to use the default."
    )


def _validate_weight(field: str, weight: Any) -> None:
  if weight is None:
    raise ValueError(
      f'{field} is missing. Set it to a number >= 0, where 0 disables the term.'
    )

  if not _is_real_number(weight) or not math.isfinite(weight):
    raise ValueError(
      f'{field} is {weight!r}, which is not a finite number. Set it to a '
      f'number >= 0, where 0 disables the term.'
    )

  if weight < 0:
    raise ValueError(
      f'{field} is {weight!r}, which is negative. Set it to a number >= 0, '
      f'where 0 disables the term.'
    )


def _validate_distance(name: str, field: str, distance: Any) -> None:
  if distance is None:
    raise ValueError(
      f'{field} is missing. Set it to one of: '
      f'{_format_choices(_DISTANCE_CHOICES)}.'
    )

  if distance not in _DISTANCE_CHOICES:
    raise ValueError(
      f'{field} is {distance!r}, which is not a known distance. Use one of: '
      f'{_format_choices(_DISTANCE_CHOICES)}.'
    )

  if distance == _BCE and name != 'pixel':
    raise ValueError(
      f'{field} is {distance!r}, but binary cross-entropy is valid only on '
      f'loss.terms.pixel, because it needs targets in [0, 1] and reads the '
      f"autoencoder's logits, which only the pixel term compares. Use one of: "
      f'{_format_choices(distances.DISTANCES)}.'
    )


def _validate_layer_tuple(field: str, layers: Any, fix: str) -> None:
  """Checks that `layers` is a non-empty tuple; the items are checked apart."""
  if layers is None:
    raise ValueError(f'{field} is missing. {fix}.')

  # validate reports every config error as ValueError, wrong types included.
  if isinstance(layers, str) or not isinstance(layers, Sequence):
    message = f'{field} is {layers!r}, which is not a tuple. {fix}.'
    raise ValueError(message)  # noqa: TRY004

  if not layers:
    raise ValueError(f'{field} is empty. {fix}.')


def _validate_layer_names(field: str, layers: Any) -> None:
  fix = (
    'Set it to a non-empty tuple of distinct VGG16 layer names, such as '
    "('block1_conv2', 'block2_conv2', 'block3_conv3')"
  )
  _validate_layer_tuple(field, layers, fix)

  for layer in layers:
    if not isinstance(layer, str) or not layer:
      raise ValueError(
        f'{field} is {layers!r}, and {layer!r} is not a layer name. {fix}.'
      )

  if len(set(layers)) != len(layers):
    raise ValueError(f'{field} is {layers!r}, which repeats a name. {fix}.')


def _validate_layers(
  field: str, layers: Any, num_feature_maps: int | None
) -> None:
  fix = 'Set it to a non-empty tuple of distinct feature map indices'
  if num_feature_maps is not None:
    fix += f' in 0..{num_feature_maps - 1}'

  _validate_layer_tuple(field, layers, fix)

  for layer in layers:
    is_index = isinstance(layer, numbers.Integral) and not isinstance(
      layer, bool
    )
    if not is_index or layer < 0:
      raise ValueError(
        f'{field} is {layers!r}, and {layer!r} is not a valid index. {fix}.'
      )

    if num_feature_maps is not None and layer >= num_feature_maps:
      raise ValueError(
        f'{field} is {layers!r}, and {layer!r} is out of range because the '
        f'feature network returns {num_feature_maps} feature maps. {fix}.'
      )

  if len(set(layers)) != len(layers):
    raise ValueError(f'{field} is {layers!r}, which repeats an index. {fix}.')


def _validate_path(
  field: str, value: Any, network: str, expected_path: str
) -> None:
  if value is None or not isinstance(value, str) or not value:
    raise ValueError(
      f'{field} is {value!r}, but network {network!r} requires it. Set it to '
      f'{expected_path}, or choose another network.'
    )


def _validate_random_network(prefix: str, term: Any) -> int:
  """Checks the random network's seed and widths; returns the map count."""
  seed = term.get('seed', 0)
  if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
    raise ValueError(
      f'{prefix}.seed is {seed!r}, which is invalid. Set it to an integer, '
      f'such as 0.'
    )

  widths = term.get('widths', DEFAULT_RANDOM_WIDTHS)
  is_tuple = isinstance(widths, Sequence) and not isinstance(widths, str)
  if (
    not is_tuple
    or not widths
    or not all(
      isinstance(width, numbers.Integral)
      and not isinstance(width, bool)
      and width > 0
      for width in widths
    )
  ):
    raise ValueError(
      f'{prefix}.widths is {widths!r}, which is invalid. Set it to a '
      f'non-empty tuple of positive channel counts, such as (32, 64, 128).'
    )
  return len(widths)


def _validate_feature_network(
  prefix: str, term: Any, num_feature_maps: int | None
) -> None:
  """Checks a gram or features term's network, its options and layers."""
  network = term.get('network', DEFAULT_FEATURE_NETWORK)
  _validate_choice(f'{prefix}.network', network, FEATURE_NETWORKS)

  if network == 'vgg16':
    _validate_path(
      f'{prefix}.weights_path',
      term.get('weights_path'),
      network,
      'the path of a local Keras VGG16 ImageNet "notop" HDF5 weights file',
    )
    _validate_layer_names(f'{prefix}.layers', term.get('layers'))
    return

  if network == 'random':
    num_feature_maps = _validate_random_network(prefix, term)
  elif network == 'checkpoint':
    _validate_path(
      f'{prefix}.checkpoint_dir',
      term.get('checkpoint_dir'),
      network,
      'the --workdir of an earlier run that wrote a checkpoint',
    )
    # The stage count is known only once the checkpoint is read.
    num_feature_maps = None

  _validate_layers(f'{prefix}.layers', term.get('layers'), num_feature_maps)


def _validate_window_size(field: str, value: Any) -> None:
  is_integer = isinstance(value, numbers.Integral) and not isinstance(
    value, bool
  )
  if not is_integer or value < 1 or value % 2 == 0:
    raise ValueError(
      f'{field} is {value!r}, which is invalid. Set it to an odd positive '
      f'integer no larger than the image height and width, such as 11, or 7 '
      f'for small images.'
    )


def _validate_structural_term(prefix: str, term: Any) -> None:
  window = term.get('window', _STRUCTURAL_DEFAULTS['window'])
  _validate_choice(f'{prefix}.window', window, structural.WINDOWS)
  window_size = term.get('window_size', _STRUCTURAL_DEFAULTS['window_size'])
  _validate_window_size(f'{prefix}.window_size', window_size)
  for option in ('sigma', 'k1', 'k2'):
    _validate_positive_option(f'{prefix}.{option}', term.get(option))


def _validate_choice(field: str, value: Any, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(
      f'{field} is {value!r}, which is invalid. Use one of: '
      f'{_format_choices(choices)}.'
    )


def _validate_term(name: str, term: Any, num_feature_maps: int | None) -> None:
  prefix = f'loss.terms.{name}'
  if not _is_config(term):
    raise ValueError(
      f'{prefix} is {term!r}, which is invalid. Set it to a ConfigDict with '
      f'fields: {_format_choices(_TERM_FIELDS[name])}.'
    )

  for key in term:
    if key not in _TERM_FIELDS[name]:
      raise ValueError(
        f'{prefix}.{key} is not a known field of the {name} term. Valid '
        f'fields: {_format_choices(_TERM_FIELDS[name])}.'
      )

  _validate_weight(f'{prefix}.weight', term.get('weight'))
  if name in _STRUCTURAL_TERMS:
    _validate_structural_term(prefix, term)
    return

  if name == 'tv':
    return

  if name == 'focal_frequency':
    _validate_positive_option(f'{prefix}.alpha', term.get('alpha'))
    return

  _validate_distance(name, f'{prefix}.distance', term.get('distance'))
  _validate_positive_option(f'{prefix}.delta', term.get('delta'))
  _validate_positive_option(f'{prefix}.epsilon', term.get('epsilon'))
  _validate_alpha(f'{prefix}.alpha', term.get('alpha'))
  _validate_positive_option(f'{prefix}.scale', term.get('scale'))

  if name == 'edge':
    output = term.get('output', _DEFAULT_EDGE_OUTPUT)
    _validate_choice(f'{prefix}.output', output, transforms.EDGE_OUTPUTS)
    kernel = term.get('kernel', _DEFAULT_EDGE_KERNEL)
    _validate_choice(f'{prefix}.kernel', kernel, transforms.EDGE_KERNELS)
    padding = term.get('padding', _DEFAULT_EDGE_PADDING)
    _validate_choice(f'{prefix}.padding', padding, transforms.EDGE_PADDINGS)

  if name == 'mean_shift':
    mean = term.get('mean', _DEFAULT_MEAN_SHIFT_MEAN)
    _validate_choice(f'{prefix}.mean', mean, transforms.MEAN_SHIFT_MEANS)

  if name == 'gram':
    normalization = term.get('normalization', _DEFAULT_GRAM_NORMALIZATION)
    _validate_choice(
      f'{prefix}.normalization', normalization, transforms.GRAM_NORMALIZATIONS
    )

  if name in _FEATURE_TERMS:
    _validate_feature_network(prefix, term, num_feature_maps)


def validate(loss_config: Any, *, num_feature_maps: int | None = None) -> None:
  """Raise ValueError if `loss_config` does not describe a usable loss.

  Every term under `loss_config.terms` is checked, whatever its weight:

  - The term name is one of TERMS, and every field is known for that term.
  - `weight` is a finite number >= 0.
  - `distance` is known, and 'bce' appears only on the pixel term. The ssim,
    ms_ssim, tv and focal_frequency terms have no distance.
  - `delta`, `epsilon` and `scale`, when set, are positive finite numbers,
    and `alpha` is a real number or -inf, or a positive finite number on
    the focal_frequency term.
  - The edge `output`, `kernel` and `padding`, the mean_shift `mean` and
    the gram `normalization` are known choices.
  - The ssim and ms_ssim `window` is a known choice, `window_size` is an odd
    positive integer, and `sigma`, `k1` and `k2`, when set, are positive
    finite numbers. Whether the window fits the images is checked when the
    loss function is traced.
  - The gram and features `network` is one of FEATURE_NETWORKS. 'vgg16'
    needs `weights_path` and 'checkpoint' needs `checkpoint_dir`, and the
    'random' `seed` is an integer and its `widths` positive integers.
  - The gram and features `layers` are a non-empty tuple of distinct
    indices >= 0, or of layer names for 'vgg16'. For 'random' the indices
    must be below the number of widths.

  At least one term must have a positive weight. Each message names the config
  field, its value and the valid choices. The checks run in plain Python,
  before anything is compiled.

  Args:
    loss_config: the `config.loss` ConfigDict, or a dict of the same layout.
    num_feature_maps: number of feature maps that the autoencoder's encoder
      returns. When given, every layer index of a gram or features term on
      the 'encoder' network must be below it. When None, only negative
      indices are rejected here and `make_loss`'s loss function checks the
      rest when it is traced.

  Raises:
    ValueError: if the config is invalid.
  """
  if not _is_config(loss_config):
    raise ValueError(
      f'loss is {loss_config!r}, which is invalid. Set config.loss to a '
      f'ConfigDict with a terms field.'
    )

  terms = loss_config.get('terms')
  if terms is None or not _is_config(terms):
    raise ValueError(
      f'loss.terms is {terms!r}, which is invalid. Set it to a ConfigDict '
      f'with one entry per term, from: {_format_choices(TERMS)}.'
    )

  for name in terms:
    if name not in TERMS:
      raise ValueError(
        f'loss.terms.{name} is not a known term. Valid terms: '
        f'{_format_choices(TERMS)}.'
      )

  for name in terms:
    _validate_term(name, terms.get(name), num_feature_maps)

  weights = [terms.get(name).get('weight') for name in terms]
  if not any(weight > 0 for weight in weights):
    raise ValueError(
      f'loss.terms has no term with a positive weight (terms: '
      f'{_format_choices(list(terms.keys()))}). Set at least one '
      f'loss.terms.<term>.weight above 0.'
    )


def _make_distance(term: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Return the term's distance with its configured option bound."""
  name = term.get('distance')
  distance = distances.DISTANCES[name]

  options = {}
  for option in _DISTANCE_OPTIONS.get(name, ()):
    value = term.get(option)
    if value is not None:
      options[option] = float(value)

  if not options:
    return distance
  return functools.partial(distance, **options)


def _make_pixel_term(term: Any) -> _TermFn:
  if term.get('distance') == _BCE:

    def bce_term(params, images, logits, reconstructions, mask):
      return distances.bce_with_logits(logits, images, weights=mask)

    return bce_term

  distance = _make_distance(term)

  def pixel_term(params, images, logits, reconstructions, mask):
    return distance(images, reconstructions, weights=mask)

  return pixel_term


def _make_edge_term(term: Any) -> _TermFn:
  distance = _make_distance(term)
  options = {
    'output': term.get('output', _DEFAULT_EDGE_OUTPUT),
    'kernel': term.get('kernel', _DEFAULT_EDGE_KERNEL),
    'padding': term.get('padding', _DEFAULT_EDGE_PADDING),
  }

  def edge_term(params, images, logits, reconstructions, mask):
    target_edges = transforms.edge_map(images, **options)
    reconstruction_edges = transforms.edge_map(reconstructions, **options)
    if mask is not None and mask.shape[-1] > 1:
      # Edge channel K * c + k is component k of image channel c.
      components = target_edges.shape[-1] // mask.shape[-1]
      mask = jnp.repeat(mask, components, axis=-1)
    return distance(target_edges, reconstruction_edges, weights=mask)

  return edge_term


def _make_mean_shift_term(term: Any) -> _TermFn:
  distance = _make_distance(term)
  mean = term.get('mean', _DEFAULT_MEAN_SHIFT_MEAN)

  def mean_shift_term(params, images, logits, reconstructions, mask):
    target_shifted = transforms.mean_shift(images, mean=mean)
    reconstruction_shifted = transforms.mean_shift(reconstructions, mean=mean)
    return distance(target_shifted, reconstruction_shifted, weights=mask)

  return mean_shift_term


def _make_standardized_term(term: Any) -> _TermFn:
  distance = _make_distance(term)

  def standardized_term(params, images, logits, reconstructions, mask):
    target_standardized = transforms.standardize(images)
    reconstruction_standardized = transforms.standardize(reconstructions)
    return distance(
      target_standardized, reconstruction_standardized, weights=mask
    )

  return standardized_term


def _make_fourier_term(term: Any) -> _TermFn:
  distance = _make_distance(term)

  def fourier_term(params, images, logits, reconstructions, mask):
    images = _apply_mask(images, mask)
    reconstructions = _apply_mask(reconstructions, mask)
    target_amplitude = transforms.fourier_amplitude(images)
    reconstruction_amplitude = transforms.fourier_amplitude(reconstructions)
    return distance(target_amplitude, reconstruction_amplitude)

  return fourier_term


def _make_focal_frequency_term(term: Any) -> _TermFn:
  options = {}
  if term.get('alpha') is not None:
    options['alpha'] = float(term.get('alpha'))

  def focal_frequency_term(params, images, logits, reconstructions, mask):
    images = _apply_mask(images, mask)
    reconstructions = _apply_mask(reconstructions, mask)
    return distances.focal_frequency(images, reconstructions, **options)

  return focal_frequency_term


def _apply_mask(images: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return images
  return images * mask


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Return sum(mask * values) / sum(mask) per example, 0 for a zero mask."""
  weights = jnp.broadcast_to(mask, values.shape)
  axes = tuple(range(1, values.ndim))
  total_weight = jnp.sum(weights, axis=axes)
  has_weight = total_weight > 0
  safe_total_weight = jnp.where(has_weight, total_weight, 1.0)
  weighted_sum = jnp.sum(weights * values, axis=axes)
  return jnp.where(has_weight, weighted_sum / safe_total_weight, 0.0)


def _tv_term(params, images, logits, reconstructions, mask):
  return regularizers.total_variation(_apply_mask(reconstructions, mask))


def _feature_indices(term: Any) -> tuple[int, ...]:
  """Returns the indices of the term's layers in the network's output.

  A 'vgg16' network returns exactly the maps of its named layers, in order,
  so its indices count them. Other networks take the configured indices.
  """
  layers = tuple(term.get('layers'))
  if term.get('network', DEFAULT_FEATURE_NETWORK) == 'vgg16':
    return tuple(range(len(layers)))
  return layers


def _paired_features(
  name: str,
  encode_features: EncodeFeatures,
  layers: tuple[int, ...],
  params: Any,
  images: jax.Array,
  reconstructions: jax.Array,
) -> list[tuple[jax.Array, jax.Array]]:
  """Returns (target, reconstruction) feature maps of `layers`.

  The network's parameters are constants here, so the term's gradient
  reaches only the reconstruction and cannot shrink the features to zero.
  """
  frozen_params = jax.lax.stop_gradient(params)
  target_features = jax.lax.stop_gradient(
    encode_features(frozen_params, images)
  )
  reconstruction_features = encode_features(frozen_params, reconstructions)

  num_feature_maps = len(target_features)
  if max(layers) >= num_feature_maps:
    raise ValueError(
      f'loss.terms.{name}.layers is {layers!r}, but encode_features returned '
      f'{num_feature_maps} feature maps. Use indices in '
      f'0..{num_feature_maps - 1}.'
    )

  return [(target_features[i], reconstruction_features[i]) for i in layers]


def _make_gram_term(term: Any, encode_features: EncodeFeatures) -> _TermFn:
  distance = _make_distance(term)
  layers = _feature_indices(term)
  normalization = term.get('normalization', _DEFAULT_GRAM_NORMALIZATION)

  def gram_term(params, images, logits, reconstructions, mask):
    images = _apply_mask(images, mask)
    reconstructions = _apply_mask(reconstructions, mask)
    pairs = _paired_features(
      'gram', encode_features, layers, params, images, reconstructions
    )
    per_layer = []
    for target, reconstruction in pairs:
      target_gram = transforms.gram(target, normalization=normalization)
      reconstruction_gram = transforms.gram(
        reconstruction, normalization=normalization
      )
      per_layer.append(distance(target_gram, reconstruction_gram))

    return jnp.mean(jnp.stack(per_layer), axis=0)

  return gram_term


def _make_features_term(term: Any, encode_features: EncodeFeatures) -> _TermFn:
  distance = _make_distance(term)
  layers = _feature_indices(term)

  def features_term(params, images, logits, reconstructions, mask):
    images = _apply_mask(images, mask)
    reconstructions = _apply_mask(reconstructions, mask)
    pairs = _paired_features(
      'features', encode_features, layers, params, images, reconstructions
    )
    per_layer = [distance(target, output) for target, output in pairs]
    return jnp.mean(jnp.stack(per_layer), axis=0)

  return features_term


def _make_structural_term(name: str, term: Any) -> _TermFn:
  options = {
    option: term.get(option, default)
    for option, default in _STRUCTURAL_DEFAULTS.items()
  }
  for option in ('sigma', 'k1', 'k2'):
    options[option] = float(options[option])
  options['window_size'] = int(options['window_size'])
  similarity = structural.ssim if name == 'ssim' else structural.ms_ssim
  window_size = options['window_size']

  def structural_term(params, images, logits, reconstructions, mask):
    _, height, width, _ = images.shape
    if window_size > min(height, width):
      raise ValueError(
        f'loss.terms.{name}.window_size is {window_size}, which is larger '
        f'than the {height}x{width} images. Set it to an odd number no '
        f'larger than {min(height, width)}.'
      )

    if name == 'ms_ssim':
      scales = structural.ms_ssim_scales(height, width, window_size=window_size)
      logging.info(
        'loss.terms.ms_ssim uses %d of %d scales for %dx%d images with '
        'window_size %d.',
        scales,
        len(structural.MS_SSIM_WEIGHTS),
        height,
        width,
        window_size,
      )

    if mask is None:
      return 1.0 - similarity(reconstructions, images, **options)

    if name == 'ms_ssim':
      masked_images = _apply_mask(images, mask)
      masked_reconstructions = _apply_mask(reconstructions, mask)
      return 1.0 - similarity(masked_reconstructions, masked_images, **options)

    ssim_map = similarity(reconstructions, images, output='map', **options)
    # Map position (i, j) is the window centred on pixel (i + r, j + r).
    radius = window_size // 2
    map_height, map_width = ssim_map.shape[1:3]
    centre_mask = mask[
      :, radius : radius + map_height, radius : radius + map_width, :
    ]
    return 1.0 - _masked_mean(ssim_map, centre_mask)

  return structural_term


def _check_batch(images: jax.Array, logits: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(
      f'loss: images must be NHWC with shape [B, H, W, C], got shape '
      f'{images.shape}.'
    )

  if logits.shape != images.shape:
    raise ValueError(
      f'loss: logits must have the shape of images, got {logits.shape} for '
      f'logits and {images.shape} for images.'
    )


def _check_mask(images: jax.Array, mask: jax.Array | None) -> None:
  if mask is None:
    return

  batch, height, width, channels = images.shape
  if (
    mask.ndim != 4
    or mask.shape[:3] != (batch, height, width)
    or (mask.shape[3] not in (1, channels))
  ):
    raise ValueError(
      f'loss: mask must have shape [B, H, W, 1] or [B, H, W, C] for images '
      f'of shape {images.shape}, got shape {mask.shape}.'
    )


def make_loss(
  loss_config: Any,
  *,
  encode_features: EncodeFeatures | None = None,
  feature_networks: Mapping[str, EncodeFeatures] | None = None,
  all_terms: bool = False,
) -> LossFn:
  """Build the jit-compiled weighted loss described by `loss_config`.

  The returned `loss_fn(params, images, logits, mask=None)` takes NHWC
  images x in [0, 1] and the autoencoder's logits of the same shape
  [B, H, W, C]. The optional per-pixel weight map `mask`, of shape
  [B, H, W, 1] or [B, H, W, C] in [0, 1], applies per term as the module
  docstring describes. It returns `(total, values)`. `values` maps each
  computed term name to its unweighted per-example value of shape [B].
  `total` of shape [B] is the sum of weight * value over the terms with a
  positive weight. The reconstruction is sigmoid(logits). Binary
  cross-entropy on the pixel term reads the logits, and every other term
  reads the reconstruction.

  The gram and features terms call `encode_features(stop_gradient(params),
  ...)` on x and on the reconstruction, and the features of x are under
  stop_gradient as well. The network's parameters are therefore held fixed
  inside these terms, and their gradient flows only through the
  reconstruction. So a term cannot be lowered by collapsing the features.
  With the 'encoder' network, other terms still train the encoder, so the
  feature space that the term compares in changes during training.

  Args:
    loss_config: the `config.loss` ConfigDict, checked with `validate`.
    encode_features: pure function where `encode_features(params, images)`
      returns a sequence of NHWC feature maps. Used by a computed gram or
      features term that `feature_networks` does not cover.
    feature_networks: `encode_features` functions keyed by term name
      ('gram', 'features'), such as those of `models.feature_nets.create`.
    all_terms: if False, only terms with a positive weight are computed and
      returned. If True, every configured term is computed and returned, for
      evaluation logging, and `total` still uses only the positive weights.

  Returns:
    The jit-compiled `loss_fn`. It raises ValueError when traced if images
    are not rank 4, if logits have a different shape, if the mask has a
    shape other than [B, H, W, 1] or [B, H, W, C], if a gram layer index
    is not below the number of feature maps, or if the window of a computed
    ssim or ms_ssim term is larger than the image height or width.

  Raises:
    ValueError: if the config is invalid, or if a gram or features term is
      computed and neither `feature_networks` nor `encode_features` gives it
      a feature network.
  """
  validate(loss_config)
  terms = loss_config.get('terms')

  weights = {}
  for name in TERMS:
    if name in terms:
      weights[name] = float(terms.get(name).get('weight'))

  computed = tuple(name for name in weights if all_terms or weights[name] > 0)
  weighted = tuple(name for name in computed if weights[name] > 0)

  networks = {}
  for name in _FEATURE_TERMS:
    if name not in computed:
      continue
    networks[name] = (feature_networks or {}).get(name, encode_features)
    if networks[name] is None:
      raise ValueError(
        f'make_loss: loss.terms.{name} is computed but encode_features is '
        f'None and feature_networks has no {name!r} entry. Pass one of them, '
        f'or set loss.terms.{name}.weight to 0 and all_terms to False, or '
        f'remove the {name} term.'
      )

  term_fns = {}
  for name in computed:
    term = terms.get(name)
    if name == 'pixel':
      term_fns[name] = _make_pixel_term(term)
    elif name == 'edge':
      term_fns[name] = _make_edge_term(term)
    elif name == 'mean_shift':
      term_fns[name] = _make_mean_shift_term(term)
    elif name == 'gram':
      term_fns[name] = _make_gram_term(term, networks[name])
    elif name == 'features':
      term_fns[name] = _make_features_term(term, networks[name])
    elif name == 'standardized':
      term_fns[name] = _make_standardized_term(term)
    elif name == 'tv':
      term_fns[name] = _tv_term
    elif name == 'fourier':
      term_fns[name] = _make_fourier_term(term)
    elif name == 'focal_frequency':
      term_fns[name] = _make_focal_frequency_term(term)
    else:
      term_fns[name] = _make_structural_term(name, term)

  def loss_fn(params, images, logits, mask=None):
    _check_batch(images, logits)
    _check_mask(images, mask)
    images = images.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    if mask is not None:
      mask = mask.astype(jnp.float32)
    reconstructions = jax.nn.sigmoid(logits)

    values = {}
    for name in computed:
      values[name] = term_fns[name](
        params, images, logits, reconstructions, mask
      )

    total = jnp.zeros(images.shape[0], dtype=jnp.float32)
    for name in weighted:
      total = total + weights[name] * values[name]

    return total, values

  return jax.jit(loss_fn)
