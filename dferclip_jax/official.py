"""Official DFER-CLIP checkpoints (PyTorch ``.pth``) -> our model and variables.

``load_checkpoint(path)`` reads the file with the torch-free restricted reader
(``torch_pickle``; torch is not needed), infers every hyperparameter from the tensor shapes,
renames the official (OpenAI-CLIP) parameters to ours, and recovers the prompts' token ids from
the stored ``token_prefix``/``token_suffix`` embeddings — rows of the frozen token-embedding
table — so no tokenizer is needed. ``model.apply(variables, video)`` then gives the official
logits for ``video`` in [0, 1], [N, T, H, W, 3].

What is inferred and how (as the official ``clip.build_model`` does where it applies):
  * CLIP: vision width/patch/resolution from ``conv1`` and the positional embedding, layers by
    counting resblocks, heads = width // 64 in both towers; text width, context, vocabulary and
    layers likewise; the projection size from ``text_projection``.
  * prompts: n_ctx and class-specific vs generic from ``ctx`` ([C, n, D] or [n, D]); the number
    of classes from ``token_prefix``.
  * temporal model: depth by counting layers, the MLP size from its first Linear, frames from the
    position embedding. Heads and head size cannot be told apart by shapes (the qkv projection is
    3 x heads x dim_head wide): the official 8 x 64 is assumed, and other widths need
    ``temporal_heads``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from dferclip_jax import torch_pickle
from dferclip_jax.models.param_tree import CheckpointMismatchError, check_tree
from dferclip_jax.models.clip_config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from dferclip_jax.models.dferclip import DFERCLIP, prompt_text_length, variable_shapes

X_TOKEN = 343  # "x</w>" in OpenAI's BPE: what the official prompts hold at the context positions


class OfficialCheckpointError(CheckpointMismatchError):
  """An official checkpoint that cannot be mapped onto the model."""


# ----------------------------------------------------------------------------- reading


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """-> the model's state dict (numpy), ``module.`` prefixes (DataParallel) removed."""
  obj = torch_pickle.load(path)
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping) or not obj:
    raise OfficialCheckpointError(f"{path}: holds no state dict (expected a dict with 'state_dict', "
                                  f"or a state dict itself)")
  state = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise OfficialCheckpointError(f"{path}: state dict entry {key!r} is not a tensor")
    state[key[len("module."):] if key.startswith("module.") else key] = value
  return state


# ----------------------------------------------------------------------------- inference


def _count(state, pattern: str) -> int:
  rx = re.compile(pattern)
  return len({m.group(1) for k in state if (m := rx.match(k))})


def _need(state, key: str, source: str) -> np.ndarray:
  if key not in state:
    raise OfficialCheckpointError(f"{source}: missing key {key!r} (not an official DFER-CLIP checkpoint?)")
  return state[key]


