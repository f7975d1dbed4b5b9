"""The full-size ablation, for a GPU or TPU host.

Command:
  python main.py --mode=ablate --config=configs/ablation_full.py \
    --workdir=runs/ablation_full

The variants of `configs/ablation.py` on the default autoencoder (32/64
channels, 32-d latent) at the default run's length and batch: 1,500 steps at
batch 128, 5 seeds, 75 runs. Use it where a run takes seconds. On a 2-core CPU
each run takes 2 to 4 minutes and the sweep 3 to 5 hours. Add
--config.data.name=skimage_patches for the colour patches.
"""

from configs import ablation
from configs import default


def get_config():
  """Returns the full-size ablation: the default run plus the variants."""
  config = default.get_config()
  config.eval_all_terms = False
  config.ablation = ablation.get_config().ablation
  config.ablation.seeds = (0, 1, 2, 3, 4)
  return config
