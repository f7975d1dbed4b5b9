"""Trains a convolutional autoencoder on the loss mix of a config file.

This file only parses flags and sets up the process; the training logic lives
in `train/trainer.py`.

  python main.py --config=configs/default.py --workdir=runs/digits
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from train import trainer

FLAGS = flags.FLAGS

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')

  logging.info(
    'JAX process %d of %d, local devices: %s',
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
