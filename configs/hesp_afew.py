"""Open-set AFEW (HESP's 20 splits of the 7 classes): ``--mode=openset --config=configs/hesp_afew.py``.

AFEW ships train/val folders of frames per class; give your annotation lists (official format,
labels in AFEW's own order: anger, disgust, fear, happiness, neutral, sadness, surprise) with
``--config.data.train_list``, ``--config.data.test_list`` and ``--config.data.root``.
"""

from configs import common
from dferclip_jax import class_texts


def get_config(arg=None):
  arg = common.parse_arg(arg, method="hesp")
  c = common.dataset_config("afew")  # AFEW's own (alphabetical) order; train.txt, val.txt
  c.model.text_type = "class_names"
  c.model.class_texts_file = str(class_texts.TEXTS_DIR / "afew_class_names.txt")
  return common.add_openset(c, "AFEW", arg.method)
