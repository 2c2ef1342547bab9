"""The train state, as both training loops keep it (the closed-set trainer and HESP's loop).

A plain dict: ``params`` (the trainable params only), ``frozen`` (the params in no group: no
gradient, no update, no optimizer state), the model's other collections (the closed-set state's
``prompts``; HESP's loop keeps its under ``collections``), ``opt`` (the optax state over
``params``) and ``step``. Born sharded on the mesh, or restored from the latest checkpoint onto
any mesh. Both loops check every step's loss, gradient norm and updated-param norm for NaN/inf
the same way (``StepMetrics``).
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
from absl import logging

from dferclip_jax.models.param_tree import merge_params, split_params
from dferclip_jax.train import reporting
from dferclip_jax.train import sharding as sharding_lib


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN or inf; the run stops with the step that did it."""


def training_length(num_train: int, batch_size: int, epochs: int, max_steps, batch_field: str):
  """-> (steps per epoch, total steps): full batches only (the remainder is dropped each epoch),
  capped at ``max_steps`` when set."""
  steps_per_epoch = num_train // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{batch_field}={batch_size} is larger than the {num_train} training clips: "
                     f"not one full batch per epoch")
  total = epochs * steps_per_epoch
  return steps_per_epoch, total if max_steps is None else min(total, int(max_steps))


# ------------------------------------------------------------------------ trainable vs frozen


def host_state(params, assignment, **collections) -> dict:
  """The state's model part, as host arrays: ``params`` split by the group ``assignment`` into
  "params" (trainable) and "frozen", and the model's other ``collections`` by name."""
  trainable, frozen = split_params(params, assignment)
  return {"params": trainable, "frozen": frozen, **collections}


def variables_of(state, collections: Mapping) -> dict:
  """The model's variables: the state's params merged back with the frozen ones, and the model's
  other ``collections`` (from where the loop keeps them in its state)."""
  return {"params": merge_params(state["params"], state["frozen"]), **collections}


# ------------------------------------------------------------------------ creation, restore


def training_part(params, tx) -> dict:
  """What training adds to the model part: the optimizer state over ``params`` and the step (0)."""
  return {"opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def new_state(host: Mapping, tx) -> dict:
  """``host`` (from ``host_state``) with its ``training_part``: a whole state, on the host."""
  return {**host, **training_part(host["params"], tx)}


def init_or_restore(host: dict, tx, mesh, shard_min_size: int, checkpointer):
  """The train state on the mesh: ``host`` with its ``training_part``, or the latest checkpoint's
  state if ``checkpointer`` holds one. -> (state, its shardings, start step, checkpoint meta or
  None when started fresh)."""
  abstract = jax.eval_shape(lambda h: new_state(h, tx), host)
  shardings = sharding_lib.tree_shardings(abstract, mesh, shard_min_size)
  start = checkpointer.latest_step()
  if start is not None:
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
    state, meta = checkpointer.restore(start, target)
    return state, shardings, start, meta
  placed = sharding_lib.put_global(host, {k: shardings[k] for k in host})
  # Params are born sharded: the optimizer state is created by a jit whose outputs are laid out by
  # the same rule, never materialised whole on one device.
  rest = jax.jit(lambda params: training_part(params, tx),
                 out_shardings={k: shardings[k] for k in abstract if k not in host})(placed["params"])
  return {**placed, **rest}, shardings, 0, None


# ------------------------------------------------------------------------ the NaN check


def check_finite(step: int, values: Mapping) -> None:
  """Stops on a NaN/inf loss, gradient norm or norm of the updated params in a step's (host)
  metrics: the update itself can make the NaN (a learning rate of inf, an overflow in the
  optimizer), and a state that holds one must never be evaluated or saved."""
  for name in ("train/loss", "train/grad_norm", "train/param_norm"):
    if not math.isfinite(float(values[name])):
      raise NonFiniteLossError(f"step {step}: {name} is {float(values[name])}; stopping (the last "
                               f"checkpoint holds the state before it)")


class StepMetrics:
  """Every step's metrics, checked for NaN/inf and logged (every ``log_every`` steps and at the
  steps in ``also_log``) one step late: reading a step's metrics back waits for that step, and by
  then the next one is queued, so the devices never wait on the check. ``flush`` checks the held
  step at once: before an evaluation or a save (no NaN state is evaluated or saved), and at the end.
  """

  def __init__(self, writer: reporting.MetricWriter, log_every: int, also_log=()):
    self.writer, self.log_every, self.also_log = writer, log_every, set(also_log)
    self.pending = None  # (step, its metrics, still on the devices)

  def add(self, step: int, metrics) -> None:
    """Holds this step's metrics after checking (and logging) the previous step's."""
    self.flush()
    self.pending = (step, metrics)

  def flush(self) -> None:
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    values = jax.device_get(metrics)
    check_finite(step, values)
    if step % self.log_every == 0 or step in self.also_log:
      self.writer.write(step, values)
      logging.info("step %d %s", step, reporting.format_scalars(
          {k: v for k, v in values.items() if not k.startswith("train/lr")}))
