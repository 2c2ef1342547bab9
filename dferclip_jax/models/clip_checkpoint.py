"""Reading and writing Hugging Face CLIP checkpoints.

Three weight formats are read, in this order of preference:
  * ``flax_model.msgpack``: already in our naming, restored as is;
  * ``model.safetensors``: PyTorch naming, read with safetensors' numpy API (no torch);
  * ``pytorch_model.bin``: PyTorch naming, read with ``torch.load(weights_only=True)``.

PyTorch -> Flax renaming: LayerNorm ``weight`` -> ``scale``; Embedding ``weight`` -> ``embedding``;
Linear ``weight`` -> ``kernel`` transposed; the patch Conv ``weight`` OIHW -> HWIO; ``position_ids``
buffers are dropped. Every loaded tree is checked against the architecture of config.json:
missing, unexpected and mis-shaped keys are listed in one error, never skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import jax.numpy as jnp
from flax import serialization, traverse_util

from dferclip_jax import storage
from dferclip_jax.models.clip import CLIP, clip_param_shapes
from dferclip_jax.models.clip_config import CLIPConfig
from dferclip_jax.models.param_tree import CheckpointMismatchError, as_float32, check_tree

CONFIG_FILE = "config.json"
FLAX_WEIGHTS = "flax_model.msgpack"
SAFETENSORS_WEIGHTS = "model.safetensors"
PYTORCH_WEIGHTS = "pytorch_model.bin"
WEIGHT_FILES = (FLAX_WEIGHTS, SAFETENSORS_WEIGHTS, PYTORCH_WEIGHTS)


# ----------------------------------------------------------------------------- locating files


def resolve_checkpoint(name_or_path: str | os.PathLike) -> tuple[Path, Path]:
  """-> (config.json path, weights path) for a local directory or a Hugging Face hub id.

  Hub downloads go through huggingface_hub's cache and honour ``HF_HUB_OFFLINE=1``.
  """
  path = storage.local_folder(name_or_path)  # a bucket folder: a local copy
  if path.is_dir():
    config = path / CONFIG_FILE
    if not config.is_file():
      raise FileNotFoundError(f"{path}: no {CONFIG_FILE} in this CLIP checkpoint directory")
    for name in WEIGHT_FILES:
      if (path / name).is_file():
        return config, path / name
    raise FileNotFoundError(f"{path}: none of {', '.join(WEIGHT_FILES)} in this CLIP checkpoint directory")
  if path.exists():
    raise NotADirectoryError(f"{path}: a CLIP checkpoint must be a directory (holding {CONFIG_FILE} "
                             f"and weights) or a Hugging Face hub id")
  return _download_from_hub(str(name_or_path))


def _download_from_hub(repo_id: str) -> tuple[Path, Path]:
  import huggingface_hub
  from huggingface_hub.utils import EntryNotFoundError

  if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
    raise FileNotFoundError(f"{repo_id}: no such directory (and not a hub id of the form 'owner/name')")
  try:
    config = huggingface_hub.hf_hub_download(repo_id, CONFIG_FILE)
  except Exception as e:  # offline, unknown repo, no network: all end here, with the cause
    raise FileNotFoundError(
        f"{repo_id}: not a local directory, and its {CONFIG_FILE} could not be fetched from the "
        f"Hugging Face hub ({type(e).__name__}: {e}). With HF_HUB_OFFLINE=1 only cached models load."
    ) from e
  for name in WEIGHT_FILES:
    try:
      return Path(config), Path(huggingface_hub.hf_hub_download(repo_id, name))  # local: the hub's local cache
    except EntryNotFoundError:
      continue
  raise FileNotFoundError(f"{repo_id}: the hub repository has none of {', '.join(WEIGHT_FILES)}")


def read_config(config_path: str | os.PathLike) -> CLIPConfig:
  try:  # local: a local copy (storage.local_folder) or the hub's cache
    raw = storage.read_json(config_path)
  except ValueError as e:  # too large, not UTF-8, not JSON
    raise ValueError(f"{config_path}: not a readable JSON config ({e})") from e
  if raw is None:  # as open() said before the size bound
    raise FileNotFoundError(f"{config_path}: no such file")
  if not isinstance(raw, dict):
    raise ValueError(f"{config_path}: not a JSON object of CLIP's config")
  return CLIPConfig.from_hf_dict(raw, source=str(config_path))


# ----------------------------------------------------------------------------- reading weights


def read_weights(weights_path: str | os.PathLike) -> dict[str, Any]:
  """A weights file -> nested dict of numpy arrays in our (Flax) naming."""
  weights_path = Path(weights_path)  # local: a local copy (storage.local_folder) or the hub's cache
  name = weights_path.name
  if name.endswith(".msgpack"):
    raw = serialization.msgpack_restore(weights_path.read_bytes())
    if set(raw) == {"params"}:
      raw = raw["params"]
    return raw
  if name.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return pytorch_to_flax(load_file(str(weights_path)), source=str(weights_path))
  if name.endswith(".bin"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"{weights_path}: reading pytorch_model.bin needs torch; install it, or use "
                        f"a checkpoint with model.safetensors or flax_model.msgpack") from e
    state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
    return pytorch_to_flax({k: v.float().numpy() for k, v in state.items()}, source=str(weights_path))
  raise ValueError(f"{weights_path}: unknown weights format (expected one of {', '.join(WEIGHT_FILES)})")


def _is_layer_norm(module_name: str) -> bool:
  return "norm" in module_name or module_name.endswith("layrnorm")


def pytorch_to_flax(state: Mapping[str, np.ndarray], source: str = "checkpoint") -> dict[str, Any]:
  """transformers' PyTorch CLIP state dict -> our nested parameter dict (numpy)."""
  flat = {}
  for key, value in state.items():
    parts = key.split(".")
    if parts[-1] == "position_ids":
      continue
    value = np.asarray(value)
    module, leaf = parts[:-1], parts[-1]
    if leaf == "weight":
      owner = module[-1] if module else ""
      if _is_layer_norm(owner):
        leaf = "scale"
      elif owner.endswith("embedding") and owner != "patch_embedding":
        leaf = "embedding"
      elif owner == "patch_embedding":
        leaf, value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
      elif value.ndim == 2:
        leaf, value = "kernel", value.T
      else:
        raise CheckpointMismatchError(f"{source}: cannot map PyTorch key {key!r} of shape {value.shape}")
    flat[tuple(module) + (leaf,)] = value
  return traverse_util.unflatten_dict(flat)


