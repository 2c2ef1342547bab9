"""DFEW, the official DFER-CLIP recipe. ``--config=configs/dfew.py:fold=3``.

Lists as written by ``python -m dferclip_jax.cli.prepare --dataset=dfew --root=... --out=annotations/dfew``;
set ``--config.data.root`` to the DFEW root those lists are relative to.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, fold=1)
  return common.dataset_config("dfew", arg.fold)
