"""Checks a run config before anything is compiled or written to the workdir.

Every error is a `ValueError` whose message names the config field, the value
and the fix.
"""

import math
import numbers

from losses import composite
from train import train_state

_POSITIVE_INTS = (
  'batch_size',
  'num_train_steps',
  'eval_batch_size',
  'eval_every_steps',
  'log_every_steps',
  'checkpoint_every_steps',
  'keep_checkpoints',
)
_NON_NEGATIVE_INTS = ('warmup_steps', 'num_grid_images')


def _check_int(config, field, *, minimum):
  value = config[field]
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise ValueError(
      f'config.{field} must be an integer, got {value!r} '
      f'({type(value).__name__}).'
    )
  if value < minimum:
    raise ValueError(f'config.{field} must be at least {minimum}, got {value}.')


def _is_finite_number(value):
  return (
    isinstance(value, numbers.Real)
    and not isinstance(value, bool)
    and math.isfinite(value)
  )


def _check_choice(field, value, choices):
  if value not in choices:
    raise ValueError(
      f'{field} is {value!r}, which is not one of {", ".join(choices)}.'
    )


def validate_config(config):
  """Checks the fields that do not depend on the dataset or the devices.

  Args:
    config: the run config.

  Raises:
    ValueError: naming the first invalid field.
  """
  for field in _POSITIVE_INTS:
    _check_int(config, field, minimum=1)
  for field in _NON_NEGATIVE_INTS:
    _check_int(config, field, minimum=0)

  if not isinstance(config.eval_all_terms, bool):
    raise ValueError(
      f'config.eval_all_terms must be True or False, got '
      f'{config.eval_all_terms!r}.'
    )

  learning_rate = config.learning_rate
  if not _is_finite_number(learning_rate) or learning_rate <= 0:
    raise ValueError(
      'config.learning_rate must be a positive finite number, '
      f'got {learning_rate!r}.'
    )
  weight_decay = config.weight_decay
  if not _is_finite_number(weight_decay) or weight_decay < 0:
    raise ValueError(
      f'config.weight_decay must be a finite number >= 0, got {weight_decay!r}.'
    )
  if config.warmup_steps > config.num_train_steps:
    raise ValueError(
      f'config.warmup_steps ({config.warmup_steps}) is longer than '
      f'config.num_train_steps ({config.num_train_steps}); lower it.'
    )
  _check_choice('config.optimizer', config.optimizer, train_state.OPTIMIZERS)
  _check_choice(
    'config.lr_schedule', config.lr_schedule, train_state.LR_SCHEDULES
  )

  widths = tuple(config.model.widths)
  if not widths or not all(
    isinstance(w, numbers.Integral) and w > 0 for w in widths
  ):
    raise ValueError(
      'config.model.widths must be a non-empty tuple of positive integers, '
      f'got {config.model.widths!r}.'
    )
  latent_dim = config.model.latent_dim
  if not isinstance(latent_dim, numbers.Integral) or latent_dim < 1:
    raise ValueError(
      f'config.model.latent_dim must be a positive integer, got {latent_dim!r}.'
    )

  composite.validate(config.loss, num_feature_maps=len(widths))


def validate_for_data(config, *, image_shape, device_count, process_count):
  """Checks the fields that depend on the images and the devices.

  Args:
    config: the run config.
    image_shape: (H, W, C) of the dataset's images.
    device_count: local devices of this process.
    process_count: processes in the run.

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
