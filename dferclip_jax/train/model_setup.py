"""The model a config describes: CLIP (pretrained from ``config.model.clip``, or random from
``config.model.clip_arch``), its tokenizer, the class texts, and the DFER-CLIP parts around them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dferclip_jax import class_texts as class_texts_lib, distributed, storage
from dferclip_jax.export import FORMAT
from dferclip_jax.models import clip_config as clip_config_lib
from dferclip_jax.models.clip import CLIP, init_clip_params
from dferclip_jax.models.clip_checkpoint import load_clip
from dferclip_jax.models.dferclip import DFERCLIP, build_dferclip, model_kwargs
from dferclip_jax.tokenizer import WordTokenizer, load_tokenizer


@dataclasses.dataclass
class ModelBundle:
  model: DFERCLIP
  variables: dict          # host numpy: {"params": ..., "prompts": ...}
  class_names: tuple[str, ...]
  class_texts: list[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def load_class_texts(config) -> list[str]:
  return class_texts_lib.load(config.model.text_type, len(config.class_names), config.model.class_texts_file)


def clip_and_tokenizer(config, texts, rng):
  """-> (CLIPConfig, numpy CLIP params, tokenizer)."""
  dtype = jnp.dtype(config.dtype)
  if config.model.clip:
    clip_model, params = load_clip(config.model.clip, dtype=dtype)
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.clip)
    return clip_model.config, params, tokenizer
  # A CLIP trained from scratch has no vocabulary to honour: a word vocabulary of the prompts.
  tokenizer = WordTokenizer(list(texts) + ["X"])
  arch = dict(config.model.clip_arch)
  config_ = clip_config_lib.tiny(vocab_size=tokenizer.vocab_size, **arch)
  params = jax.tree.map(np.asarray, init_clip_params(CLIP(config_), rng))
  return config_, params, tokenizer


def build_model(config, rng: jax.Array) -> ModelBundle:
  texts = load_class_texts(config)
  clip_rng, rng = jax.random.split(rng)
  clip_config, clip_params, tokenizer = clip_and_tokenizer(config, texts, clip_rng)
  m = config.model
  model, variables = build_dferclip(
      clip_config, clip_params, texts, tokenizer, rng=rng, n_ctx=m.n_ctx,
      class_specific=m.class_specific, class_token_position=m.class_token_position,
      temporal_layers=m.temporal_layers, temporal_heads=m.temporal_heads,
      temporal_dim_head=m.temporal_dim_head, temporal_mlp_dim=m.temporal_mlp_dim,
      temporal_pooling=m.temporal_pooling,
      num_frames=config.data.num_frames, normalize_input=m.normalize_input,
      dtype=jnp.dtype(config.dtype), remat=config.remat)
  return ModelBundle(model, variables, tuple(config.class_names), texts)


def write_model_card(workdir: Path, bundle: ModelBundle, config) -> None:
  """``workdir/model.json``: what evaluation needs to rebuild the model from the checkpoints."""
  if not distributed.is_writer():
    return
  card = {"format": FORMAT, "model": model_kwargs(bundle.model), "class_names": list(bundle.class_names),
          "class_texts": bundle.class_texts, "source": f"training run in {storage.absolute(workdir)}",
          "dataset": config.dataset, "fold": config.fold}
  storage.write_text_atomic(storage.path(workdir) / "model.json", json.dumps(card, indent=2) + "\n")
