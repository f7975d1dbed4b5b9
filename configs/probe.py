"""Loss response probe: every loss term on perturbed test images.

Command:
  python main.py --mode=probe --config=configs/probe.py --workdir=runs/probe

Takes 64 test images of the configured dataset, perturbs them by brightness,
contrast, blur, noise and translation of increasing strength, and writes each
term's unweighted value against the strength to `probe.csv` and
`probe_<perturbation>.png` in the workdir. With `checkpoints/` of a training
run in the workdir, the gram term uses that run's encoder; otherwise it uses
the untrained autoencoder initialised from `config.seed`.
"""

import ml_collections

from configs import default


def get_config():
  """Returns the default configuration with every term on and probe grids."""
  config = default.get_config()

  # The probe reports each term's unweighted value, so the weights do not
  # change its output. A positive weight keeps every term in the loss when
  # this config is also used for training.
  for name in config.loss.terms:
    if config.loss.terms[name].weight == 0:
      config.loss.terms[name].weight = 1.0

  config.probe = ml_collections.ConfigDict()
  config.probe.num_images = 64
  # Seed of the Gaussian noise perturbation.
  config.probe.noise_seed = 0
  # Strength grids, each starting at the unchanged image: brightness shift b,
  # contrast factor c, blur and noise standard deviations, and the shift in
  # pixels.
  config.probe.brightness = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
  config.probe.contrast = (1.0, 0.9, 0.75, 0.5, 0.25)
  config.probe.blur = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
  config.probe.noise = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
  config.probe.translation = (0, 1, 2, 3, 4, 6)
  return config
