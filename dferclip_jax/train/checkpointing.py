"""Orbax checkpoints of a training run: asynchronous saves, the latest kept for resuming and the
best (by ``config.best_metric``) kept for evaluation; restore onto any mesh.

Each step directory holds two items: ``state`` (the train state of ``state.py``: params, frozen
params, prompt ids, optimizer state, step) and ``meta`` (JSON: step, epoch, data position,
best-so-far), so a restarted run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import contextlib
import errno as errno_lib
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from dferclip_jax import distributed, storage
from dferclip_jax.train import state as state_lib

# Train-state entries that older versions saved and nothing reads: a checkpoint holding them
# restores them (Orbax restores whole trees) and drops them. "rng": the trainer saved
# PRNGKey(seed) until the input pipeline and the steps turned out to need no key of their own.
RETIRED_STATE_KEYS = ("rng",)


class CheckpointNotFoundError(FileNotFoundError):
  """A ``--checkpoint`` reference that names nothing on disk; the message lists what exists."""


class CheckpointSaveError(OSError):
  """A save failed on the storage (disk full, permission): the message names the path and the OS
  error; the checkpoints saved before it are untouched and resume as usual."""


# TensorStore reports an OS error inside its message: 'Failed to write ...: No space left on device
# [os_error_code='28']'.
_OS_ERROR_CODE = re.compile(r"os_error_code=\W?(\d+)")


def os_error_of(error: BaseException) -> tuple[int, str] | None:
  """(errno, path or "") of the OS error behind ``error`` (a Python OSError, or TensorStore's
  in its message), or None when it is not one."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno, error.filename or ""
    found = _OS_ERROR_CODE.search(str(error))
    if found:
      paths = re.findall(r'"(/[^"]+)"', str(error))
      return int(found.group(1)), paths[-1] if paths else ""
    error = error.__cause__ or error.__context__
  return None


def remove_unfinished_saves(directory, ignore_errors: bool = False) -> list[str]:
  """Removes the temporary folders (``*.orbax-checkpoint-tmp*``) of saves that never finished
  from a checkpoint ``directory`` (a pathlib or epath path). -> their names."""
  removed = []
  for tmp in sorted(directory.glob("*.orbax-checkpoint-tmp*")):
    storage.rmtree(tmp, missing_ok=ignore_errors)
    removed.append(tmp.name)
  return removed


def clean_stale_tmp_checkpoints(checkpoint_dir) -> list[str]:
  """At the start of a run (first process only, with the workdir lock held, so no save of this
  run is in flight): the unfinished saves a killed run left, removed with a log line each."""
  if not distributed.is_writer() or not checkpoint_dir.exists():
    return []
  removed = remove_unfinished_saves(checkpoint_dir)
  for name in removed:
    logging.warning("removing %s: an unfinished checkpoint save left behind by an earlier run",
                    checkpoint_dir / name)
  return removed


def selection_key(value: float, step: int) -> tuple[float, int]:
  """The one rule that ranks evaluations for "best": the higher metric wins, and among equal
  metrics the earliest step. The trainer records its best with it and Orbax keeps the best
  checkpoint with it, so the step results.json calls best is the step kept on disk."""
  return (float(value), -int(step))


def is_better(value: float, step: int, best: dict | None) -> bool:
  return best is None or selection_key(value, step) > selection_key(best["value"], best["step"])


