"""CoOp-style learnable prompts, spliced as the official ``PromptLearner.forward`` splices them.

A prompt is tokenized as ``<sos> X X ... X <class text> <eot> 0 ...`` (n_ctx placeholder words).
Its token embeddings are frozen; the n_ctx placeholder embeddings are replaced by learnable
context vectors. With ``name_len`` the number of class-text tokens, positions are filled as:

  end:    [sos, ctx[0:n],            class, eot, pad...]
  front:  [sos, class, ctx[0:n],            eot, pad...]
  middle: [sos, ctx[0:n//2], class, ctx[n//2:n], eot, pad...]

The total length is unchanged, so the end-of-text token stays where the tokenizer put it (the
text tower pools there). The splice is a gather driven by ``name_lens``: one vectorised formula
for all classes, jit-friendly.
"""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

POSITIONS = ("end", "middle", "front")


def splice_sources(name_lens, n_ctx: int, length: int, position: str):
  """-> (is_ctx bool [C, L], ctx_index int [C, L], token_index int [C, L]).

  Position j of class c takes ``ctx[ctx_index[c, j]]`` where ``is_ctx``, else the frozen token
  embedding at ``token_index[c, j]`` of the tokenized prompt.
  """
  if position not in POSITIONS:
    raise ValueError(f"class token position {position!r}: expected one of {POSITIONS}")
  j = jnp.arange(length)[None, :]
  nl = jnp.asarray(name_lens, jnp.int32)[:, None]
  zero = jnp.zeros_like(j + nl)
  if position == "end":
    is_ctx = (j >= 1) & (j <= n_ctx)
    return is_ctx, jnp.clip(j - 1, 0, n_ctx - 1) + zero, j + zero
  if position == "front":
    is_class = (j >= 1) & (j <= nl)
    is_ctx = (j > nl) & (j <= nl + n_ctx)
    token = jnp.where(is_class, j + n_ctx, j)
    return is_ctx, jnp.clip(j - 1 - nl, 0, n_ctx - 1), token
  half = n_ctx // 2
  first = (j >= 1) & (j <= half)
  is_class = (j > half) & (j <= half + nl)
  second = (j > half + nl) & (j <= nl + n_ctx)
  ctx_index = jnp.where(first, j - 1, j - 1 - nl)
  token = jnp.where(is_class, j + n_ctx - half, j)
  return first | second, jnp.clip(ctx_index, 0, n_ctx - 1), token


class PromptLearner(nn.Module):
  """Learnable context: class-specific ``ctx`` [C, n_ctx, D] or generic [n_ctx, D] (std 0.02)."""
  num_classes: int
  n_ctx: int = 8
  class_specific: bool = True
  position: str = "end"

  @nn.compact
  def __call__(self, token_embeds, name_lens):
    """token_embeds [C, L, D] (frozen embeddings of the tokenized prompts) -> prompts [C, L, D]."""
    c, length, dim = token_embeds.shape
    if c != self.num_classes:
      raise ValueError(f"{c} prompts for {self.num_classes} classes")
    shape = (self.num_classes, self.n_ctx, dim) if self.class_specific else (self.n_ctx, dim)
    ctx = self.param("ctx", nn.initializers.normal(0.02), shape, jnp.float32)
    if not self.class_specific:
      ctx = jnp.broadcast_to(ctx, (self.num_classes, self.n_ctx, dim))
    is_ctx, ctx_index, token_index = splice_sources(name_lens, self.n_ctx, length, self.position)
    from_ctx = jnp.take_along_axis(ctx, ctx_index[..., None], axis=1)
    from_tokens = jnp.take_along_axis(token_embeds.astype(jnp.float32), token_index[..., None], axis=1)
    return jnp.where(is_ctx[..., None], from_ctx, from_tokens)