def infer_clip_config(state, source: str) -> CLIPConfig:
  if any(k.startswith("image_encoder.layer1") for k in state):
    raise OfficialCheckpointError(f"{source}: a ResNet CLIP backbone; only ViT backbones are supported")
  conv = _need(state, "image_encoder.conv1.weight", source)
  width, patch = conv.shape[0], conv.shape[-1]
  grid = round((_need(state, "image_encoder.positional_embedding", source).shape[0] - 1) ** 0.5)
  text_width = _need(state, "text_encoder.ln_final.weight", source).shape[0]
  token_embedding = _need(state, "clip_model_.token_embedding.weight", source)
  for name, w in (("vision", width), ("text", text_width)):
    if w < 64 or w % 64:
      raise OfficialCheckpointError(f"{source}: {name} width {w} is not a multiple of 64 (heads = width // 64)")
  vision = CLIPVisionConfig(
      hidden_size=width, intermediate_size=_need(
          state, "image_encoder.transformer.resblocks.0.mlp.c_fc.weight", source).shape[0],
      num_hidden_layers=_count(state, r"image_encoder\.transformer\.resblocks\.(\d+)\."),
      num_attention_heads=width // 64, image_size=patch * grid, patch_size=patch)
  text = CLIPTextConfig(
      vocab_size=token_embedding.shape[0], hidden_size=text_width,
      intermediate_size=_need(state, "text_encoder.transformer.resblocks.0.mlp.c_fc.weight", source).shape[0],
      num_hidden_layers=_count(state, r"text_encoder\.transformer\.resblocks\.(\d+)\."),
      num_attention_heads=text_width // 64,
      max_position_embeddings=_need(state, "text_encoder.positional_embedding", source).shape[0],
      eos_token_id=2)  # OpenAI's checkpoints: pool at argmax(ids)
  return CLIPConfig(text_config=text, vision_config=vision,
                    projection_dim=_need(state, "text_encoder.text_projection", source).shape[1])


def infer_model_kwargs(state, source: str, temporal_heads: int | None = None) -> dict:
  ctx = _need(state, "prompt_learner.ctx", source)
  prefix = _need(state, "prompt_learner.token_prefix", source)
  qkv = _need(state, "temporal_net.temporal_transformer.layers.0.0.fn.fn.to_qkv.weight", source)
  inner = qkv.shape[0] // 3
  heads = temporal_heads or 8
  if inner % heads:
    raise OfficialCheckpointError(f"{source}: temporal qkv width {inner} is not divisible by "
                                  f"{heads} heads; pass temporal_heads")
  return dict(
      num_classes=prefix.shape[0], n_ctx=ctx.shape[-2], class_specific=ctx.ndim == 3,
      temporal_layers=_count(state, r"temporal_net\.temporal_transformer\.layers\.(\d+)\."),
      temporal_heads=heads, temporal_dim_head=inner // heads,
      temporal_mlp_dim=_need(state, "temporal_net.temporal_transformer.layers.0.1.fn.fn.net.0.weight",
                             source).shape[0],
      num_frames=_need(state, "temporal_net.pos_embedding", source).shape[1] - 1,
      context_length=_need(state, "text_encoder.positional_embedding", source).shape[0])


# ----------------------------------------------------------------------------- renaming


def _linear(out: dict, path: tuple, state, key: str, used: set, bias: bool = True):
  out[path + ("kernel",)] = state[key + ".weight"].T
  used.add(key + ".weight")
  if bias:
    out[path + ("bias",)] = state[key + ".bias"]
    used.add(key + ".bias")


def _layer_norm(out: dict, path: tuple, state, key: str, used: set):
  out[path + ("scale",)] = state[key + ".weight"]
  out[path + ("bias",)] = state[key + ".bias"]
  used.update({key + ".weight", key + ".bias"})


def _resblocks(out, prefix: tuple, state, key_prefix: str, layers: int, used: set):
  for i in range(layers):
    k = f"{key_prefix}.transformer.resblocks.{i}"
    p = prefix + ("encoder", "layers", str(i))
    w, b = state[f"{k}.attn.in_proj_weight"], state[f"{k}.attn.in_proj_bias"]
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):  # in_proj rows are q, k, v
      rows = slice(j * w.shape[1], (j + 1) * w.shape[1])
      out[p + ("self_attn", name, "kernel")] = w[rows].T
      out[p + ("self_attn", name, "bias")] = b[rows]
    used.update({f"{k}.attn.in_proj_weight", f"{k}.attn.in_proj_bias"})
    _linear(out, p + ("self_attn", "out_proj"), state, f"{k}.attn.out_proj", used)
    _layer_norm(out, p + ("layer_norm1",), state, f"{k}.ln_1", used)
    _layer_norm(out, p + ("layer_norm2",), state, f"{k}.ln_2", used)
    _linear(out, p + ("mlp", "fc1"), state, f"{k}.mlp.c_fc", used)
    _linear(out, p + ("mlp", "fc2"), state, f"{k}.mlp.c_proj", used)


