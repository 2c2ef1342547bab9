"""FERV39k (one train/test split), the official DFER-CLIP recipe. ``--config=configs/ferv39k.py``."""

from configs import common
from dferclip_jax.data import class_orders


def get_config(arg=None):
  common.parse_arg(arg)  # takes no arguments; refuses any
  c = common.base_config()
  c.dataset = "ferv39k"
  c.class_names = class_orders.DFERCLIP_7
  c.data.train_list = "annotations/ferv39k/train.txt"
  c.data.test_list = "annotations/ferv39k/test.txt"
  c.data.augmentation = "ferv39k"
  return c
