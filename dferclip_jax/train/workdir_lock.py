"""One run per workdir: a lock file taken before anything is written, naming its holder.

Two runs in one workdir interleave their metrics.jsonl and race on the same checkpoints, and
nobody would notice. The lock (``WORKDIR/run.lock``, JSON: host, pid, start time, command,
heartbeat) is taken by the job's first process; the other processes of the same job learn the
outcome from it (a broadcast), so a job shares its lock and a second job's every process refuses.

A lock left behind is taken over, with a log line, when its holder is provably gone:
- on this host, when its pid is not alive (``kill -9``, a crash);
- on any host, when its heartbeat (rewritten every ``HEARTBEAT_S`` seconds while the run lives)
  is older than ``STALE_AFTER_S``: a SLURM job requeued onto another node, a TPU VM recreated.
The lock is created atomically (``storage.create_exclusive``): a local file by ``O_EXCL``, a
``gs://`` object by an upload that Cloud Storage refuses when the object exists
(``ifGenerationMatch=0``), then read back and checked to be ours.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid

import numpy as np
from absl import logging

from dferclip_jax import distributed, storage

LOCK_FILE = "run.lock"
# A lock this project writes is a few hundred bytes; anything longer is not one of ours.
MAX_LOCK_BYTES = 64 * 1024
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir."""


def _is_local(path) -> bool:
  return not storage.is_remote(path)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, someone else's
    return True
  return True


def describe(holder: dict) -> str:
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
          f" ({' '.join(holder.get('command', []))[:200]})")


class WorkdirLock:
  """``with WorkdirLock(workdir): ...``; ``workdir`` is a path object (pathlib or epath)."""

  def __init__(self, workdir, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
    self.path = workdir / LOCK_FILE
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "command": [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv else [],
                   "token": uuid.uuid4().hex}
    self._held = False
    self._stop = threading.Event()

  # -------------------------------------------------------------------- take, release

  def __enter__(self):
    error = None
    if distributed.is_writer():
      try:
        self._take()
      except WorkdirLockedError as e:
        error = str(e)
    if not _all_ok(error is None):
      raise WorkdirLockedError(error or f"{self.path}: the job's first process could not take the "
                                        f"workdir lock (its log names the holder)")
    if self._held:
      threading.Thread(target=self._beat, name="workdir-lock", daemon=True).start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._held:
      try:
        if (self._read() or {}).get("token") == self.record["token"]:
          self.path.unlink()
      except (OSError, ValueError) as e:  # never hide the run's own outcome behind this
        logging.warning("%s: could not remove the lock: %s", self.path, e)
      self._held = False
    return False

  def _take(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
      if self._create():
        self._held = True
        return
      holder = self._read()
      if holder is None:  # removed, or half-written by a holder starting now: look again
        if attempt == 4:
          raise WorkdirLockedError(
              f"{self.path} exists but is not a lock this project wrote (unreadable JSON): delete "
              f"it if no run uses {self.path.parent}")
        time.sleep(0.2)
        continue
      stale = self._stale_reason(holder)
      if stale is None:
        raise WorkdirLockedError(
            f"{self.path.parent} is in use by another run: {describe(holder)}. Wait for it to "
            f"finish or use another --workdir; if that run is gone, delete {self.path}")
      logging.warning("%s: taking over the lock of a run that is gone (%s): %s", self.path, stale,
                      describe(holder))
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass
    raise WorkdirLockedError(f"{self.path}: could not take the workdir lock (another run keeps "
                             f"taking it)")

  def _create(self) -> bool:
    text = json.dumps({**self.record, "heartbeat": time.time()})
    if not storage.create_exclusive(self.path, text.encode()):
      return False
    # Read back on a bucket: a second guard, should a store not honour the upload's condition.
    return _is_local(self.path) or (self._read() or {}).get("token") == self.record["token"]

  def _read(self) -> dict | None:
    try:
      with self.path.open("rb") as f:
        data = f.read(MAX_LOCK_BYTES + 1)  # bounded: whatever the file says, read this much at most
      value = json.loads(data) if len(data) <= MAX_LOCK_BYTES else None
    except (FileNotFoundError, ValueError):
      return None
    return value if isinstance(value, dict) else None

  def _stale_reason(self, holder: dict) -> str | None:
    if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int):
      if holder["pid"] == os.getpid():
        return "this process's own earlier lock"
      if not _pid_alive(holder["pid"]):
        return f"pid {holder['pid']} is not running on this host"
      return None
    beat = holder.get("heartbeat")
    if isinstance(beat, (int, float)) and time.time() - beat > self.stale_after_s:
      return f"no heartbeat for {time.time() - beat:.0f} s"
    return None

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        if (self._read() or {}).get("token") != self.record["token"]:
          logging.warning("%s: the lock is no longer this run's (someone removed or replaced "
                          "it); not writing it again", self.path)
          return
        text = json.dumps({**self.record, "heartbeat": time.time()})
        if _is_local(self.path):
          tmp = f"{os.fspath(self.path)}.{self.record['token']}"
          with open(tmp, "w") as f:  # local: the local branch
            f.write(text)
          os.replace(tmp, os.fspath(self.path))
        else:
          self.path.write_text(text)
      except OSError as e:
        logging.warning("%s: heartbeat not written: %s", self.path, e)


def _all_ok(ok: bool) -> bool:
  """Process 0's outcome, on every process."""
  import jax
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))

