"""Parameter groups and the optimizer: PyTorch's SGD, per-group learning rates, frozen params.

Groups are data: ``config.optim.groups`` maps a group name to a regex over '/'-joined parameter
paths (``temporal/cls_token``, ``clip/vision_model/...``), and ``config.optim.lr`` maps the same
names to learning rates. A parameter matching no group is frozen: it gets no gradient, no
update and no optimizer state. A parameter matching two groups is an error (a silent first-match
would hide a typo in a regex). The train state keeps the two apart (``state.host_state``, by
``param_tree.split_params``).

The update is torch.optim.SGD's, to the letter: the weight decay is added to the gradient
(``g + wd * p``, not decoupled), then momentum ``buf = m * buf + g`` (first step ``buf = g``), then
``p -= lr * buf``; the learning rate drops by ``gamma`` at each epoch milestone (MultiStepLR).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from dferclip_jax.models.param_tree import FROZEN


def param_path(path: tuple[str, ...]) -> str:
  return "/".join(str(p) for p in path)


def assign_groups(params: Mapping[str, Any], groups: Mapping[str, str]) -> dict[tuple, str]:
  """Flat path -> group name (or FROZEN); errors on a regex matching nothing or a path matching two."""
  compiled = {}
  for name, pattern in groups.items():
    if name == FROZEN:
      raise ValueError(f"config.optim.groups: {FROZEN!r} is reserved for parameters in no group")
    try:
      compiled[name] = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"config.optim.groups.{name}: bad regex {pattern!r}: {e}") from e
  assignment, used = {}, set()
  for path in traverse_util.flatten_dict(params):
    joined = param_path(path)
    hits = [name for name, rx in compiled.items() if rx.fullmatch(joined)]
    if len(hits) > 1:
      raise ValueError(f"parameter {joined} matches several groups in config.optim.groups: {hits}")
    assignment[path] = hits[0] if hits else FROZEN
    used.update(hits)
  unused = sorted(set(compiled) - used)
  if unused:
    raise ValueError(f"config.optim.groups: {unused} match no parameter (check the regexes)")
  return assignment


def step_schedule(lr: float, milestones_epochs: Sequence[int], gamma: float, steps_per_epoch: int):
  """MultiStepLR stepped once per epoch: ``lr * gamma**k`` after the k-th milestone epoch."""
  boundaries = {int(m) * steps_per_epoch: gamma for m in sorted(milestones_epochs)}
  return optax.piecewise_constant_schedule(lr, boundaries)


def torch_sgd(schedule, momentum: float, weight_decay: float) -> optax.GradientTransformation:
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if momentum:
    parts.append(optax.trace(decay=momentum, nesterov=False))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


def make_optimizer(optim_config, trainable_assignment: Mapping[tuple, str], steps_per_epoch: int):
  """The optax transformation over the *trainable* params, and each group's schedule.

  ``trainable_assignment`` maps trainable flat paths to group names (FROZEN excluded).
  """
  if optim_config.name != "sgd":
    raise ValueError(f"config.optim.name={optim_config.name!r}: only 'sgd' (the official recipe) exists")
  lrs = dict(optim_config.lr)
  groups = sorted(set(trainable_assignment.values()))
  missing = [g for g in groups if g not in lrs]
  if missing:
    raise ValueError(f"config.optim.lr has no learning rate for group(s) {missing}")
  schedules = {g: step_schedule(float(lrs[g]), optim_config.milestones, optim_config.gamma,
                                steps_per_epoch) for g in groups}
  transforms = {g: torch_sgd(schedules[g], optim_config.momentum, optim_config.weight_decay)
                for g in groups}
  labels = traverse_util.unflatten_dict(dict(trainable_assignment))
  return optax.multi_transform(transforms, labels), schedules


def grouped_optimizer(params, optim_config, steps_per_epoch: int):
  """``config.optim``'s param groups over ``params`` and their optimizer.

  -> (assignment {flat path: group or FROZEN}, optax transformation over the trainable params,
  each group's schedule). ``state.host_state`` splits the params by the assignment.
  """
  assignment = assign_groups(params, dict(optim_config.groups))
  tx, schedules = make_optimizer(
      optim_config, {k: g for k, g in assignment.items() if g != FROZEN}, steps_per_epoch)
  return assignment, tx, schedules


def global_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
