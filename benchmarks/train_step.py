"""Clips/s and seconds per step of the full DFER-CLIP train step (random init of the real shapes).

  python benchmarks/train_step.py [--model vit_b32] [--batch 48] [--frames 16]
      [--dtype float32,bfloat16] [--steps 10] [--remat]
      [--official_dir DFER-CLIP --openai_clip_dir CLIP] [--profile DIR]

The step is the one training runs (trainer's jitted step: forward over B x T frames through the
image tower, temporal model and the C prompts through the frozen text tower, backward to the
trainable groups, PyTorch-SGD update), with the official recipe's param groups. One JSON line per
dtype with clips_per_s, step_s, batch, frames, dtype, device, ``model_flops_per_step`` (the
analytic count of ``model_flops.py``, which MFU uses), ``xla_flops_per_step`` (XLA's count of the
compiled step, which counts remat's recomputation too), and mfu where the device's peak is known;
the first dtype is the baseline of speedup_vs_first.

``--official_dir`` / ``--openai_clip_dir`` (local checkouts of github.com/zengqunzhao/DFER-CLIP
and github.com/openai/CLIP, see ``official_step.py``) add the official PyTorch step at the same
shapes, timed in the same process, alternating one step of each so that both see the same load
(for float32 only: the official code trains float32 on the CPU). The line then carries
``official_clips_per_s`` and ``vs_official``, the median of the per-pair speed ratios.

``--profile DIR`` writes a JAX profiler trace of the timed steps (open it with TensorBoard's or
xprof's trace viewer; ``profile_summary.py`` sums it by op class) and XLA's optimised HLO.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

import common  # noqa: F401  (sys.path and quiet logging first)
import jax
import jax.numpy as jnp
import numpy as np

import model_flops
from configs import common as config_common
from dferclip_jax import class_texts
from dferclip_jax.models import clip_config
from dferclip_jax.models.clip import CLIP, init_clip_params
from dferclip_jax.models.dferclip import build_dferclip
from dferclip_jax.tokenizer import WordTokenizer
from dferclip_jax.train import optimizer, sharding
from dferclip_jax.train import state as state_lib
from dferclip_jax.train import train_step as steps

MODELS = {"vit_b32": clip_config.vit_b32, "vit_b16": clip_config.vit_b16, "vit_l14": clip_config.vit_l14}

flags.DEFINE_enum("model", "vit_b32", list(MODELS), "CLIP backbone.")
flags.DEFINE_integer("batch", 0, "Clips per step (0: 48, the official batch, on accelerators; 2 on CPU).")
flags.DEFINE_integer("frames", 16, "Frames per clip.")
flags.DEFINE_list("dtype", ["float32", "bfloat16"], "Matmul dtypes to measure.")
flags.DEFINE_integer("steps", 10, "Timed steps per setting (median reported).")
flags.DEFINE_bool("remat", False, "Rematerialise the CLIP blocks.")
flags.DEFINE_string("official_dir", os.environ.get("DFERCLIP_OFFICIAL_DIR"),
                    "Checkout of github.com/zengqunzhao/DFER-CLIP: also time the official step.")
flags.DEFINE_string("openai_clip_dir", os.environ.get("OPENAI_CLIP_DIR"),
                    "Checkout of github.com/openai/CLIP (the official code's `clip` package).")
flags.DEFINE_string("profile", None, "Write a profiler trace and the optimised HLO here.")


def _median(values):
  values = sorted(values)
  return values[len(values) // 2]


def _official(f, batch, video, labels):
  if not f.official_dir:
    return None
  if not f.openai_clip_dir:
    raise app.UsageError("--official_dir needs --openai_clip_dir (the official code imports OpenAI's clip)")
  if f.model != "vit_b32":
    raise app.UsageError("--official_dir: the official code is ViT-B/32; use --model vit_b32")
  import torch
  import official_step
  step = official_step.make_official_step(f.official_dir, f.openai_clip_dir)
  images = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3))).float() / 255.0
  targets = torch.from_numpy(labels.astype(np.int64))
  return lambda: step(images, targets)


def main(argv):
  del argv
  f = flags.FLAGS
  on_cpu = jax.devices()[0].platform == "cpu"
  batch = f.batch or (2 if on_cpu else 48)
  config = config_common.base_config()
  texts = class_texts.load("class_descriptor", 7)
  tokenizer = WordTokenizer(texts + ["X"])  # random weights: any vocabulary of the real size
  clip = MODELS[f.model]()
  clip_params = jax.tree.map(np.asarray, init_clip_params(CLIP(clip)))
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  size = clip.vision_config.image_size
  video = np.random.default_rng(0).integers(0, 256, (batch, f.frames, size, size, 3), dtype=np.uint8)
  labels = np.arange(batch, dtype=np.int32) % 7
  official = _official(f, batch, video, labels)
  baseline = None
  for dtype_name in f.dtype:
    model, variables = build_dferclip(clip, clip_params, texts, tokenizer, rng=jax.random.PRNGKey(0),
                                      num_frames=f.frames, dtype=jnp.dtype(dtype_name), remat=f.remat)
    assignment, tx, schedules = optimizer.grouped_optimizer(variables["params"], config.optim, 100)
    state = state_lib.new_state(
        state_lib.host_state(variables["params"], assignment, prompts=variables["prompts"]), tx)
    shardings = sharding.tree_shardings(state, mesh, 2 ** 16)
    state = sharding.put_global(state, shardings)
    step_fn = jax.jit(steps.make_train_step(model, tx, schedules),
                      in_shardings=(shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    data = sharding.global_batch({"video": video, "label": labels}, mesh)
    compiled = step_fn.lower(state, data).compile()
    holder = [state]

    def ours():
      holder[0], metrics = compiled(holder[0], data)
      jax.block_until_ready(metrics)

    against = official if dtype_name == "float32" else None
    for _ in range(2):  # warm-up
      ours()
      if against:
        against()
    if f.profile:
      os.makedirs(f.profile, exist_ok=True)
      with open(os.path.join(f.profile, f"train_step_{dtype_name}.hlo.txt"), "w") as hlo:
        hlo.write(compiled.as_text())
      jax.profiler.start_trace(f.profile)
    ours_s, official_s = [], []
    for _ in range(f.steps):  # alternate, so that both sides see the same neighbours' load
      start = time.perf_counter()
      ours()
      ours_s.append(time.perf_counter() - start)
      if against:
        start = time.perf_counter()
        against()
        official_s.append(time.perf_counter() - start)
    if f.profile:
      jax.profiler.stop_trace()
    step_s = _median(ours_s)
    record = {"bench": "train_step", "model": f.model, "batch": batch, "frames": f.frames,
              "dtype": dtype_name, "remat": f.remat, "clips_per_s": batch / step_s, "step_s": step_s,
              "device": common.device_name(), "devices": jax.device_count(),
              "load_avg_1min": os.getloadavg()[0]}
    flops = model_flops.train_step_flops(model, batch, f.frames)
    record["model_flops_per_step"] = flops["total"]
    record["xla_flops_per_step"] = common.compiled_flops(compiled)
    common.add_utilisation(record, flops["total"], step_s, dtype_name)
    if against:
      record["official_clips_per_s"] = batch / _median(official_s)
      record["vs_official"] = _median([o / s for s, o in zip(ours_s, official_s)])
      record["step_s_all"] = [round(s, 3) for s in ours_s]
      record["official_step_s_all"] = [round(s, 3) for s in official_s]
    baseline = baseline or record["clips_per_s"]
    record["speedup_vs_first"] = record["clips_per_s"] / baseline
    common.emit(record)


if __name__ == "__main__":
  app.run(main)
