"""Analytic matmul FLOPs of one DFER-CLIP train step (what MFU is computed from).

Counted as 2 x multiply-adds of every matmul the step must do, whatever XLA recomputes (remat)
or fuses; elementwise work (LayerNorm, softmax, GELU, the optimizer) is left out, as is usual
for MFU. A matmul's backward is two matmuls of the same size (input gradient and weight
gradient), so:

- image tower (trainable): forward, then input + weight gradients = 3 x forward; the patch
  embedding needs no pixel gradient = 2 x forward;
- text tower (frozen, but the prompt contexts learn): forward, then input gradients only:
  1 x forward for the weight matmuls, 2 x for the two activation-activation attention matmuls;
- temporal model, logits: 3 x forward.

It counts what this implementation runs: the text tower on ``model.text_length`` tokens, and
the last block of each tower only at its pooled position (class token / end-of-text), since
nothing else of that block reaches the output (see ``dferclip_jax/models/clip.py``).
"""

from __future__ import annotations


def _block(tokens: int, queries: int, width: int, mlp: int, keys: int | None = None):
  """(weight-matmul FLOPs, attention-matmul FLOPs) of one pre-norm block's forward, with k/v
  over ``tokens`` rows and q, out-projection and MLP over ``queries`` rows."""
  keys = tokens if keys is None else keys
  weights = 2 * width * width * (2 * tokens + 2 * queries) + 2 * 2 * queries * width * mlp
  attention = 2 * 2 * queries * keys * width  # q k^T and weights @ v
  return weights, attention


def _tower(layers: int, tokens: int, width: int, mlp: int):
  """Forward (weight, attention) FLOPs of a tower whose last block is evaluated at one position."""
  w, a = _block(tokens, tokens, width, mlp)
  w_last, a_last = _block(tokens, 1, width, mlp)
  return (layers - 1) * w + w_last, (layers - 1) * a + a_last


def train_step_flops(model, batch: int, frames: int) -> dict:
  """-> {"image", "text", "temporal", "total"} matmul FLOPs of one train step of ``model``
  (a ``DFERCLIP``) on ``batch`` clips of ``frames`` frames."""
  c = model.clip_config
  v, t = c.vision_config, c.text_config
  images = batch * frames
  patches = (v.image_size // v.patch_size) ** 2
  patch_embed = 2 * patches * 3 * v.patch_size ** 2 * v.hidden_size
  w, a = _tower(v.num_hidden_layers, patches + 1, v.hidden_size, v.intermediate_size)
  projection = 2 * v.hidden_size * c.projection_dim
  image = images * (2 * patch_embed + 3 * (w + a + projection))

  length = model.text_length or model.context_length
  w, a = _tower(t.num_hidden_layers, length, t.hidden_size, t.intermediate_size)
  text_projection = 2 * t.hidden_size * c.projection_dim
  text = model.num_classes * (2 * (w + text_projection) + 3 * a)

  dim, inner = c.projection_dim, model.temporal_heads * model.temporal_dim_head
  tokens = frames + 1
  temporal_fwd = (2 * tokens * dim * 3 * inner + 2 * tokens * inner * dim
                  + 2 * 2 * tokens * dim * model.temporal_mlp_dim + 2 * 2 * tokens * tokens * inner)
  temporal = batch * model.temporal_layers * 3 * temporal_fwd
  logits = 3 * 2 * batch * model.num_classes * dim
  return {"image": image, "text": text, "temporal": temporal + logits,
          "total": image + text + temporal + logits}
