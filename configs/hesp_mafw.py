"""Open-set MAFW (HESP's 20 splits of the 11 classes): ``--mode=openset --config=configs/hesp_mafw.py``.

By default the clips are HESP's own MAFW lists (4,088 train / 1,022 test clips, shipped in
``data/openset/``), found by clip id under ``--config.data.root`` (MAFW as published,
``data/frames/<id>``, or HESP's ``frames/Train|Val/<Class>/<id>``). ``:clips=fold,fold=k`` uses MAFW's
fold k instead (the lists ``python -m dferclip_jax.cli.prepare --dataset=mafw`` writes), which is not
HESP's experiment. ``:method=dferclip_msp`` or ``:method=zeroshot_clip`` for the baselines.
"""

from configs import common, mafw

CLIPS = {"hesp": "hesp_mafw", "fold": "data_lists"}


def get_config(arg=None):
  arg = common.parse_arg(arg, clips="hesp", fold=1, method="hesp")
  if arg.clips not in CLIPS:
    raise ValueError(f"configs/hesp_mafw.py: clips={arg.clips!r}; expected one of {sorted(CLIPS)}")
  c = mafw.get_config(f"fold={arg.fold}")  # the class order; the fold lists for clips=fold
  c = common.add_openset(c, "MAFW", arg.method)
  c.openset.clips = CLIPS[arg.clips]
  return c
