"""tf.data input pipelines that feed NHWC float32 image batches to JAX.

`get_builder` returns a prepared tfds builder. Datasets in
`train.datasets.EMBEDDED_DATASETS` prepare from files in installed packages;
any other tfds dataset must already be prepared in `data_dir` or be
downloadable. `train_batches` yields shuffled training batches forever, in
an order fixed by the seed and the step, and `eval_batches` makes one padded
pass over a split. Both read only this process's shard of the split
(`tfds.even_splits`), so the shards of all processes are disjoint and
together cover the split. An image that cannot be decoded, or that has
another shape than the dataset declares, raises a ValueError naming the
dataset and the example.

Images come out as float32 in [0, 1] with shape [batch, height, width,
channels]. The dataset must have an 'image' feature with a fully known
(height, width, channels) shape. Importing this module hides the GPUs from
TensorFlow, unless its runtime has already started, so they stay free for JAX.
"""

from collections.abc import Iterator
import math
import os
import re
import time

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from train import datasets as embedded_datasets


def _hide_gpus_from_tensorflow() -> None:
  """Hides GPUs from TensorFlow so that it does not reserve their memory."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError as err:
    # TensorFlow raises this once its runtime is initialised. It then already
    # owns whatever devices it found, and there is nothing left to change.
    logging.warning('Could not hide GPUs from TensorFlow: %s', err)


_hide_gpus_from_tensorflow()

# tf.data threads per pipeline. Decoding small images needs only a few, and
# the remaining CPU cores stay free for JAX and the training loop.
_TF_DATA_THREADS = max(1, min(4, os.cpu_count() or 1))
# End of the epoch range of `train_batches`; no run reaches it.
_NEVER_ENDING = 2**62
# Train shards up to this size are decoded once and kept in memory.
MAX_CACHED_TRAIN_BYTES = 1 << 30


def get_builder(
  name: str, data_dir: str | None = None, *, download: bool = True
) -> tfds.core.DatasetBuilder:
  """Builds the tfds builder for `name` and prepares the data if needed.

  The dataset is prepared only if `data_dir` has no prepared copy of it, so
  later calls with the same `data_dir` reuse the files.

  NOTE: Several processes that prepare the same dataset into one shared
  directory at the same time can collide when tfds renames its temporary
  directory. Prepare once before starting a multi-process job.

  Args:
    name: tfds dataset name, optionally with config and version
      ('mnist', 'cifar10:3.0.2'), or one of `EMBEDDED_DATASETS`.
    data_dir: tfds data directory. None uses the tfds default
      (~/tensorflow_datasets unless TFDS_DATA_DIR is set).
    download: whether a dataset that is not embedded and not prepared may be
      downloaded. Without network access tfds retries a download for minutes
      before it fails, so False makes such a run fail at once.

  Returns:
    A builder whose splits can be read with `as_dataset`.

  Raises:
    ValueError: tfds does not know `name`, or the dataset has no 'image'
      feature.
    RuntimeError: the dataset is not prepared in `data_dir`, and preparing it
      failed, for example because the download failed.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as err:
    raise ValueError(
      f'Unknown dataset {name!r}: tfds has no builder with this name. '
      f'Datasets that prepare without a download: {_embedded_names()}.'
    ) from err

  features = builder.info.features
  if not isinstance(features, tfds.features.FeaturesDict) or (
    'image' not in features
  ):
    raise ValueError(
      f"Dataset {name!r} has no 'image' feature. Its features are: {features}."
    )

  if not builder.is_prepared():
    if not download and name not in embedded_datasets.EMBEDDED_DATASETS:
      raise RuntimeError(
        f'Dataset {name!r} is not prepared in {builder.data_dir_root} and '
        'downloading is turned off (--config.data.download=False). Allow '
        'the download, prepare the dataset into that data directory, or use '
        f'a dataset that prepares without a download: {_embedded_names()}.'
      )
    _prepare(builder, name)
  return builder


