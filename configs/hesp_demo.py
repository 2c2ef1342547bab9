"""Open-set on the synthetic videos (CPU, minutes): HESP's MAFW-style splits of 7 classes, a small
CLIP from scratch. ``python main.py --mode=openset --config=configs/hesp_demo.py --workdir=DIR``.

Uses HESP's DFEW splits (2 to 5 known classes of 7); ``:method=dferclip_msp`` for the baseline.
"""

from configs import common, demo


def get_config(arg=None):
  arg = common.parse_arg(arg, method="hesp", splits="0+5", epochs=4)  # splits: "+"-separated
  c = demo.get_config(f"epochs={arg.epochs}")
  c = common.add_openset(c, "DFEW", arg.method)
  c.openset.splits = tuple(int(s) for s in arg.splits.split("+") if s)
  c.data.augmentation = "mafw"
  # HESP averages its frames (no temporal model): classes told apart by time alone would be
  # unknowable to it, so every class here has a look of its own.
  c.data.synthetic.temporal_pairs = 0
  c.optim.lr.temporal = 1e-3  # dferclip_msp: the rate of the demo before it needed time
  c.data.num_frames = 4
  c.model.text_type = "class_names"
  h = c.hesp
  h.n_ctx, h.patch_size, h.num_frames, h.batch_size, h.epochs = 4, 8, 4, 8, arg.epochs
  h.lr, h.lr_context, h.milestones, h.normalized_step = 1e-3, 1e-3, (100,), 1.0
  c.batch_size, c.eval_batch_size = 8, 8
  return c
