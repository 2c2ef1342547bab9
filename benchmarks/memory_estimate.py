"""An ANALYTIC estimate of training memory per chip (no accelerator measured it): the table in
docs/performance.md.

  python benchmarks/memory_estimate.py [--batch 48] [--frames 16] [--fsdp 1,8]

Per chip = state + activations (+10% for XLA's workspace and fragmentation):
- state: every parameter in float32; the trainable ones (image tower, temporal model, prompt
  contexts) also a float32 gradient and a float32 SGD momentum buffer. FSDP over k chips divides
  all three by k (parameter counts come from the model's own init, via ``jax.eval_shape``).
- activations kept for the backward pass, per image token and block (bfloat16 matmul inputs and
  outputs, float32 residual stream and LayerNorm inputs, as ``clip.py`` computes): the two
  LayerNorms' float32 inputs, 2 x 4 bytes x width; their bfloat16 outputs, 2 x 2 x width; q, k,
  v and the attention output, 4 x 2 x width; softmax probabilities, 2 x heads x tokens, plus the
  float32 logits, 4 x heads x tokens; the MLP's pre- and post-activation, 2 x 2 x mlp width.
  With ``remat`` only each block's float32 input is kept
  and one block's activations are live at a time during the backward pass.
- each chip holds batch / chips clips (data and fsdp axes both split the batch).
The text tower (7 prompts x 32 tokens) and the temporal model are included the same way; both
are < 1% of the activations. Real peaks depend on XLA's scheduling: read these as +-30%.
Where a GPU is available, ``compiled.memory_analysis()`` of the train step replaces them.
"""

from __future__ import annotations

import functools

from absl import app, flags

import common  # noqa: F401  (sys.path first)
import jax
import numpy as np

from dferclip_jax.models import clip_config
from dferclip_jax.models.clip import CLIP, init_clip_params

MODELS = {"vit_b32": clip_config.vit_b32, "vit_b16": clip_config.vit_b16, "vit_l14": clip_config.vit_l14}
GB = 1e9
OVERHEAD = 1.10

flags.DEFINE_integer("batch", 48, "Global clips per step.")
flags.DEFINE_integer("frames", 16, "Frames per clip.")
flags.DEFINE_list("fsdp", ["1", "8"], "Chips (FSDP x data) to spread the batch and state over.")


@functools.lru_cache()
def param_counts(config) -> dict:
  shapes = jax.eval_shape(lambda: init_clip_params(CLIP(config)))
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  vision = count(shapes["vision_model"]) + count(shapes["visual_projection"])
  total = count(shapes)
  dim = config.projection_dim
  temporal = 3 * dim * 512 + 512 * dim + 2 * dim * 1024 + 1024 + 2 * dim + 4 * dim + 18 * dim
  prompts = 7 * 8 * config.text_config.hidden_size
  return {"clip": total, "trainable": vision + temporal + prompts, "all": total + temporal + prompts}


def block_bytes_per_token(width: int, mlp: int, heads: int, tokens: int) -> float:
  return 8 * width + 4 * width + 8 * width + 6 * heads * tokens + 4 * mlp


def tower_activation_bytes(tower, tokens: int, sequences: int, remat: bool) -> float:
  per_block = block_bytes_per_token(tower.hidden_size, tower.intermediate_size,
                                    tower.num_attention_heads, tokens) * tokens * sequences
  if remat:
    return 4 * tower.hidden_size * tokens * sequences * tower.num_hidden_layers + per_block
  return per_block * tower.num_hidden_layers


def per_chip_gb(config, clips_per_chip: float, frames: int, chips: int, remat: bool) -> float:
  counts = param_counts(config)
  state = (4 * counts["all"] + 8 * counts["trainable"]) / chips
  v = config.vision_config
  tokens = (v.image_size // v.patch_size) ** 2 + 1
  images = clips_per_chip * frames
  act = tower_activation_bytes(v, tokens, images, remat)
  act += 3 * images * tokens * v.patch_size ** 2 * 4  # float32 pixels/patches
  act += tower_activation_bytes(config.text_config, 32, 7, remat)
  return OVERHEAD * (state + act) / GB


def largest_batch(config, frames: int, remat: bool, budget_gb: float) -> int:
  clips = 0  # memory grows linearly in the batch: walk up in steps of 1
  while per_chip_gb(config, clips + 1, frames, 1, remat) <= budget_gb:
    clips += 1
  return clips


def main(argv):
  del argv
  f = flags.FLAGS
  print(f"ESTIMATE (analytic, not measured): training memory per chip, bfloat16 matmuls, "
        f"batch {f.batch} x {f.frames} frames")
  print("| model | params (M) | remat | " + " | ".join(f"{k} chip(s), GB/chip" for k in f.fsdp)
        + " | largest clips/chip on 16 GB | on 80 GB |")
  print("|---|---|---|" + "---|" * len(f.fsdp) + "---|---|")
  for name, make in MODELS.items():
    config = make()
    millions = param_counts(config)["all"] / 1e6
    for remat in (False, True):
      cells = [f"{per_chip_gb(config, f.batch / int(k), f.frames, int(k), remat):.1f}" for k in f.fsdp]
      print(f"| {name} | {millions:.0f} | {'on' if remat else 'off'} | " + " | ".join(cells)
            + f" | {largest_batch(config, f.frames, remat, 16)} | {largest_batch(config, f.frames, remat, 80)} |")


if __name__ == "__main__":
  app.run(main)
