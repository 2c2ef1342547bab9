"""CLIP (ViT image tower + causal text tower) in flax.linen.

Parameters are named exactly as in Hugging Face's Flax CLIP (``FlaxCLIPModel``), so a
``flax_model.msgpack`` restores as is and ``model.safetensors`` converts by renaming only
(see ``clip_checkpoint.py``). The computation matches ``transformers``' ``CLIPModel``:
``encode_image`` == ``get_image_features`` and ``encode_text`` == ``get_text_features``.

Precision: parameters are always float32; ``dtype`` is the matmul/activation dtype of the
Dense and Conv layers (bfloat16 on accelerators). LayerNorm, softmax and the residual stream
stay float32, which is what keeps bfloat16 runs close to float32 ones.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from dferclip_jax.models.clip_config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, TowerConfig

# Random init matters only for CLIPs trained from scratch (the demo, tests): pretrained weights
# replace it. Kernels use LeCun-normal (unit-variance activations), which keeps a random ViT's
# output sensitive to its input; CLIP's own std-0.02 init makes every image look alike at step 0
# and a from-scratch model then fails to start learning.
KERNEL_INIT = nn.initializers.lecun_normal()
# Hugging Face and OpenAI both use eps=1e-5 (flax's default is 1e-6).
LAYER_NORM_EPS = 1e-5
# The OpenAI normalisation constants, for pixels already scaled to [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def normalize_pixels(pixels: jax.Array) -> jax.Array:
  """[0, 1] RGB pixels (channels last) -> CLIP's mean/std-normalised pixels."""
  mean = jnp.asarray(CLIP_MEAN, dtype=pixels.dtype)
  std = jnp.asarray(CLIP_STD, dtype=pixels.dtype)
  return (pixels - mean) / std


def eot_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """Where the text tower pools: Hugging Face's rule, to the letter.

  Configs with ``eos_token_id == 2`` (the original openai/clip-vit-* ones) pool at
  ``argmax(input_ids)``, since the end-of-text token has the largest id in OpenAI's vocabulary;
  other configs pool at the first occurrence of ``eos_token_id``.
  """
  input_ids = jnp.asarray(input_ids)
  if eos_token_id == 2:
    return jnp.argmax(input_ids, axis=-1).astype(jnp.int32)
  return jnp.argmax(input_ids == eos_token_id, axis=-1).astype(jnp.int32)


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
  """Multi-head self-attention with separate q/k/v/out projections (HF's layout).

  ``query_positions`` (int [N], optional) evaluates the output at one position per row only:
  keys and values still come from every position, so that row's output is exactly the one the
  full computation gives (each output row depends on its own query and all keys/values alone).
  """
  hidden_size: int
  num_heads: int
  causal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, query_positions=None):
    head_dim = self.hidden_size // self.num_heads
    dense = lambda name: nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                                  kernel_init=KERNEL_INIT, name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim))
    queries = x if query_positions is None else _rows(x, query_positions)
    q, k, v = split(dense("q_proj")(queries)), split(dense("k_proj")(x)), split(dense("v_proj")(x))
    # Logits and softmax in float32: bfloat16 softmax over 50-77 tokens loses too much.
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (head_dim ** -0.5)
    if self.causal:
      length = x.shape[-2]
      if query_positions is None:
        mask = jnp.tril(jnp.ones((length, length), dtype=bool))
      else:  # row n's one query sits at query_positions[n]: it sees keys up to there
        mask = (jnp.arange(length)[None, :] <= query_positions[:, None])[:, None, None, :]
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    out = out.reshape(out.shape[:-2] + (self.hidden_size,))
    return dense("out_proj")(out)


def _rows(x, positions):
  """x [N, L, D], positions int [N] -> x[n, positions[n]] as [N, 1, D]."""
  return jnp.take_along_axis(x, positions.astype(jnp.int32)[:, None, None], axis=1)


class MLP(nn.Module):
  hidden_size: int
  intermediate_size: int
  activation: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = KERNEL_INIT
    x = nn.Dense(self.intermediate_size, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=init, name="fc1")(x)
    x = ACTIVATIONS[self.activation](x)
    return nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=init, name="fc2")(x)


