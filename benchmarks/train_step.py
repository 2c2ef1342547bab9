"""Clips/s and seconds per step of the full DFER-CLIP train step at ViT-B/32 shapes (random init).

  python benchmarks/train_step.py [--batch 48] [--frames 16] [--dtype float32,bfloat16] [--steps 10]

The step is the one training runs (trainer's jitted step: forward over B x T frames through the
image tower, temporal model and the C prompts through the frozen text tower, backward to the
trainable groups, PyTorch-SGD update), with the official recipe's param groups. One JSON line per
dtype with clips_per_s, step_s, batch, frames, dtype, device, model FLOPs per step (XLA's count
of the compiled step), and mfu where the device's peak is known; the first dtype is the baseline
of speedup_vs_first.
"""

from __future__ import annotations

from absl import app, flags

import common  # noqa: F401  (sys.path and quiet logging first)
import jax
import jax.numpy as jnp
import numpy as np

from configs import common as config_common
from dferclip_jax import class_texts
from dferclip_jax.models import clip_config
from dferclip_jax.models.clip import CLIP, init_clip_params
from dferclip_jax.models.dferclip import build_dferclip
from dferclip_jax.tokenizer import WordTokenizer
from dferclip_jax.train import optimizer, sharding
from dferclip_jax.train import train_step as steps

flags.DEFINE_integer("batch", 0, "Clips per step (0: 48, the official batch, on accelerators; 2 on CPU).")
flags.DEFINE_integer("frames", 16, "Frames per clip.")
flags.DEFINE_list("dtype", ["float32", "bfloat16"], "Matmul dtypes to measure.")
flags.DEFINE_integer("steps", 10, "Timed steps per setting (median reported).")
flags.DEFINE_bool("remat", False, "Rematerialise the CLIP blocks.")


def main(argv):
  del argv
  f = flags.FLAGS
  on_cpu = jax.devices()[0].platform == "cpu"
  batch = f.batch or (2 if on_cpu else 48)
  config = config_common.base_config()
  texts = class_texts.load("class_descriptor", 7)
  tokenizer = WordTokenizer(texts + ["X"])  # random weights: any vocabulary of the real size
  clip = clip_config.vit_b32()
  clip_params = jax.tree.map(np.asarray, init_clip_params(CLIP(clip)))
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  size = clip.vision_config.image_size
  video = np.random.default_rng(0).integers(0, 256, (batch, f.frames, size, size, 3), dtype=np.uint8)
  labels = np.arange(batch, dtype=np.int32) % 7
  baseline = None
  for dtype_name in f.dtype:
    model, variables = build_dferclip(clip, clip_params, texts, tokenizer, rng=jax.random.PRNGKey(0),
                                      num_frames=f.frames, dtype=jnp.dtype(dtype_name), remat=f.remat)
    assignment = optimizer.assign_groups(variables["params"], dict(config.optim.groups))
    trainable, frozen = optimizer.split_params(variables["params"], assignment)
    tx, schedules = optimizer.make_optimizer(
        config.optim, {k: g for k, g in assignment.items() if g != optimizer.FROZEN}, 100)
    state = {"params": trainable, "frozen": frozen, "prompts": variables["prompts"],
             "opt": tx.init(trainable), "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(0)}
    shardings = sharding.tree_shardings(state, mesh, 2 ** 16)
    state = sharding.put_global(state, shardings)
    step_fn = jax.jit(steps.make_train_step(model, tx, schedules),
                      in_shardings=(shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    data = sharding.global_batch({"video": video, "label": labels}, mesh)
    compiled = step_fn.lower(state, data).compile()
    flops = common.compiled_flops(compiled)

    holder = [state]

    def run(batch_data):
      holder[0], metrics = compiled(holder[0], batch_data)
      return metrics

    step_s = common.time_calls(run, (data,), f.steps, warmup=2)
    record = {"bench": "train_step", "model": "vit_b32", "batch": batch, "frames": f.frames,
              "dtype": dtype_name, "remat": f.remat, "clips_per_s": batch / step_s, "step_s": step_s,
              "device": common.device_name(), "devices": jax.device_count()}
    common.add_utilisation(record, flops, step_s, dtype_name)
    baseline = baseline or record["clips_per_s"]
    record["speedup_vs_first"] = record["clips_per_s"] / baseline
    common.emit(record)


if __name__ == "__main__":
  app.run(main)