def flax_to_pytorch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of ``pytorch_to_flax``: our params -> transformers' PyTorch state dict."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value, dtype=np.float32)
    module, leaf = path[:-1], path[-1]
    if leaf in ("scale", "embedding"):
      leaf = "weight"
    elif leaf == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      leaf = "weight"
    out[".".join(module + (leaf,))] = np.array(value, order="C")  # ascontiguousarray would make 0-d 1-d
  return out


# ----------------------------------------------------------------------------- public API


def load_clip(name_or_path: str | os.PathLike, dtype: Any = jnp.float32, remat: bool = False):
  """A local HF CLIP directory or hub id -> ``(CLIP module, float32 numpy params)``.

  The architecture is read from config.json (ViT-B/32, B/16, L/14, L/14@336 ...); ``dtype`` is
  the matmul dtype; parameters stay float32.
  """
  config_path, weights_path = resolve_checkpoint(name_or_path)
  model = CLIP(read_config(config_path), dtype=dtype, remat=remat)
  params = read_weights(weights_path)
  check_tree(params, clip_param_shapes(model), source=str(weights_path))
  return model, as_float32(params)


def save_clip(directory: str | os.PathLike, config: CLIPConfig, params: Mapping[str, Any],
              formats: tuple[str, ...] = ("msgpack", "safetensors")) -> Path:
  """Writes a checkpoint directory that ``load_clip`` (and transformers) read back."""
  directory = Path(directory)  # local: safetensors writes local files only
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
  params = as_float32(params)
  for fmt in formats:
    if fmt == "msgpack":
      (directory / FLAX_WEIGHTS).write_bytes(serialization.msgpack_serialize(params))
    elif fmt == "safetensors":
      from safetensors.numpy import save_file
      save_file(flax_to_pytorch(params), str(directory / SAFETENSORS_WEIGHTS), metadata={"format": "pt"})
    else:
      raise ValueError(f"unknown checkpoint format {fmt!r} (expected 'msgpack' or 'safetensors')")
  return directory
