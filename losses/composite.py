"""Weighted sum of reconstruction loss terms, built from `config.loss`.

The loss compares a batch of NHWC images x of shape [B, H, W, C] in [0, 1]
with the autoencoder's logits of the same shape. The reconstruction is
x_hat = sigmoid(logits). Each term is a distance D from `losses.distances`
applied after a transform from `losses.transforms`:

  pixel       D(x, x_hat). With distance 'bce' it is the binary
              cross-entropy between the logits and targets x.
  edge        D(Sobel(x), Sobel(x_hat)).
  mean_shift  D(x - mean(x), x_hat - mean(x_hat)), means per image and channel.
  gram        D(Gram(Enc(x)), Gram(Enc(x_hat))) for each listed encoder
              feature map, averaged over the maps.

Config schema, one optional entry per term under `loss.terms`:

  pixel:      weight, distance
  edge:       weight, distance, output ('components' or 'magnitude',
              default 'components')
  mean_shift: weight, distance
  gram:       weight, distance, layers (encoder feature map indices),
              normalization ('none', 'hw' or 'chw', default 'chw')

Any term may also set `delta` (used by the 'huber' distance) and `epsilon`
(used by 'charbonnier'). The Sobel magnitude of the edge term keeps the
default epsilon of `transforms.sobel` and ignores this field. All values are
computed in float32 and every term returns one value per example, shape [B].
The caller reduces over the batch.
"""

from collections.abc import Callable
from collections.abc import Sequence
import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from losses import distances
from losses import transforms

TERMS = ('pixel', 'edge', 'mean_shift', 'gram')

# Binary cross-entropy reads logits, so it is valid only on the pixel term.
_BCE = 'bce'
_DISTANCE_CHOICES = (*distances.DISTANCES, _BCE)

# Options of a distance, keyed by the distance's config name.
_DISTANCE_OPTIONS = {'huber': 'delta', 'charbonnier': 'epsilon'}

_COMMON_FIELDS = ('weight', 'distance', 'delta', 'epsilon')
_TERM_FIELDS = {
  'pixel': _COMMON_FIELDS,
  'edge': (*_COMMON_FIELDS, 'output'),
  'mean_shift': _COMMON_FIELDS,
  'gram': (*_COMMON_FIELDS, 'layers', 'normalization'),
}

_DEFAULT_EDGE_OUTPUT = 'components'
_DEFAULT_GRAM_NORMALIZATION = 'chw'

# encode_features(params, images) -> the encoder's NHWC feature maps.
EncodeFeatures = Callable[[Any, jax.Array], Sequence[jax.Array]]
# loss_fn(params, images, logits) -> (total [B], {term name: value [B]}).
LossFn = Callable[
  [Any, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]
]
# term(params, images, logits, reconstructions) -> value [B].
_TermFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


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


def _validate_layers(
  field: str, layers: Any, num_feature_maps: int | None
) -> None:
  fix = 'Set it to a non-empty tuple of distinct feature map indices'
  if num_feature_maps is not None:
    fix += f' in 0..{num_feature_maps - 1}'

  if layers is None:
    raise ValueError(f'{field} is missing. {fix}.')

  # validate reports every config error as ValueError, wrong types included.
  if isinstance(layers, str) or not isinstance(layers, Sequence):
    message = f'{field} is {layers!r}, which is not a tuple. {fix}.'
    raise ValueError(message)  # noqa: TRY004

  if not layers:
    raise ValueError(f'{field} is empty. {fix}.')

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
        f'encoder returns {num_feature_maps} feature maps. {fix}.'
      )

  if len(set(layers)) != len(layers):
    raise ValueError(f'{field} is {layers!r}, which repeats an index. {fix}.')


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
  _validate_distance(name, f'{prefix}.distance', term.get('distance'))
  _validate_positive_option(f'{prefix}.delta', term.get('delta'))
  _validate_positive_option(f'{prefix}.epsilon', term.get('epsilon'))

  if name == 'edge':
    output = term.get('output', _DEFAULT_EDGE_OUTPUT)
    _validate_choice(f'{prefix}.output', output, transforms.SOBEL_OUTPUTS)

  if name == 'gram':
    normalization = term.get('normalization', _DEFAULT_GRAM_NORMALIZATION)
    _validate_choice(
      f'{prefix}.normalization', normalization, transforms.GRAM_NORMALIZATIONS
    )
    _validate_layers(f'{prefix}.layers', term.get('layers'), num_feature_maps)


