"""MAFW (11 classes, single-label), the official DFER-CLIP recipe. ``--config=configs/mafw.py:fold=2``."""

from configs import common
from dferclip_jax.data import class_orders


def get_config(arg=None):
  arg = common.parse_arg(arg, fold=1)
  return common.folded_dataset("mafw", arg.fold, class_orders.DFERCLIP_11, augmentation="mafw")