def convert_params(state, clip_config: CLIPConfig, temporal_layers: int, used: set) -> dict:
  out: dict[tuple, np.ndarray] = {}
  v = ("clip", "vision_model")
  out[v + ("embeddings", "class_embedding")] = state["image_encoder.class_embedding"]
  out[v + ("embeddings", "patch_embedding", "kernel")] = state["image_encoder.conv1.weight"].transpose(2, 3, 1, 0)
  out[v + ("embeddings", "position_embedding", "embedding")] = state["image_encoder.positional_embedding"]
  used.update({"image_encoder.class_embedding", "image_encoder.conv1.weight",
               "image_encoder.positional_embedding"})
  _layer_norm(out, v + ("pre_layrnorm",), state, "image_encoder.ln_pre", used)
  _resblocks(out, v, state, "image_encoder", clip_config.vision_config.num_hidden_layers, used)
  _layer_norm(out, v + ("post_layernorm",), state, "image_encoder.ln_post", used)
  out[("clip", "visual_projection", "kernel")] = state["image_encoder.proj"]  # x @ proj: no transpose
  used.add("image_encoder.proj")

  t = ("clip", "text_model")
  out[t + ("embeddings", "token_embedding", "embedding")] = state["clip_model_.token_embedding.weight"]
  out[t + ("embeddings", "position_embedding", "embedding")] = state["text_encoder.positional_embedding"]
  used.update({"clip_model_.token_embedding.weight", "text_encoder.positional_embedding"})
  _resblocks(out, t, state, "text_encoder", clip_config.text_config.num_hidden_layers, used)
  _layer_norm(out, t + ("final_layer_norm",), state, "text_encoder.ln_final", used)
  out[("clip", "text_projection", "kernel")] = state["text_encoder.text_projection"]
  used.add("text_encoder.text_projection")
  out[("clip", "logit_scale")] = state.get("clip_model_.logit_scale", np.float32(np.log(1 / 0.07))).reshape(())
  used.add("clip_model_.logit_scale")

  out[("temporal", "cls_token")] = state["temporal_net.cls_token"]
  out[("temporal", "pos_embedding")] = state["temporal_net.pos_embedding"]
  used.update({"temporal_net.cls_token", "temporal_net.pos_embedding"})
  for i in range(temporal_layers):
    k = f"temporal_net.temporal_transformer.layers.{i}"
    p = ("temporal", f"layers_{i}")
    _layer_norm(out, p + ("attn_norm",), state, f"{k}.0.fn.norm", used)
    _linear(out, p + ("attn", "to_qkv"), state, f"{k}.0.fn.fn.to_qkv", used, bias=False)
    if f"{k}.0.fn.fn.to_out.0.weight" in state:
      _linear(out, p + ("attn", "to_out"), state, f"{k}.0.fn.fn.to_out.0", used)
    _layer_norm(out, p + ("mlp_norm",), state, f"{k}.1.fn.norm", used)
    _linear(out, p + ("fc1",), state, f"{k}.1.fn.fn.net.0", used)
    _linear(out, p + ("fc2",), state, f"{k}.1.fn.fn.net.3", used)
  out[("prompt_learner", "ctx")] = state["prompt_learner.ctx"]
  used.add("prompt_learner.ctx")
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in out.items()})


def _check_duplicate_clip(state, used: set, source: str) -> None:
  """The official model keeps a second reference to its CLIP (``clip_model_``); its tensors must be
  the ones the forward pass uses, else the file was edited and we would not know which to trust."""
  for key in [k for k in state if k.startswith("clip_model_.") and k not in used]:
    rest = key[len("clip_model_."):]
    twin = "image_encoder." + rest[len("visual."):] if rest.startswith("visual.") else "text_encoder." + rest
    if twin not in state:
      raise OfficialCheckpointError(f"{source}: unexpected key {key!r}")
    if state[twin].shape != state[key].shape or not np.array_equal(state[twin], state[key]):
      raise OfficialCheckpointError(f"{source}: {key} differs from {twin}, which the model uses")
    used.add(key)