def _prepare(builder: tfds.core.DatasetBuilder, name: str) -> None:
  """Runs `download_and_prepare` and logs how long it took."""
  logging.info('Preparing dataset %s in %s.', name, builder.data_dir_root)
  start = time.perf_counter()
  if builder.name in embedded_datasets.EMBEDDED_DATASETS:
    # These read only installed files, so an error here is a bug and is
    # raised unchanged.
    builder.download_and_prepare()
  else:
    try:
      builder.download_and_prepare()
    # Download failures surface as many types (OSError, requests errors,
    # tfds download and checksum errors), so every failure is wrapped.
    except Exception as err:
      raise RuntimeError(
        f'Dataset {name!r} is not prepared in {builder.data_dir_root} and '
        f'preparing it failed: {type(err).__name__}: {err}. Prepare it on a '
        'machine with network access and copy it into that data directory, '
        'or use a dataset that prepares without a download: '
        f'{_embedded_names()}.'
      ) from err
  logging.info(
    'Prepared dataset %s in %.1f s.', name, time.perf_counter() - start
  )


def _embedded_names() -> str:
  return ', '.join(embedded_datasets.EMBEDDED_DATASETS)


def image_shape(builder: tfds.core.DatasetBuilder) -> tuple[int, int, int]:
  """Returns the (height, width, channels) shape of the 'image' feature.

  Args:
    builder: builder of a dataset with an 'image' feature.

  Returns:
    The image shape as three ints.

  Raises:
    ValueError: the shape is not rank 3 or has an unknown dimension, such as
      datasets whose images vary in size.
  """
  shape = tuple(builder.info.features['image'].shape)
  if len(shape) != 3 or any(dim is None for dim in shape):
    raise ValueError(
      f'Dataset {builder.name!r} has image shape {shape}, but this pipeline '
      'needs a fully known (height, width, channels) shape. Use a dataset '
      'whose images all have the same size.'
    )
  height, width, channels = (int(dim) for dim in shape)
  return height, width, channels


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Counts the examples in a split.

  Args:
    builder: prepared builder.
    split: split name or tfds sub-split, such as 'train' or 'train[:10%]'.

  Returns:
    The number of examples in `split`.
  """
  return int(builder.info.splits[split].num_examples)


def train_batches(
  builder: tfds.core.DatasetBuilder,
  *,
  split: str,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  shuffle_buffer: int = 10_000,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[np.ndarray]:
  """Yields shuffled training batches of this process's shard, forever.

  The batches are a pure function of (`seed`, step), so a run resumed at
  `start_step` reads the same batches as a run that never stopped. The shard
  is read as a stream of epochs, each the shard in file order through a
  shuffle buffer seeded from `seed` and the epoch number, and batch `t`
  (counted from 0) contains stream positions `t * batch_size` up to
  `(t + 1) * batch_size`. A batch can therefore span two epochs. Resuming
  starts reading at the right epoch and skips less than one epoch within it.

  Seeded `tf.data` shuffling is deterministic unless the TensorFlow global
  seed (unset by default) changes, and reading in file order with the
  default `tf.data.Options` keeps the element order fixed.

  Args:
    builder: prepared builder of a dataset with an 'image' feature.
    split: split or sub-split to read, such as 'train'.
    batch_size: examples per batch on this process.
    seed: seed of the epoch orders.
    start_step: number of batches to skip: the first batch is batch
      `start_step`.
    shuffle_buffer: number of examples in the shuffle buffer. A buffer at
      least as large as the shard gives a uniform shuffle of each epoch.
    process_index: index of this process, in [0, process_count).
    process_count: number of processes that read the split.

  Returns:
    An iterator over float32 arrays of shape [batch_size, height, width,
    channels] with values in [0, 1].

  Raises:
    ValueError: `batch_size` is not positive or is larger than this
      process's shard, or another argument is out of range. While
      iterating, an image that cannot be decoded or has the wrong shape
      (see `eval_batches`).
  """
  shape = image_shape(builder)
  shard = _process_shard(split, process_index, process_count)
  shard_size = num_examples(builder, shard)
  if batch_size <= 0 or batch_size > shard_size:
    raise ValueError(
      f'Invalid batch_size {batch_size}: it must be in [1, {shard_size}], '
      f'the number of examples in shard {process_index} of {process_count} '
      f'of split {split!r} of dataset {builder.name!r}.'
    )
  if shuffle_buffer <= 0:
    raise ValueError(f'Invalid shuffle_buffer {shuffle_buffer}: must be > 0.')
  if start_step < 0:
    raise ValueError(f'Invalid start_step {start_step}: must be >= 0.')

  read_config = tfds.ReadConfig(options=_dataset_options(), try_autocache=False)
  examples = builder.as_dataset(
    split=shard, shuffle_files=False, read_config=read_config
  ).map(_select_image)
  if shard_size * 4 * math.prod(shape) <= MAX_CACHED_TRAIN_BYTES:
    # Decode a small shard once and keep it in memory. The cache keeps the
    # file order, so every epoch still shuffles the same sequence.
    examples = examples.cache()

  def epoch(number):
    # Any distinct pair (seed, epoch) gives its own order, up to 1,000,003
    # epochs per seed.
    epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + number
    return examples.shuffle(shuffle_buffer, seed=epoch_seed)

  first_epoch, offset = divmod(start_step * batch_size, shard_size)
  dataset = tf.data.Dataset.range(first_epoch, _NEVER_ENDING).flat_map(epoch)
  dataset = dataset.skip(offset)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(
    lambda images: _to_float_images(images, shape),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(_dataset_options())
  return _name_bad_examples(
    dataset.as_numpy_iterator(), builder, split, shard, process_count
  )


def eval_batches(
  builder: tfds.core.DatasetBuilder,
  *,
  split: str,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields one pass over this process's shard in a fixed order.

  Every example of the shard appears in exactly one batch with mask True.
  The last batch is filled up to `batch_size` with zero images whose mask is
  False. Each call starts a new pass from the first example.

  Args:
    builder: prepared builder of a dataset with an 'image' feature.
    split: split or sub-split to read, such as 'test'.
    batch_size: examples per batch on this process, padding included.
    process_index: index of this process, in [0, process_count).
    process_count: number of processes that read the split.

  Returns:
    An iterator over dicts with 'image', float32 [batch_size, height, width,
    channels] in [0, 1], and 'mask', bool [batch_size].

  Raises:
    ValueError: `batch_size` is not positive, or another argument is out of
      range. While iterating, an image of the shard cannot be decoded or has
      another shape than the dataset declares, or the dataset's files are
      corrupt. The message then names the dataset, the split and the
      example's tfds id (file and record index).
  """
  shape = image_shape(builder)
  shard = _process_shard(split, process_index, process_count)
  if batch_size <= 0:
    raise ValueError(f'Invalid batch_size {batch_size}: must be > 0.')

  read_config = tfds.ReadConfig(options=_dataset_options(), try_autocache=False)
  dataset = builder.as_dataset(
    split=shard, shuffle_files=False, read_config=read_config
  )
  dataset = dataset.map(lambda example: (_select_image(example), True))
  dataset = dataset.batch(batch_size)
  dataset = dataset.map(
    lambda images, mask: _pad_batch(images, mask, batch_size, shape),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  return _name_bad_examples(
    dataset.as_numpy_iterator(), builder, split, shard, process_count
  )


def _name_bad_examples(batches, builder, split, shard, process_count):
  """Passes `batches` on; turns a read or decode error into a named one.

  `tf.data` reports a corrupt image or a wrong shape without saying which
  example it came from. On such an error the split is read again, one
  example at a time, to find the first bad one.
  """
  try:
    yield from batches
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
    where = f'split {split!r} of dataset {builder.name!r}'
    if process_count > 1:
      where = f'shard {shard.index} of {process_count} of {where}'
    raise _find_bad_example(builder, shard, where, err) from err


def _find_bad_example(builder, shard, where, error):
  """Returns a ValueError naming the first unreadable example of `shard`."""
  height, width, channels = image_shape(builder)
  fix = (
    f'Prepare the dataset again: delete {builder.data_dir} and rerun, or fix '
    'the source data.'
  )
  read_config = tfds.ReadConfig(add_tfds_id=True, try_autocache=False)
  examples = builder.as_dataset(
    split=shard,
    shuffle_files=False,
    read_config=read_config,
    decoders={'image': tfds.decode.SkipDecoding()},
  )
  last_id = None
  try:
    for example in examples.as_numpy_iterator():
      example_id = example['tfds_id'].decode()
      try:
        decoded = tf.io.decode_image(
          example['image'], channels=channels, expand_animations=False
        )
      except tf.errors.InvalidArgumentError as decode_error:
        return ValueError(
          f'Example {example_id} of {where} has an image that cannot be '
          f'decoded: {_op_message(decode_error)}. {fix}'
        )
      if tuple(decoded.shape[:2]) != (height, width):
        return ValueError(
          f'Example {example_id} of {where} has an image of shape '
          f'{tuple(decoded.shape)}, but the dataset declares '
          f'{(height, width, channels)}. {fix}'
        )
      last_id = example_id
  except tf.errors.DataLossError as read_error:
    after = f'after example {last_id}' if last_id else 'at its first example'
    return ValueError(
      f'The files of {where} are corrupt {after}: '
      f'{_op_message(read_error)}. {fix}'
    )
  return ValueError(
    f'Reading {where} failed, though each of its examples decodes on its '
    f'own: {_op_message(error)}'
  )


def _op_message(error):
  """Returns a TensorFlow error's message without its op and node names."""
  message = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', error.message)
  message = re.sub(r'\s*\[Op:[^\]]*\].*$', '', message, flags=re.DOTALL)
  return message.rstrip('. ')


def _process_shard(split: str, process_index: int, process_count: int):
  """Returns this process's part of `split` as a tfds sub-split."""
  if process_count < 1:
    raise ValueError(f'Invalid process_count {process_count}: must be >= 1.')
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'Invalid process_index {process_index}: must be in [0, {process_count}).'
    )
  # Without drop_remainder, shard sizes differ by at most one example and
  # every example of the split belongs to exactly one shard.
  return tfds.even_splits(split, n=process_count)[process_index]


