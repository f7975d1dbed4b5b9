"""A tiny configuration that trains for a few seconds on CPU, for tests.

Command:
  python main.py --config=configs/test.py --workdir=/tmp/aeloss_test

Runs 20 steps of a one-stage autoencoder on the embedded digits with the
pixel, edge, mean-shift and Gram terms trained on and every other term
evaluated. It checks that the whole path runs, not that it learns.
"""

from configs import default


def get_config():
  """Returns the default configuration shrunk to run in seconds."""
  config = default.get_config()

  config.model.widths = (8,)
  config.model.latent_dim = 8
  config.loss.terms.edge.weight = 0.1
  config.loss.terms.mean_shift.weight = 0.1
  config.loss.terms.gram.weight = 0.1
  config.loss.terms.gram.layers = (0,)

  config.batch_size = 16
  config.num_train_steps = 20
  config.warmup_steps = 2
  config.eval_batch_size = 100
  config.eval_every_steps = 10
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.num_grid_images = 4

  return config
