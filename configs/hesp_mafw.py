"""Open-set MAFW (HESP's 20 splits of the 11 classes): ``--mode=openset --config=configs/hesp_mafw.py``.

``:method=dferclip_msp`` or ``:method=zeroshot_clip`` for the baselines. Lists from
``python -m dferclip_jax.cli.prepare --dataset=mafw`` (fold 1 by default, ``:fold=k``).
"""

from configs import common, mafw


def get_config(arg=None):
  arg = common.parse_arg(arg, fold=1, method="hesp")
  c = mafw.get_config(f"fold={arg.fold}")  # the closed-set lists of that fold, split by class
  return common.add_openset(c, "MAFW", arg.method)
