"""Nested parameter trees: checking one against an architecture, splitting and merging them.

Leaf helpers shared by the checkpoint loaders (CLIP, official DFER-CLIP, exports, init
checkpoints), the model builders and the training state. They know nothing about any model, so
every module can import them without pulling in another (this module imports no project code).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import traverse_util

# The group of a parameter that matches no optimizer group: no gradient, update or optimizer state.
FROZEN = "frozen"


class CheckpointMismatchError(ValueError):
  """A checkpoint's parameter tree does not fit the architecture it claims."""


def check_tree(params: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
  """Raises CheckpointMismatchError naming every missing, unexpected and mis-shaped key."""
  got = {"/".join(k): np.shape(v) for k, v in traverse_util.flatten_dict(params).items()}
  want = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  misshaped = sorted(k for k in set(got) & set(want) if tuple(got[k]) != want[k])
  if not (missing or unexpected or misshaped):
    return
  lines = [f"{source}: the parameters do not fit the architecture"]
  if missing:
    lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
  if unexpected:
    lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
  for k in misshaped:
    lines.append(f"  mis-shaped: {k}: checkpoint {tuple(got[k])}, expected {want[k]}")
  raise CheckpointMismatchError("\n".join(lines))


def as_float32(params: Mapping[str, Any]) -> dict[str, Any]:
  """Every leaf as a float32 numpy array (checkpoints store float32 whatever the compute dtype)."""
  return traverse_util.unflatten_dict(
      {k: np.asarray(v, dtype=np.float32) for k, v in traverse_util.flatten_dict(params).items()})


def split_params(params, assignment):
  """-> (trainable, frozen) nested dicts by ``assignment`` {flat path: group or FROZEN}; merge
  them back with ``merge_params``."""
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if assignment[k] != FROZEN}
  frozen = {k: v for k, v in flat.items() if assignment[k] == FROZEN}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable, frozen):
  """The inverse of ``split_params``: one nested dict with the leaves of both."""
  flat = dict(traverse_util.flatten_dict(frozen))
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)
