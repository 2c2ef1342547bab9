"""Open-set AFEW (HESP's 20 splits of the 7 classes): ``--mode=openset --config=configs/hesp_afew.py``.

AFEW ships train/val folders of frames per class; give your annotation lists (official format,
labels in AFEW's own order: anger, disgust, fear, happiness, neutral, sadness, surprise) with
``--config.data.train_list``, ``--config.data.test_list`` and ``--config.data.root``.
"""

from configs import common
from dferclip_jax import class_texts
from dferclip_jax.data import class_orders


def get_config(arg=None):
  arg = common.parse_arg(arg, method="hesp")
  c = common.base_config()
  c.dataset = "afew"
  c.class_names = class_orders.HESP_7  # AFEW's own (alphabetical) order
  c.data.train_list = "annotations/afew/train.txt"
  c.data.test_list = "annotations/afew/val.txt"
  c.model.text_type = "class_names"
  c.model.class_texts_file = str(class_texts.TEXTS_DIR / "afew_class_names.txt")
  return common.add_openset(c, "AFEW", arg.method)
