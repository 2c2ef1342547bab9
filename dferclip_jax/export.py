"""The project's own model checkpoint: ``model.json`` + an Orbax checkpoint of the variables.

::

  DIR/model.json      {"format": "dferclip-jax/model/v1", "model": {DFERCLIP fields, the CLIP
                       config as Hugging Face's dict}, "class_names": [...], "class_texts": [...],
                       "source": where it came from}
  DIR/variables/      Orbax (StandardCheckpointer) of {"params": ..., "prompts": ...}

Evaluation and prediction restore this format; training writes it for its best model, and the
official-checkpoint converter writes it too. Restoring reads the architecture from model.json,
checks the stored tree against it (missing / unexpected / mis-shaped keys are named), and can lay
the arrays out on any mesh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from dferclip_jax import storage
from dferclip_jax.models.param_tree import check_tree
from dferclip_jax.models.dferclip import DFERCLIP, model_from_kwargs, model_kwargs, variable_shapes

FORMAT = "dferclip-jax/model/v1"
MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


class ModelCheckpointError(ValueError):
  """A directory that is not a model checkpoint of this project, or does not fit its model.json."""


def save_model(directory: str | Path, model: DFERCLIP, variables, *, class_names: Sequence[str] = (),
               class_texts: Sequence[str] = (), source: str = "", extra: dict | None = None) -> Path:
  directory = storage.absolute(directory)
  if (directory / VARIABLES_DIR).exists():
    raise FileExistsError(f"{directory}: already holds a model checkpoint; choose a new directory")
  if class_names and len(class_names) != model.num_classes:
    raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class model")
  directory.mkdir(parents=True, exist_ok=True)
  host = jax.tree.map(np.asarray, jax.device_get(variables))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / VARIABLES_DIR, host)
  card = {"format": FORMAT, "model": model_kwargs(model), "class_names": list(class_names),
          "class_texts": list(class_texts), "source": source, **(extra or {})}
  storage.write_text_atomic(directory / MODEL_FILE, json.dumps(card, indent=2) + "\n")
  return directory


def read_model_card_file(card_path: str | Path) -> dict:
  """A ``model.json`` (of a model checkpoint, or of a training workdir)."""
  card_path = storage.path(card_path)
  try:
    card = storage.read_json(card_path)
  except ValueError as e:  # too large, not UTF-8, not JSON
    raise ModelCheckpointError(f"{card_path}: not a readable JSON model description ({e})") from e
  if card is None:
    raise ModelCheckpointError(f"{card_path}: no such model description")
  if not isinstance(card, dict) or card.get("format") != FORMAT:
    found = card.get("format") if isinstance(card, dict) else type(card).__name__
    raise ModelCheckpointError(f"{card_path}: format {found!r}, expected {FORMAT!r}")
  return card


def read_model_card(directory: str | Path) -> dict:
  directory = storage.path(directory)
  if not (directory / MODEL_FILE).is_file() or not (directory / VARIABLES_DIR).is_dir():
    raise ModelCheckpointError(f"{directory}: not a dferclip-jax model checkpoint (expected "
                               f"{MODEL_FILE} and {VARIABLES_DIR}/)")
  return read_model_card_file(directory / MODEL_FILE)


def load_model(directory: str | Path, *, shardings: Callable[[Any], Any] | None = None,
               **overrides) -> tuple[DFERCLIP, dict, dict]:
  """-> (model, variables, model card).

  ``shardings``: given the abstract variable tree, returns a tree of shardings to restore onto
  (any mesh); without it the variables come back as host numpy arrays. ``overrides`` replace
  model fields that do not change the parameters (``dtype``, ``remat``).
  """
  directory = storage.absolute(directory)
  card = read_model_card(directory)
  try:
    model = model_from_kwargs(card["model"], **overrides)
  except (KeyError, TypeError, ValueError) as e:
    raise ModelCheckpointError(f"{directory / MODEL_FILE}: bad model description ({e})") from e
  expected = variable_shapes(model)
  with ocp.StandardCheckpointer() as checkpointer:
    stored = checkpointer.metadata(directory / VARIABLES_DIR)
    stored = getattr(stored, "item_metadata", stored)
    stored_tree = getattr(stored, "tree", stored)
    check_tree(stored_tree, expected, source=str(directory / VARIABLES_DIR))  # leaves carry .shape
    if shardings is None:
      target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
      variables = jax.tree.map(np.asarray, checkpointer.restore(directory / VARIABLES_DIR, target))
    else:
      target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            expected, shardings(expected))
      variables = checkpointer.restore(directory / VARIABLES_DIR, target)
  return model, variables, card
