"""Start training from a trained model (``config.init_checkpoint``) instead of bare CLIP.

The value names one of (the forms ``main.py --mode=evaluate --checkpoint`` reads, loaded by the same
code):

  * an official DFER-CLIP ``.pth`` (``official.load_checkpoint``);
  * a model directory, ``model.json`` + ``variables/`` (``convert_official``'s output or an export);
  * a training workdir plus which checkpoint: ``WORKDIR:best``, ``WORKDIR:latest`` or ``WORKDIR:STEP``.

The architecture (CLIP config, temporal model, contexts, class-token position), every parameter and
the prompt token ids come from the checkpoint; ``config.model``'s architecture, CLIP and text options
are not read. Only the class set may differ: classes are matched by name, what does not depend on
the class set (CLIP, temporal model, generic contexts) is kept, and the class-specific contexts and
prompt tokens of classes the checkpoint does not know are initialised from the config's class texts
(the only time the text options and the tokenizer are read). Optimizer state starts fresh: an
official ``.pth`` holds none, and a new recipe should not inherit an old momentum.

An official ``.pth`` records neither class names nor the class-token position: its classes are the
DFER-CLIP order for its class count (``class_orders``: 7 = DFEW/FERV39k, 11 = MAFW), and the position
is the official default "end" (convert with ``--class_token_position`` for another).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dferclip_jax import evaluation, export, storage
from dferclip_jax.data import class_orders
from dferclip_jax.models.param_tree import check_tree
from dferclip_jax.models.dferclip import DFERCLIP, prompt_text_length, prompt_tokens, variable_shapes
from dferclip_jax.models.prompts import PromptLearner
from dferclip_jax.tokenizer import load_tokenizer
from dferclip_jax.train.config_checks import ConfigError
from dferclip_jax.train.model_setup import ModelBundle, load_class_texts

FIELD = "config.init_checkpoint"
WHICH = re.compile(r"^(?P<dir>.+):(?P<which>best|latest|\d+)$")
OFFICIAL_ORDERS = {len(names): names for names in (class_orders.DFERCLIP_7, class_orders.DFERCLIP_11)}


@dataclasses.dataclass
class Source:
  model: DFERCLIP
  variables: dict                      # host numpy {"params", "prompts"}
  class_names: tuple[str, ...]
  class_texts: list[str] | None        # None where the checkpoint does not record them (a .pth)
  description: str


@dataclasses.dataclass
class ClassPlan:
  """What the model keeps from the checkpoint and what is new, as the log states it."""
  kept: list[str]                      # parts: "clip", "temporal", "contexts of classes [...]", ...
  new: list[str]
  dropped_classes: list[str]


# ----------------------------------------------------------------------------- reading


def parse(spec: str) -> tuple[str | int, str | None]:
  """``config.init_checkpoint`` -> (checkpoint, workdir) as ``evaluation.load_model_for_eval`` takes
  them; every form that names nothing loadable is a ConfigError saying what was expected."""
  forms = ("an official .pth, a model directory (model.json + variables/), or a training workdir "
           "with :best, :latest or :STEP")
  match = WHICH.match(spec)
  if match:
    workdir = storage.path(match["dir"])
    if not (workdir / export.MODEL_FILE).is_file() or not (workdir / "checkpoints").is_dir():
      raise ConfigError(f"{FIELD}={spec!r}: {workdir} is not a training workdir (no "
                        f"{export.MODEL_FILE} and checkpoints/)")
    which = match["which"]
    return (int(which) if which.isdigit() else which), str(workdir)
  path = storage.path(spec)
  if not path.exists():
    raise ConfigError(f"{FIELD}={spec!r}: no such file or directory (expected {forms})")
  if path.is_file():
    if path.suffix != ".pth":
      raise ConfigError(f"{FIELD}={spec!r}: a file that is not an official .pth (expected {forms})")
    return str(path), None
  if (path / "checkpoints").is_dir():
    raise ConfigError(f"{FIELD}={spec!r} is a training workdir: say which checkpoint, "
                      f"{spec}:best, {spec}:latest or {spec}:STEP")
  if not (path / export.MODEL_FILE).is_file():
    raise ConfigError(f"{FIELD}={spec!r}: a directory without {export.MODEL_FILE} (expected {forms})")
  return str(path), None


def load_source(config) -> Source:
  """The checkpoint ``config.init_checkpoint`` names, as host numpy variables."""
  spec = config.init_checkpoint
  checkpoint, workdir = parse(spec)
  model, variables, names, description = evaluation.load_model_for_eval(
      checkpoint, workdir, None, 0, dtype=jnp.dtype(config.dtype), remat=config.remat)
  texts = None
  if workdir is not None:
    texts = export.read_model_card_file(storage.path(workdir) / export.MODEL_FILE).get("class_texts") or None
  elif not str(checkpoint).endswith(".pth"):
    texts = export.read_model_card(checkpoint).get("class_texts") or None
  if names is None:
    names = _unnamed_classes(model.num_classes, config, spec)
  return Source(model, variables, tuple(names), texts, description)


def _unnamed_classes(num_classes: int, config, spec: str) -> tuple[str, ...]:
  """An official .pth (or a directory converted without names) stores no class names."""
  if num_classes in OFFICIAL_ORDERS:
    logging.info("%s records no class names: its %d classes are taken to be DFER-CLIP's order %s",
                 spec, num_classes, list(OFFICIAL_ORDERS[num_classes]))
    return OFFICIAL_ORDERS[num_classes]
  if num_classes == len(config.class_names):
    logging.info("%s records no class names: its %d classes are taken to be config.class_names",
                 spec, num_classes)
    return tuple(config.class_names)
  raise ConfigError(f"{FIELD}={spec!r} records no class names and has {num_classes} classes, the config "
                    f"{len(config.class_names)}: convert it with class names "
                    f"(python -m dferclip_jax.cli.convert_official --class_names=...)")


# ----------------------------------------------------------------------------- classes


def plan_classes(source: Source, config_names) -> ClassPlan:
  """Which parts the checkpoint gives and which the config's new classes need."""
  known = [n for n in config_names if n in source.class_names]
  fresh = [n for n in config_names if n not in source.class_names]

  def class_parts(names):
    if not names:
      return []
    parts = [f"prompt tokens of classes {names}"]
    return [f"contexts of classes {names}"] + parts if source.model.class_specific else parts

  kept = ["clip", "temporal"] + ([] if source.model.class_specific else ["generic contexts"])
  return ClassPlan(kept + class_parts(known), class_parts(fresh),
                   [n for n in source.class_names if n not in config_names])


