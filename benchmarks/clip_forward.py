"""Images/s of the CLIP image tower at ViT-B/32 shapes (random weights of the real shape).

  python benchmarks/clip_forward.py [--batch 256] [--steps 10] [--dtypes float32,bfloat16]

One JSON line per dtype: images_per_s, step_s, flops per image (XLA's count), and MFU where the
device's peak is known. The float32 line is the baseline the bfloat16 ratio is reported against.
"""

from __future__ import annotations

from absl import app, flags

import common  # noqa: F401  (sets sys.path and quiet logging first)
import jax
import jax.numpy as jnp

from dferclip_jax.models import clip_config
from dferclip_jax.models.clip import CLIP, init_clip_params

flags.DEFINE_integer("batch", 0, "Images per step (0: 256 on accelerators, 16 on CPU).")
flags.DEFINE_integer("steps", 10, "Timed steps per setting (median reported).")
flags.DEFINE_string("dtypes", "float32,bfloat16", "Comma-separated matmul dtypes to measure.")
flags.DEFINE_string("model", "vit_b32", "vit_b32, vit_b16 or vit_l14.")


def main(argv):
  del argv
  f = flags.FLAGS
  config = {"vit_b32": clip_config.vit_b32, "vit_b16": clip_config.vit_b16,
            "vit_l14": clip_config.vit_l14}[f.model]()
  on_cpu = jax.devices()[0].platform == "cpu"
  batch = f.batch or (16 if on_cpu else 256)
  size = config.vision_config.image_size
  params = init_clip_params(CLIP(config))
  pixels = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3), jnp.float32)
  baseline = None
  for dtype_name in f.dtypes.split(","):
    model = CLIP(config, dtype=jnp.dtype(dtype_name))
    forward = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x, method=CLIP.encode_image))
    compiled = forward.lower(params, pixels).compile()
    step_s = common.time_calls(compiled, (params, pixels), f.steps)
    flops = common.compiled_flops(compiled)
    record = {"bench": "clip_forward", "model": f.model, "dtype": dtype_name, "batch": batch,
              "images_per_s": batch / step_s, "step_s": step_s, "device": common.device_name()}
    common.add_utilisation(record, flops, step_s, dtype_name)
    if flops:
      record["gflops_per_image"] = flops / batch / 1e9
    baseline = baseline or record["images_per_s"]
    record["speedup_vs_first"] = record["images_per_s"] / baseline
    common.emit(record)


if __name__ == "__main__":
  app.run(main)