# ----------------------------------------------------------------------------- prompt ids


def recover_prompt_ids(prefix, suffix, table, n_ctx: int, source: str) -> tuple[np.ndarray, np.ndarray]:
  """Stored prefix [C, 1, D] and suffix [C, S, D] embeddings -> (ids [C, 1+n_ctx+S], name_lens [C])."""
  rows = defaultdict(list)
  for token, row in enumerate(np.ascontiguousarray(table, np.float32)):
    rows[row.tobytes()].append(token)
  eot = table.shape[0] - 1  # OpenAI's vocabulary ends with <|endoftext|>

  def lookup(c: int, position: int, row) -> int:
    hits = rows.get(np.ascontiguousarray(row, np.float32).tobytes(), [])
    if len(hits) != 1:
      what = "matches no row" if not hits else f"matches several rows {hits[:5]}"
      raise OfficialCheckpointError(f"{source}: prompt of class {c}, token {position}: the stored "
                                    f"embedding {what} of the token-embedding table")
    return hits[0]

  num_classes, suffix_len = prefix.shape[0], suffix.shape[1]
  ids = np.zeros((num_classes, 1 + n_ctx + suffix_len), np.int32)
  name_lens = np.zeros((num_classes,), np.int32)
  ctx_id = X_TOKEN if X_TOKEN < eot else 0
  for c in range(num_classes):
    ids[c, 0] = lookup(c, 0, prefix[c, 0])
    ids[c, 1:1 + n_ctx] = ctx_id
    ids[c, 1 + n_ctx:] = [lookup(c, 1 + n_ctx + s, suffix[c, s]) for s in range(suffix_len)]
    ends = np.flatnonzero(ids[c, 1 + n_ctx:] == eot)
    if not ends.size:
      raise OfficialCheckpointError(f"{source}: prompt of class {c} has no end-of-text token (id {eot})")
    name_lens[c] = ends[0]  # the class text's tokens sit between the context and <eot>
  return ids, name_lens


# ----------------------------------------------------------------------------- public API


def load_checkpoint(path: str | Path, class_token_position: str = "end", *,
                    temporal_heads: int | None = None) -> tuple[DFERCLIP, dict[str, Any]]:
  """An official DFER-CLIP ``.pth`` -> (model, numpy variables) giving the official logits.

  ``class_token_position`` is not stored in the checkpoint: pass the one it was trained with.
  """
  source = str(path)
  state = read_state_dict(path)
  clip_config = infer_clip_config(state, source)
  kwargs = infer_model_kwargs(state, source, temporal_heads)
  model = DFERCLIP(clip_config, class_token_position=class_token_position, **kwargs)
  used: set[str] = set()
  try:
    params = convert_params(state, clip_config, kwargs["temporal_layers"], used)
  except KeyError as e:
    raise OfficialCheckpointError(f"{source}: missing key {e.args[0]!r}") from None
  ids, name_lens = recover_prompt_ids(state["prompt_learner.token_prefix"],
                                      state["prompt_learner.token_suffix"],
                                      state["clip_model_.token_embedding.weight"], kwargs["n_ctx"], source)
  used.update({"prompt_learner.token_prefix", "prompt_learner.token_suffix"})
  model = model.clone(text_length=prompt_text_length(ids, model.context_length))
  variables = {"params": params, "prompts": {"ids": ids, "name_lens": name_lens}}
  try:
    check_tree(variables, variable_shapes(model), source=source)
  except CheckpointMismatchError as e:
    raise OfficialCheckpointError(str(e)) from None
  _check_duplicate_clip(state, used, source)
  unknown = sorted(set(state) - used)
  if unknown:
    raise OfficialCheckpointError(f"{source}: keys this converter does not know: {unknown}")
  return model, variables
