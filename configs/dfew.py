"""DFEW, the official DFER-CLIP recipe. ``--config=configs/dfew.py:fold=3``.

Lists as written by ``python -m dferclip_jax.cli.prepare --dataset=dfew --root=... --out=annotations/dfew``;
set ``--config.data.root`` to the DFEW root those lists are relative to.
"""

from configs import common
from dferclip_jax.data import class_orders


def get_config(arg=None):
  arg = common.parse_arg(arg, fold=1)
  if not 1 <= arg.fold <= 5:
    raise ValueError(f"configs/dfew.py: fold={arg.fold}, but DFEW has folds 1..5")
  c = common.base_config()
  c.dataset = "dfew"
  c.fold = arg.fold
  c.class_names = class_orders.DFERCLIP_7
  c.data.train_list = f"annotations/dfew/set_{arg.fold}_train.txt"
  c.data.test_list = f"annotations/dfew/set_{arg.fold}_test.txt"
  c.data.tfds_train_split = f"fold{arg.fold}_train"
  c.data.tfds_test_split = f"fold{arg.fold}_test"
  c.data.augmentation = "dfew"
  return c