def validate(loss_config: Any, *, num_feature_maps: int | None = None) -> None:
  """Raise ValueError if `loss_config` does not describe a usable loss.

  Every term under `loss_config.terms` is checked, whatever its weight:

  - The term name is one of TERMS, and every field is known for that term.
  - `weight` is a finite number >= 0.
  - `distance` is known, and 'bce' appears only on the pixel term.
  - `delta` and `epsilon`, when set, are positive finite numbers.
  - The edge `output` and the gram `normalization` are known choices.
  - The gram `layers` are a non-empty tuple of distinct indices >= 0.

  At least one term must have a positive weight. Each message names the config
  field, its value and the valid choices. The checks run in plain Python,
  before anything is compiled.

  Args:
    loss_config: the `config.loss` ConfigDict, or a dict of the same layout.
    num_feature_maps: number of feature maps that the encoder returns. When
      given, every gram layer index must be below it. When None, only
      negative indices are rejected here and `make_loss`'s loss function
      checks the rest when it is traced.

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

  option = _DISTANCE_OPTIONS.get(name)
  value = term.get(option) if option is not None else None
  if value is None:
    return distance

  return functools.partial(distance, **{option: float(value)})


def _make_pixel_term(term: Any) -> _TermFn:
  if term.get('distance') == _BCE:

    def bce_term(params, images, logits, reconstructions):
      return distances.bce_with_logits(logits, images)

    return bce_term

  distance = _make_distance(term)

  def pixel_term(params, images, logits, reconstructions):
    return distance(images, reconstructions)

  return pixel_term


def _make_edge_term(term: Any) -> _TermFn:
  distance = _make_distance(term)
  output = term.get('output', _DEFAULT_EDGE_OUTPUT)

  def edge_term(params, images, logits, reconstructions):
    target_edges = transforms.sobel(images, output=output)
    reconstruction_edges = transforms.sobel(reconstructions, output=output)
    return distance(target_edges, reconstruction_edges)

  return edge_term


def _make_mean_shift_term(term: Any) -> _TermFn:
  distance = _make_distance(term)

  def mean_shift_term(params, images, logits, reconstructions):
    target_shifted = transforms.mean_shift(images)
    reconstruction_shifted = transforms.mean_shift(reconstructions)
    return distance(target_shifted, reconstruction_shifted)

  return mean_shift_term


def _make_gram_term(term: Any, encode_features: EncodeFeatures) -> _TermFn:
  distance = _make_distance(term)
  layers = tuple(term.get('layers'))
  normalization = term.get('normalization', _DEFAULT_GRAM_NORMALIZATION)

  def gram_term(params, images, logits, reconstructions):
    # The encoder's parameters are constants inside this term, so its gradient
    # reaches only the reconstruction and cannot shrink the features to zero.
    frozen_params = jax.lax.stop_gradient(params)
    target_features = jax.lax.stop_gradient(
      encode_features(frozen_params, images)
    )
    reconstruction_features = encode_features(frozen_params, reconstructions)

    num_feature_maps = len(target_features)
    if max(layers) >= num_feature_maps:
      raise ValueError(
        f'loss.terms.gram.layers is {layers!r}, but encode_features returned '
        f'{num_feature_maps} feature maps. Use indices in '
        f'0..{num_feature_maps - 1}.'
      )

    per_layer = []
    for layer in layers:
      target_gram = transforms.gram(
        target_features[layer], normalization=normalization
      )
      reconstruction_gram = transforms.gram(
        reconstruction_features[layer], normalization=normalization
      )
      per_layer.append(distance(target_gram, reconstruction_gram))

    return jnp.mean(jnp.stack(per_layer), axis=0)

  return gram_term


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


def make_loss(
  loss_config: Any,
  *,
  encode_features: EncodeFeatures | None = None,
  all_terms: bool = False,
) -> LossFn:
  """Build the jit-compiled weighted loss described by `loss_config`.

  The returned `loss_fn(params, images, logits)` takes NHWC images x in
  [0, 1] and the autoencoder's logits of the same shape [B, H, W, C], and
  returns `(total, values)`. `values` maps each computed term name to its
  unweighted per-example value of shape [B]. `total` of shape [B] is the
  sum of weight * value over the terms with a positive weight. The
  reconstruction is sigmoid(logits). Binary cross-entropy on the pixel term
  reads the logits, and every other term reads the reconstruction.

  The gram term calls `encode_features(stop_gradient(params), ...)` on x and
  on the reconstruction, and the features of x are under stop_gradient as
  well. The encoder's parameters are therefore held fixed inside this term,
  and its gradient flows only through the reconstruction. So the term cannot
  be lowered by collapsing the features. Other terms still train the encoder,
  so the feature space that the gram term compares in changes during
  training.

  Args:
    loss_config: the `config.loss` ConfigDict, checked with `validate`.
    encode_features: pure function where `encode_features(params, images)`
      returns a sequence of NHWC feature maps, one per encoder stage.
      Required when the gram term is computed.
    all_terms: if False, only terms with a positive weight are computed and
      returned. If True, every configured term is computed and returned, for
      evaluation logging, and `total` still uses only the positive weights.

  Returns:
    The jit-compiled `loss_fn`. It raises ValueError when traced if images
    are not rank 4, if logits have a different shape, or if a gram layer
    index is not below the number of feature maps.

  Raises:
    ValueError: if the config is invalid, or if the gram term is computed and
      `encode_features` is None.
  """
  validate(loss_config)
  terms = loss_config.get('terms')

  weights = {}
  for name in TERMS:
    if name in terms:
      weights[name] = float(terms.get(name).get('weight'))

  computed = tuple(name for name in weights if all_terms or weights[name] > 0)
  weighted = tuple(name for name in computed if weights[name] > 0)

  if 'gram' in computed and encode_features is None:
    raise ValueError(
      'make_loss: loss.terms.gram is computed but encode_features is None. '
      'Pass encode_features, or set loss.terms.gram.weight to 0 and '
      'all_terms to False, or remove the gram term.'
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
    else:
      term_fns[name] = _make_gram_term(term, encode_features)

  def loss_fn(params, images, logits):
    _check_batch(images, logits)
    images = images.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    reconstructions = jax.nn.sigmoid(logits)

    values = {}
    for name in computed:
      values[name] = term_fns[name](params, images, logits, reconstructions)

    total = jnp.zeros(images.shape[0], dtype=jnp.float32)
    for name in weighted:
      total = total + weights[name] * values[name]

    return total, values

  return jax.jit(loss_fn)
