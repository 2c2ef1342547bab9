"""DFER-CLIP: video -> per-frame CLIP image features -> temporal model -> video feature, matched
by cosine similarity (x 100) against learnable-prompt text features of each class.

Variables::

  {"params": {"clip": <CLIP, Hugging Face Flax names>,
              "temporal": {cls_token, pos_embedding, layers_<i>/...},
              "prompt_learner": {ctx}},
   "prompts": {"ids": int32 [C, L], "name_lens": int32 [C]}}

``prompts`` holds the tokenized ``"X X ... X <class text>"`` prompts (not trainable), so
``model.apply(variables, video)`` needs nothing else and checkpoints carry the class texts'
tokens. The frozen prefix/suffix embeddings the official code stores as buffers are looked up
from the (frozen) CLIP token embedding at apply time: the same numbers.

Optimizer groups key on the top-level names: ``clip/vision_model`` + ``clip/visual_projection``
(the image tower), ``temporal``, ``prompt_learner``; the rest of ``clip`` is frozen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from dferclip_jax.models.clip import CLIP, normalize_pixels
from dferclip_jax.models.clip_config import CLIPConfig
from dferclip_jax.models.param_tree import check_tree
from dferclip_jax.models.prompts import POSITIONS, PromptLearner
from dferclip_jax.models.temporal import TEMPORAL_POOLINGS, TemporalTransformer
from dferclip_jax.tokenizer import tokenize

LOGIT_SCALE = 100.0  # the official logits divide by a fixed temperature of 0.01


def l2_normalize(x, axis=-1):
  return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


class DFERCLIP(nn.Module):
  clip_config: CLIPConfig
  num_classes: int
  n_ctx: int = 8
  class_specific: bool = True
  class_token_position: str = "end"
  temporal_layers: int = 1
  temporal_heads: int = 8
  temporal_dim_head: int = 64
  temporal_mlp_dim: int = 1024
  # "transformer" (the official model) or "mean" (an ablation: the frames' mean, blind to order).
  temporal_pooling: str = "transformer"
  num_frames: int = 16
  context_length: int = 77
  # Positions the text tower runs on (None: all context_length); see ``prompt_text_length``.
  text_length: int | None = None
  normalize_input: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    if self.class_token_position not in POSITIONS:
      raise ValueError(f"class_token_position={self.class_token_position!r}: expected one of {POSITIONS}")
    if self.temporal_pooling not in TEMPORAL_POOLINGS:
      raise ValueError(f"temporal_pooling={self.temporal_pooling!r}: expected one of {TEMPORAL_POOLINGS}")
    self.clip = CLIP(self.clip_config, dtype=self.dtype, remat=self.remat)
    self.temporal = self.make_temporal()
    self.prompt_learner = self.make_prompt_learner()
    self.prompt_ids = self.variable("prompts", "ids", jnp.zeros,
                                    (self.num_classes, self.context_length), jnp.int32)
    self.name_lens = self.variable("prompts", "name_lens", jnp.zeros, (self.num_classes,), jnp.int32)

  # The new parts' modules, built from this model's fields in one place: setup() and
  # build_dferclip (which initialises them alone, without CLIP) both call these.
  @nn.nowrap
  def make_temporal(self) -> TemporalTransformer:
    return TemporalTransformer(self.num_frames, self.temporal_layers, self.temporal_heads,
                               self.temporal_dim_head, self.temporal_mlp_dim, self.dtype)

  @nn.nowrap
  def make_prompt_learner(self) -> PromptLearner:
    return PromptLearner(self.num_classes, self.n_ctx, self.class_specific, self.class_token_position)

  def encode_frames(self, video):
    """[N, T, H, W, 3] in [0, 1] (float) or uint8 in [0, 255] -> per-frame features [N, T, D]."""
    if video.dtype == jnp.uint8:
      video = video.astype(jnp.float32) / 255.0
    n, t = video.shape[:2]
    frames = video.reshape((n * t,) + video.shape[2:]).astype(jnp.float32)
    if self.normalize_input:
      frames = normalize_pixels(frames)
    return self.clip.encode_image(frames).reshape(n, t, -1)

  def pool_frames(self, frame_features):
    """Per-frame features [N, T, D] -> one feature per video [N, D]."""
    if self.temporal_pooling == "transformer":
      return self.temporal(frame_features)
    if self.is_initializing():  # "mean" keeps the temporal params (unused): one variable layout
      self.temporal(frame_features)
    return jnp.mean(frame_features, axis=1)

  def encode_video(self, video):
    """Video -> (L2-normalised video features [N, D], per-frame CLIP features [N, T, D])."""
    frame_features = self.encode_frames(video)
    return l2_normalize(self.pool_frames(frame_features)), frame_features

  def encode_prompts(self):
    """The classes' L2-normalised text features [C, D] from the learnable prompts."""
    ids = self.prompt_ids.value
    prompts = self.prompt_learner(self.clip.embed_tokens(ids), self.name_lens.value)
    eot = jnp.argmax(ids, axis=-1)  # the official rule: the end-of-text token has the largest id
    # The text tower is causal and pooled at <eot>: positions after every prompt's <eot> cannot
    # change any feature, so the tower runs on the prefix that holds them all (exact).
    length = self.text_length or self.context_length
    features = self.clip.encode_text_embeddings(prompts[:, :length], eot)
    # Ids whose <eot> lies beyond the prefix (text_length inconsistent with the prompts) give
    # NaN features, which stop training loudly, rather than quietly wrong ones.
    features = jnp.where((eot < length)[:, None], features, jnp.nan)
    return l2_normalize(features)

  def __call__(self, video, *, train: bool = False, return_features: bool = False,
               text_features=None):
    """``text_features``: ``encode_prompts()``'s output, where the caller already has it (it is
    constant for fixed variables: evaluation computes it once, not once per batch)."""
    del train  # no dropout or batch statistics: train and eval compute the same function
    video_features, frame_features = self.encode_video(video)
    if text_features is None:
      text_features = self.encode_prompts()
    logits = LOGIT_SCALE * video_features @ text_features.T
    if return_features:
      return {"logits": logits, "video_features": video_features, "text_features": text_features,
              "frame_features": frame_features}
    return logits