def adapt_to_classes(source: Source, config, rng) -> tuple[DFERCLIP, dict, list[str] | None]:
  """The checkpoint's model and variables for the config's classes (by name, in the config's
  order) -> (model, variables, class texts or None where unknown)."""
  names = list(config.class_names)
  old = list(source.class_names)
  model, variables = source.model, source.variables
  if names == old:
    return model, variables, source.class_texts
  index = {name: i for i, name in enumerate(old)}
  fresh = [c for c, name in enumerate(names) if name not in index]
  prompts = variables["prompts"]
  ids = np.zeros((len(names), prompts["ids"].shape[1]), np.int32)
  name_lens = np.zeros((len(names),), np.int32)
  texts: list[str | None] = [None] * len(names)
  for c, name in enumerate(names):
    if name in index:
      ids[c], name_lens[c] = prompts["ids"][index[name]], prompts["name_lens"][index[name]]
      texts[c] = source.class_texts[index[name]] if source.class_texts else None
  if fresh:
    config_texts = load_class_texts(config)
    new_ids, new_lens = _tokens_for_new_classes(model, config, [config_texts[c] for c in fresh])
    ids[fresh], name_lens[fresh] = new_ids, new_lens
    for c in fresh:
      texts[c] = config_texts[c]

  # The new prompts may end later than the checkpoint's: the text tower's prefix follows them.
  model = model.clone(num_classes=len(names),
                      text_length=prompt_text_length(ids, model.context_length))
  params = dict(variables["params"])
  if model.class_specific:
    old_ctx = variables["params"]["prompt_learner"]["ctx"]
    # The official initialisation (normal, std 0.02) for every class, then the known ones copied over.
    init = PromptLearner(len(names), model.n_ctx, True, model.class_token_position).init(
        rng, jnp.zeros((len(names), model.context_length, old_ctx.shape[-1])), jnp.asarray(name_lens))
    ctx = np.array(init["params"]["ctx"], np.float32)
    for c, name in enumerate(names):
      if name in index:
        ctx[c] = old_ctx[index[name]]
    params["prompt_learner"] = {"ctx": ctx}
  variables = {"params": params, "prompts": {"ids": ids, "name_lens": name_lens}}
  check_tree(variables, variable_shapes(model), source=f"{FIELD} adapted to {len(names)} classes")
  return model, variables, (texts if all(t is not None for t in texts) else None)