class Checkpointer:

  def __init__(self, directory: str | Path, best_metric: str, asynchronous: bool = True):
    self.directory = storage.absolute(directory)
    self.best_metric = best_metric
    keep = policies.AnyPreservationPolicy([
        policies.LatestN(n=1),
        # Only saves made at an evaluation carry metrics; the others are for resuming.
        policies.BestN(get_metric_fn=lambda m: selection_key(m[best_metric], m.get("step", 0)),
                       reverse=False, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=keep,
                                           enable_async_checkpointing=asynchronous, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._saving = None  # the step of the save in flight (its errors come out later)
    self._failed = False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
           force: bool = True) -> None:
    """Starts an asynchronous save (returns once the arrays are copied off the devices)."""
    if step in self.manager.all_steps():
      return
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta)))
    metrics = {**metrics, "step": int(step)} if metrics else None  # "step" breaks ties: selection_key
    self.wait()  # the previous save's error, if any, named by its own step
    with self._storage_errors(step):
      self.manager.save(step, args=args, metrics=metrics, force=force)
    self._saving = step

  def wait(self) -> None:
    """Until the save in flight is on disk (its storage error, if any, raised here)."""
    with self._storage_errors(self._saving):
      self.manager.wait_until_finished()
      self._check_finished(self._saving)

  def _check_finished(self, step) -> None:
    """Orbax logs some failed writes (its metadata file) instead of raising them; a local save is
    finished when its temporary folder has been renamed to the step's."""
    if step is None or storage.is_remote(self.directory) or (self.directory / str(step)).is_dir():
      return
    if self._disk_full():
      raise OSError(errno_lib.ENOSPC, os.strerror(errno_lib.ENOSPC), str(self.directory))
    raise OSError(errno_lib.EIO, "the save did not finish (see the log above)", str(self.directory))

  def _disk_full(self) -> bool:
    if storage.is_remote(self.directory):
      return False
    try:
      stats = os.statvfs(self.directory)
    except OSError:
      return False
    return stats.f_bavail * stats.f_frsize < (1 << 20)

  @contextlib.contextmanager
  def _storage_errors(self, step):
    """Turns a save's OS error (raised now or by its background thread) into one
    ``CheckpointSaveError`` naming the path and the error, after removing the unfinished save."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 -- only OS errors are converted; the rest re-raised
      found = os_error_of(e)
      if found is None and self._disk_full():
        # Orbax's asyncio machinery can fail on a full disk with its own error ("Event loop is
        # closed") instead of the OS error: the disk says what happened.
        found = (errno_lib.ENOSPC, "")
      if found is None:
        raise
      self._failed = True  # close() removes the unfinished save, once Orbax's threads are done
      code, path = found
      error = CheckpointSaveError(
          f"could not save the checkpoint of step {step} in {self.directory}: {os.strerror(code)} "
          f"({errno_lib.errorcode.get(code, code)}) writing {path or self.directory}; the "
          f"checkpoints before it are kept (steps {self._finished_steps()}) and the run resumes "
          f"from the latest of them")
      error.errno = code
      raise error from None

  def _remove_unfinished_until_quiet(self, timeout_s: float = 10.0, quiet_s: float = 0.5) -> None:
    """Removes the failed save's folder until none comes back for ``quiet_s``: an Orbax writer
    thread still running (a loaded machine) can recreate it just after a single removal."""
    deadline, quiet_since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
      try:
        removed = remove_unfinished_saves(self.directory, ignore_errors=True)
      except OSError:  # a writer added a file while the tree was being removed: again
        removed = True
      now = time.monotonic()
      if removed:
        quiet_since = None
      elif quiet_since is None:
        quiet_since = now
      elif now - quiet_since >= quiet_s:
        return
      time.sleep(0.05)

  def _finished_steps(self) -> list[int]:
    return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())


  def restore(self, step: int, abstract_state):
    """-> (state laid out as ``abstract_state``'s shardings, meta dict). ``RETIRED_STATE_KEYS``
    on disk are read (replicated, as ``abstract_state["step"]``) and left out of the state."""
    stored = self._stored_tree(step)
    retired = {k: jax.ShapeDtypeStruct(tuple(stored[k].shape), stored[k].dtype,
                                       sharding=abstract_state["step"].sharding)
               for k in RETIRED_STATE_KEYS if k in stored and k not in abstract_state}
    args = ocp.args.Composite(state=ocp.args.StandardRestore({**abstract_state, **retired}),
                              meta=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    state = {k: v for k, v in restored["state"].items() if k not in retired}
    return state, dict(restored["meta"])

  def _stored_tree(self, step: int) -> dict:
    """The metadata tree (shape, dtype per leaf) of a step's saved state."""
    with ocp.PyTreeCheckpointer() as reader:
      stored = reader.metadata(self.directory / str(step) / "state")
    stored = getattr(stored, "item_metadata", stored)
    return getattr(stored, "tree", stored)

  def restore_meta(self, step: int) -> dict:
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def best_step(self) -> int | None:
    """The step of the best evaluation so far (from the latest checkpoint's meta)."""
    latest = self.latest_step()
    if latest is None:
      return None
    best = self.restore_meta(latest).get("best")
    return None if best is None else int(best["step"])

  def resolve(self, reference: str) -> int:
    """``best`` | ``latest`` | a step number -> a step that is on disk, or a
    ``CheckpointNotFoundError`` that says what exists."""
    steps = self.all_steps()
    if reference == "latest":
      step = self.latest_step()
    elif reference == "best":
      step = self.best_step()
      if step is None and steps:
        raise CheckpointNotFoundError(
            f"{self.directory}: no best checkpoint yet (the run has not evaluated); checkpoints on "
            f"disk: steps {steps} (use --checkpoint=latest or a step number)")
    else:
      step = int(reference)
    if step is None or step not in steps:
      what = f"step {step}" if step is not None else f"a {reference} checkpoint"
      have = f"steps {steps}" if steps else "no checkpoints"
      raise CheckpointNotFoundError(f"{self.directory}: holds no {what} (it has {have}; "
                                    f"--checkpoint takes best, latest or one of those steps)")
    return step

  def restore_variables(self, step: int, shardings=None) -> dict:
    """Only the model's variables of a step (no optimizer state): ``{"params", "prompts"}``.

    ``shardings`` maps the abstract variable tree to target shardings (any mesh); default: all
    on the first device.
    """
    path = self.directory / str(step) / "state"
    stored = self._stored_tree(step)
    with ocp.PyTreeCheckpointer() as reader:
      abstract = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), stored[k],
                                  is_leaf=lambda m: hasattr(m, "shape"))
                  for k in ("params", "frozen", "prompts")}
      if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target_shardings = jax.tree.map(lambda _: device, abstract)
      else:
        target_shardings = shardings(abstract)
      args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), target_shardings)
      restored = reader.restore(path, args=ocp.args.PyTreeRestore(
          item=abstract, restore_args=args, partial_restore=True))
    return state_lib.variables_of(restored, {"prompts": restored["prompts"]})

  def close(self) -> None:
    if self._failed:
      # Reported already. Closing the manager would wait on writes that keep failing, each with
      # a traceback: the process ends (main.py) with the earlier checkpoints intact instead.
      self._remove_unfinished_until_quiet()
      return
    self.wait()
    self.manager.close()