# ----------------------------------------------------------------------------- building


def prompt_tokens(tokenizer, class_texts: Sequence[str], n_ctx: int, context_length: int = 77):
  """The official prompts ``"X X ... X <text>"`` -> (ids int32 [C, L], name_lens int32 [C])."""
  prefix = " ".join(["X"] * n_ctx)
  ids, _ = tokenize(tokenizer, [f"{prefix} {text}" for text in class_texts], context_length)
  name_lens = np.array([len(tokenizer.encode(text, add_special_tokens=False)) for text in class_texts],
                       np.int32)
  return ids, name_lens


def prompt_text_length(ids, context_length: int = 77, multiple: int = 8) -> int:
  """The shortest prefix of the tokenized prompts ``ids`` [C, L] that holds every end-of-text
  token (the largest id of each row), rounded up to a multiple of 8 (friendlier matmul shapes),
  at most ``context_length``: the ``text_length`` of a DFER-CLIP over these prompts."""
  needed = int(np.max(np.argmax(np.asarray(ids), axis=-1))) + 1
  return min(context_length, -(-needed // multiple) * multiple)


def model_kwargs(model: DFERCLIP) -> dict:
  """The module's hyperparameters (what model.json stores), the CLIP config as HF's dict."""
  out = {}
  for field in dataclasses.fields(model):
    if field.name in ("parent", "name"):
      continue
    value = getattr(model, field.name)
    if field.name == "clip_config":
      value = value.to_hf_dict()
    elif field.name == "dtype":
      value = jnp.dtype(value).name
    out[field.name] = value
  return out


def model_from_kwargs(kwargs: dict, **overrides) -> DFERCLIP:
  kwargs = {**kwargs, **overrides}
  kwargs["clip_config"] = CLIPConfig.from_hf_dict(kwargs["clip_config"], source="model.json")
  kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
  known = {f.name for f in dataclasses.fields(DFERCLIP)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f"model.json: unknown model fields {unknown}")
  return DFERCLIP(**kwargs)


def variable_shapes(model: DFERCLIP):
  """The full variable tree of ``model`` as ShapeDtypeStructs (nothing allocated)."""
  c = model.clip_config.vision_config
  video = jnp.zeros((1, model.num_frames, c.image_size, c.image_size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video))


def build_dferclip(clip_config: CLIPConfig, clip_params, class_texts: Sequence[str], tokenizer, *,
                   rng: jax.Array, **kwargs) -> tuple[DFERCLIP, dict]:
  """A DFER-CLIP around given CLIP params -> (model, numpy variables).

  Only the new parts are initialised (temporal model, context vectors); the CLIP params are used
  as given. ``kwargs`` are DFERCLIP's hyperparameters (n_ctx, class_specific, ...).
  """
  model = DFERCLIP(clip_config, num_classes=len(class_texts), **kwargs)
  ids, name_lens = prompt_tokens(tokenizer, class_texts, model.n_ctx, model.context_length)
  if model.text_length is None:
    model = model.clone(text_length=prompt_text_length(ids, model.context_length))
  vocab = clip_config.text_config.vocab_size
  if ids.max() >= vocab:
    raise ValueError(f"the tokenizer gives id {ids.max()}, outside the CLIP vocabulary of {vocab}")
  t_rng, p_rng = jax.random.split(rng)
  dim = clip_config.projection_dim
  temporal = model.make_temporal().init(t_rng, jnp.zeros((1, model.num_frames, dim)))["params"]
  width = clip_config.text_config.hidden_size
  prompt_learner = model.make_prompt_learner().init(
      p_rng, jnp.zeros((model.num_classes, model.context_length, width)), jnp.asarray(name_lens))["params"]
  variables = {"params": {"clip": clip_params, "temporal": temporal, "prompt_learner": prompt_learner},
               "prompts": {"ids": ids, "name_lens": name_lens}}
  variables = jax.tree.map(np.asarray, variables)
  check_tree(variables, variable_shapes(model), source="build_dferclip")
  return model, variables