def _tokens_for_new_classes(model: DFERCLIP, config, texts: list[str]):
  """The official prompts of new classes, tokenized with the checkpoint's vocabulary."""
  name = config.model.tokenizer or config.model.clip
  if not name:
    raise ConfigError(f"{FIELD}: new classes need the tokenizer of the checkpoint's CLIP for their "
                      f"prompts: set config.model.tokenizer (a directory with vocab.json + merges.txt)")
  try:
    tokenizer = load_tokenizer(name)
    ids, name_lens = prompt_tokens(tokenizer, texts, model.n_ctx, model.context_length)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{FIELD}: cannot tokenize the new classes' texts with the tokenizer {name!r} "
                      f"(config.model.tokenizer, else config.model.clip): {e}") from e
  vocab = model.clip_config.text_config.vocab_size
  if ids.max() >= vocab:
    raise ConfigError(f"{FIELD}: the tokenizer {name!r} gives id {ids.max()}, outside the checkpoint's "
                      f"vocabulary of {vocab}: set config.model.tokenizer to the checkpoint's own")
  return ids, name_lens


# ----------------------------------------------------------------------------- the training model


def check_fits(model: DFERCLIP, config, description: str) -> None:
  """What the data pipeline feeds must be what the checkpoint's model takes (the image size
  follows the model: the pipeline resizes to it)."""
  if model.num_frames != config.data.num_frames:
    raise ConfigError(f"{FIELD}: {description} takes {model.num_frames} frames per clip (its temporal "
                      f"position embedding), but config.data.num_frames={config.data.num_frames}: set "
                      f"--config.data.num_frames={model.num_frames}")


def build_model(config, rng: jax.Array) -> ModelBundle:
  """``model_setup.build_model``'s counterpart when ``config.init_checkpoint`` is set."""
  source = load_source(config)
  m = source.model
  v = m.clip_config.vision_config
  logging.info("%s=%s: starting from %s (%d classes, image %d, patch %d, %d temporal layer(s), n_ctx %d "
               "%s, position %s); config.model's CLIP, architecture and text options are not read",
               FIELD, config.init_checkpoint, source.description, m.num_classes, v.image_size,
               v.patch_size, m.temporal_layers, m.n_ctx,
               "class-specific" if m.class_specific else "generic", m.class_token_position)
  check_fits(m, config, source.description)
  plan = plan_classes(source, config.class_names)
  model, variables, texts = adapt_to_classes(source, config, jax.random.fold_in(rng, 19))
  log_plan(plan)
  return ModelBundle(model, variables, tuple(config.class_names), texts or [])


def log_plan(plan: ClassPlan) -> None:
  logging.info("%s: kept from the checkpoint: %s", FIELD, ", ".join(plan.kept))
  logging.info("%s: new (initialised from the config's class texts): %s", FIELD,
               ", ".join(plan.new) or "nothing")
  if plan.dropped_classes:
    logging.info("%s: classes of the checkpoint not in the config (dropped): %s", FIELD,
                 plan.dropped_classes)
