"""The default ablation on colour patches instead of digits.

Command:
  python main.py --mode=ablate --config=configs/ablation_patches.py \
    --workdir=runs/ablation_patches

The same 15 loss variants, 3 seeds, model and schedule as
`configs/ablation.py`, on the 32x32 RGB patches of `skimage_patches`: 3,846
training patches from six scikit-image photographs and 386 held-out patches
from two others. Colour, texture and lighting differ far more between these
patches than between digits, so the edge, Gram and mean-shift terms have more
to act on. MS-SSIM fits two scales of the 11-pixel window at 32x32.
"""

from configs import ablation


def get_config():
  """Returns the patches ablation."""
  config = ablation.get_config()
  config.data.name = 'skimage_patches'
  return config
