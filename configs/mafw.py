"""MAFW (11 classes, single-label), the official DFER-CLIP recipe. ``--config=configs/mafw.py:fold=2``."""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, fold=1)
  return common.dataset_config("mafw", arg.fold)
