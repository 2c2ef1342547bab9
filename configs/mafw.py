"""MAFW (11 classes, single-label), the official DFER-CLIP recipe. ``--config=configs/mafw.py:fold=2``."""

from configs import common
from dferclip_jax.data import class_orders


def get_config(arg=None):
  arg = common.parse_arg(arg, fold=1)
  if not 1 <= arg.fold <= 5:
    raise ValueError(f"configs/mafw.py: fold={arg.fold}, but MAFW has folds 1..5")
  c = common.base_config()
  c.dataset = "mafw"
  c.fold = arg.fold
  c.class_names = class_orders.DFERCLIP_11
  c.data.train_list = f"annotations/mafw/set_{arg.fold}_train.txt"
  c.data.test_list = f"annotations/mafw/set_{arg.fold}_test.txt"
  c.data.tfds_train_split = f"fold{arg.fold}_train"
  c.data.tfds_test_split = f"fold{arg.fold}_test"
  c.data.augmentation = "mafw"
  return c
