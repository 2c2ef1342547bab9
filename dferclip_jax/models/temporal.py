"""DFER-CLIP's temporal model: a small pre-norm Transformer over the frame features, read out at
a learnable class token.

As the official ``Temporal_Transformer_Cls``: the class token is prepended to the T frame
features, a learnable position embedding of T+1 is added, then N blocks of
``x + attn(LN(x))``, ``x + mlp(LN(x))`` (bias-free qkv, output projection with bias; MLP with the
tanh-approximate GELU), and the output is the class token (index 0), never a frame's token.
Initialisation follows PyTorch's defaults (the official code relies on them), so training
dynamics carry over: class token and positions N(0, 1), Linear weights kaiming-uniform(a=sqrt 5)
= U(+-1/sqrt(fan_in)), biases U(+-1/sqrt(fan_in)), LayerNorm 1/0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

LAYER_NORM_EPS = 1e-5
# How DFER-CLIP turns frame features into a video feature: this module (the official model) or,
# as an ablation, their mean (which cannot see the frames' order).
TEMPORAL_POOLINGS = ("transformer", "mean")
# PyTorch's nn.Linear weight init: kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int):
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(features: int, fan_in: int, use_bias: bool, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=torch_linear_kernel_init, bias_init=torch_linear_bias_init(fan_in),
                  name=name)


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class TemporalAttention(nn.Module):
  heads: int
  dim_head: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    inner = self.heads * self.dim_head
    qkv = _dense(3 * inner, dim, False, self.dtype, "to_qkv")(x.astype(self.dtype))
    q, k, v = jnp.split(qkv, 3, axis=-1)  # the official chunk(3): q, k, v in that order
    split = lambda t: t.reshape(t.shape[:-1] + (self.heads, self.dim_head))
    q, k, v = split(q), split(k), split(v)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * self.dim_head ** -0.5, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(x.shape[:-1] + (inner,))
    # The official code drops the output projection only when one head spans the whole width.
    if self.heads == 1 and self.dim_head == dim:
      return out.astype(jnp.float32)
    return _dense(dim, inner, True, self.dtype, "to_out")(out).astype(jnp.float32)


class TemporalBlock(nn.Module):
  heads: int
  dim_head: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x = x + TemporalAttention(self.heads, self.dim_head, self.dtype, name="attn")(_layer_norm("attn_norm")(x))
    h = _layer_norm("mlp_norm")(x).astype(self.dtype)
    h = _dense(self.mlp_dim, dim, True, self.dtype, "fc1")(h)
    h = jax.nn.gelu(h.astype(jnp.float32), approximate=True)  # the official GELU is the tanh form
    h = _dense(dim, self.mlp_dim, True, self.dtype, "fc2")(h.astype(self.dtype))
    return x + h.astype(jnp.float32)


class TemporalTransformer(nn.Module):
  """[N, T, D] frame features -> [N, D], the class token's output."""
  num_frames: int = 16
  depth: int = 1
  heads: int = 8
  dim_head: int = 64
  mlp_dim: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frames):
    n, t, dim = frames.shape
    if t > self.num_frames:
      raise ValueError(f"{t} frames, but the temporal model has positions for {self.num_frames}")
    cls = self.param("cls_token", nn.initializers.normal(1.0), (1, 1, dim), jnp.float32)
    positions = self.param("pos_embedding", nn.initializers.normal(1.0), (1, self.num_frames + 1, dim),
                           jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, dim)), frames.astype(jnp.float32)], axis=1)
    x = x + positions[:, :t + 1]
    for i in range(self.depth):
      x = TemporalBlock(self.heads, self.dim_head, self.mlp_dim, self.dtype, name=f"layers_{i}")(x)
    return x[:, 0]
