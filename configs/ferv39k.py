"""FERV39k (one train/test split), the official DFER-CLIP recipe. ``--config=configs/ferv39k.py``."""

from configs import common


def get_config(arg=None):
  common.parse_arg(arg)  # takes no arguments; refuses any
  return common.dataset_config("ferv39k")
