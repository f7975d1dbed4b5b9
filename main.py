"""Trains a convolutional autoencoder, or probes its loss terms.

This file only parses flags and sets up the process. Training lives in
`train/trainer.py`, ablation sweeps in `train/sweep.py` and the loss response
probe in `train/probe.py`.

  python main.py --config=configs/default.py --workdir=runs/digits
  python main.py --mode=ablate --config=configs/ablation.py \
    --workdir=runs/ablation
  python main.py --mode=probe --config=configs/probe.py --workdir=runs/probe
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from train import probe
from train import sweep
from train import trainer

FLAGS = flags.FLAGS

flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'ablate', 'probe'],
  'train: train and evaluate the autoencoder. ablate: train one model per '
  'loss variant and seed and write a comparison report (needs a config with '
  'an ablation field, such as configs/ablation.py). probe: write every loss '
  "term's response to perturbed test images (needs a config with a probe "
  'field, such as configs/probe.py).',
)
flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, logs and results.'
)
config_flags.DEFINE_config_file(
  'config',
  None,
  'Path to a config file; override fields with --config.FIELD=VALUE.',
  lock_config=True,
)
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """Parses flags; exits with a clear message on an unknown config field."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as err:
    # ml_collections raises these, with only the missing key as the message,
    # when an override names a field that the config file does not define.
    field = str(err.args[0]).strip('\'"')
    overrides = [arg for arg in argv[1:] if arg.startswith('--config.')]
    raise SystemExit(
      f'Unknown config field {field!r} in the overrides '
      f'{" ".join(overrides)}. Override only fields that the config file '
      'defines; its get_config() lists them.'
    ) from err


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')

  logging.info(
    'JAX process %d of %d, local devices: %s',
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  if FLAGS.mode == 'probe':
    if 'probe' not in FLAGS.config:
      raise app.UsageError(
        '--mode=probe needs a config with a probe field; use '
        '--config=configs/probe.py or a config file that imports it.'
      )
    probe.run_probe(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'ablate':
    if 'ablation' not in FLAGS.config:
      raise app.UsageError(
        '--mode=ablate needs a config with an ablation field; use '
        '--config=configs/ablation.py or a config file that imports it.'
      )
    sweep.run_sweep(FLAGS.config, FLAGS.workdir)
  else:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
