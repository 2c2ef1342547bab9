"""Open-set DFEW (HESP's 20 splits of the 7 classes): ``--mode=openset --config=configs/hesp_dfew.py``."""

from configs import common, dfew


def get_config(arg=None):
  arg = common.parse_arg(arg, fold=1, method="hesp")
  c = dfew.get_config(f"fold={arg.fold}")  # the closed-set lists of that fold, split by class
  return common.add_openset(c, "DFEW", arg.method)