class EncoderLayer(nn.Module):
  """Pre-norm residual block: x + attn(ln1(x)); x + mlp(ln2(x)).

  With ``pool_positions`` (int [N]) it returns only those rows, [N, 1, D]: see ``Attention``;
  the residual, LayerNorms and MLP act row by row, so the rows are exactly the full block's.
  """
  config: TowerConfig
  causal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pool_positions=None):
    c = self.config
    h = _layer_norm("layer_norm1")(x)
    attn = Attention(c.hidden_size, c.num_attention_heads, self.causal, self.dtype,
                     name="self_attn")(h.astype(self.dtype), pool_positions).astype(jnp.float32)
    x = (x if pool_positions is None else _rows(x, pool_positions)) + attn
    h = _layer_norm("layer_norm2")(x)
    x = x + MLP(c.hidden_size, c.intermediate_size, c.hidden_act, self.dtype,
                name="mlp")(h.astype(self.dtype)).astype(jnp.float32)
    return x


class LayerCollection(nn.Module):
  """The stack of blocks, named ``0``, ``1``, ... as in HF (hence no nn.scan).

  ``pool_positions`` (int [N]): the towers read one position per row (the image's class token,
  the text's end-of-text token), so the last block is evaluated there only, [N, 1, D]: about a
  twelfth of each tower's work that cannot reach the output. Earlier blocks need every position.
  """
  config: TowerConfig
  causal: bool
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, pool_positions=None):
    block = nn.remat(EncoderLayer) if self.remat else EncoderLayer
    last = self.config.num_hidden_layers - 1
    for i in range(self.config.num_hidden_layers):
      x = block(self.config, self.causal, self.dtype, name=str(i))(
          x, pool_positions if i == last else None)
    return x


class Encoder(nn.Module):
  config: TowerConfig
  causal: bool
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, pool_positions=None):
    return LayerCollection(self.config, self.causal, self.dtype, self.remat, name="layers")(
        x, pool_positions)


class PatchEmbedding(nn.Module):
  """The stride-p, p x p, bias-free patch convolution as one matmul over flattened patches.

  Identical sums (each output is the dot product of one patch with one filter): patches are cut
  out by a reshape, so XLA runs a plain matmul instead of its much slower strided convolution on
  CPU. The kernel keeps the convolution's name and HWIO shape (``patch_embedding/kernel``).
  """
  patch_size: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    p = self.patch_size
    kernel = self.param("kernel", KERNEL_INIT, (p, p, pixels.shape[-1], self.features), jnp.float32)
    n, h, w, c = pixels.shape
    h, w = h // p * p, w // p * p  # as a VALID convolution, a partial last patch is dropped
    pixels = pixels[:, :h, :w]
    patches = pixels.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, (h // p) * (w // p), p * p * c)  # each row: one patch, (i, j, c)
    return jnp.dot(patches.astype(self.dtype), kernel.reshape(p * p * c, self.features).astype(self.dtype))


class VisionEmbeddings(nn.Module):
  config: CLIPVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    patches = PatchEmbedding(c.patch_size, c.hidden_size, self.dtype, name="patch_embedding")(pixels)
    n = patches.shape[0]
    patches = patches.astype(jnp.float32)
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,), jnp.float32)
    cls = jnp.broadcast_to(cls, (n, 1, c.hidden_size))
    x = jnp.concatenate([cls, patches], axis=1)
    positions = nn.Embed(c.num_positions, c.hidden_size, embedding_init=nn.initializers.normal(0.02),
                         param_dtype=jnp.float32, name="position_embedding")
    if x.shape[1] != c.num_positions:
      raise ValueError(
          f"image of {pixels.shape[1]}x{pixels.shape[2]} pixels gives {x.shape[1] - 1} patches, but "
          f"the checkpoint was built for {c.image_size}x{c.image_size} ({c.num_positions - 1} patches)")
    return x + positions.embedding[None]


class VisionTransformer(nn.Module):
  config: CLIPVisionConfig
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, pixels):
    x = VisionEmbeddings(self.config, self.dtype, name="embeddings")(pixels)
    x = _layer_norm("pre_layrnorm")(x)  # sic: HF's spelling
    cls = jnp.zeros((x.shape[0],), jnp.int32)  # pooled at the class token
    x = Encoder(self.config, False, self.dtype, self.remat, name="encoder")(x, cls)
    return _layer_norm("post_layernorm")(x[:, 0])