def _dataset_options() -> tf.data.Options:
  options = tf.data.Options()
  options.threading.private_threadpool_size = _TF_DATA_THREADS
  options.threading.max_intra_op_parallelism = 1
  return options


def _select_image(example: dict[str, tf.Tensor]) -> tf.Tensor:
  return example['image']


def _to_float_images(
  images: tf.Tensor, shape: tuple[int, int, int]
) -> tf.Tensor:
  """Converts a batch of images to float32 in [0, 1].

  Integer images are divided by the maximum of their dtype (255 for uint8).
  Float images are only cast, so they are in [0, 1] only if stored that way.
  """
  images = tf.ensure_shape(images, (None, *shape))
  if images.dtype.is_integer:
    return tf.cast(images, tf.float32) / float(images.dtype.max)
  return tf.cast(images, tf.float32)


def _pad_batch(
  images: tf.Tensor,
  mask: tf.Tensor,
  batch_size: int,
  shape: tuple[int, int, int],
) -> dict[str, tf.Tensor]:
  """Pads a possibly short batch to `batch_size` with masked-out zeros."""
  padding = batch_size - tf.shape(mask)[0]
  images = _to_float_images(images, shape)
  images = tf.pad(images, [[0, padding], [0, 0], [0, 0], [0, 0]])
  mask = tf.pad(mask, [[0, padding]], constant_values=False)
  return {
    'image': tf.ensure_shape(images, (batch_size, *shape)),
    'mask': tf.ensure_shape(mask, (batch_size,)),
  }