class TextEmbeddings(nn.Module):
  config: CLIPTextConfig

  def setup(self):
    c = self.config
    init = nn.initializers.normal(0.02)
    self.token_embedding = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init,
                                    param_dtype=jnp.float32)
    self.position_embedding = nn.Embed(c.max_position_embeddings, c.hidden_size,
                                       embedding_init=init, param_dtype=jnp.float32)

  def embed_tokens(self, input_ids):
    return self.token_embedding(jnp.asarray(input_ids, jnp.int32))

  def add_positions(self, token_embeds):
    length = token_embeds.shape[-2]
    if length > self.config.max_position_embeddings:
      raise ValueError(f"text of {length} tokens is longer than the model's "
                       f"{self.config.max_position_embeddings} positions")
    return token_embeds + self.position_embedding.embedding[:length]


class TextTransformer(nn.Module):
  """Causal text tower; pooled at the given end-of-text positions."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    self.embeddings = TextEmbeddings(self.config)
    self.encoder = Encoder(self.config, True, self.dtype, self.remat)
    self.final_layer_norm = _layer_norm(None)

  def embed_tokens(self, input_ids):
    return self.embeddings.embed_tokens(input_ids)

  def __call__(self, token_embeds, eot_positions):
    x = self.embeddings.add_positions(token_embeds.astype(jnp.float32))
    x = self.encoder(x, jnp.asarray(eot_positions, jnp.int32))  # [M, 1, D]: the pooled rows
    return self.final_layer_norm(x)[:, 0]


class CLIP(nn.Module):
  """Both towers and their projections; ``__call__`` exists to ``init`` every parameter."""
  config: CLIPConfig
  dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    c = self.config
    self.vision_model = VisionTransformer(c.vision_config, self.dtype, self.remat)
    self.text_model = TextTransformer(c.text_config, self.dtype, self.remat)
    # Unit-scale features (OpenAI's projection init, std width^-0.5, is LeCun-normal here), as
    # large as the temporal model's N(0, 1) tokens.
    self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype,
                                      param_dtype=jnp.float32, kernel_init=KERNEL_INIT)
    self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype,
                                    param_dtype=jnp.float32, kernel_init=KERNEL_INIT)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init_value),
                                  (), jnp.float32)

  def encode_image(self, pixels):
    """CLIP-normalised float pixels [N, H, W, 3] -> image features [N, projection_dim]."""
    pooled = self.vision_model(pixels)
    return self.visual_projection(pooled.astype(self.dtype)).astype(jnp.float32)

  def embed_tokens(self, input_ids):
    """int ids [M, L] -> the (frozen) token embeddings [M, L, width] the text tower starts from."""
    return self.text_model.embed_tokens(input_ids)

  def encode_text_embeddings(self, token_embeds, eot_positions):
    """Token embeddings [M, L, width] (e.g. with learned prompt vectors spliced in) and the
    end-of-text position of each row [M] -> text features [M, projection_dim]."""
    pooled = self.text_model(token_embeds, jnp.asarray(eot_positions))
    return self.text_projection(pooled.astype(self.dtype)).astype(jnp.float32)

  def encode_text(self, input_ids):
    """int ids [M, L] -> text features [M, projection_dim], pooled by HF's rule."""
    positions = eot_positions(input_ids, self.config.text_config.eos_token_id)
    return self.encode_text_embeddings(self.embed_tokens(input_ids), positions)

  def __call__(self, pixels, input_ids):
    return self.encode_image(pixels), self.encode_text(input_ids)


def init_clip_params(model: CLIP, rng: jax.Array | None = None):
  """Random float32 parameters for ``model`` (shapes only need the config)."""
  c = model.config
  rng = jax.random.PRNGKey(0) if rng is None else rng
  pixels = jnp.zeros((1, c.vision_config.image_size, c.vision_config.image_size, 3), jnp.float32)
  ids = jnp.zeros((1, c.text_config.max_position_embeddings), jnp.int32)
  return model.init(rng, pixels, ids)["params"]


def clip_param_shapes(model: CLIP):
  """The parameter tree as ShapeDtypeStructs, without allocating anything."""
  return jax.eval_shape(lambda: init_clip_params(model))


__all__ = [
    "CLIP", "CLIPConfig", "CLIPTextConfig", "CLIPVisionConfig", "CLIP_MEAN", "CLIP_STD",
    "eot_positions", "init_clip_params", "clip_param_shapes", "normalize_pixels",
    "quick_gelu",
]
