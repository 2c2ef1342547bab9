"""Stopping a run on SIGTERM or Ctrl-C without losing a step: every process stops at the same step,
saves a checkpoint there, flushes its metrics and exits with ``REQUEUE_EXIT_CODE``.

Cloud TPU spot/preemptible slices and SLURM jobs near their time limit get SIGTERM some seconds
before they go away; a scheduler that sees ``REQUEUE_EXIT_CODE`` requeues the job, and the same
command resumes from the checkpoint made at the stopping step.

- Several processes: JAX's preemption sync point. ``jax.distributed.initialize`` wires SIGTERM to
  it (a handler in C++ that this module leaves in place), and
  ``multihost_utils.reached_preemption_sync_point(step)``, called by every process after every
  step, is True on all of them at the same step once any one got the signal. SIGINT is forwarded
  to this process's SIGTERM so Ctrl-C takes the same road.
- One process: this module's own handler. A background thread learns of each signal at once
  through ``signal.set_wakeup_fd`` (even while the main thread waits inside XLA or tf.data), so the
  deadline below holds when Python code is not running.
- A second signal, or a stop still running ``timeout_s`` after the first signal (one process) or
  after the sync point (several), exits at once with the same code: what is on disk is the last
  finished checkpoint, from which the run resumes as after ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import jax
from absl import logging

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". SLURM:
# `sbatch --requeue` plus `[ $? -eq 75 ] && scontrol requeue $SLURM_JOB_ID` (README).
REQUEUE_EXIT_CODE = 75
# The longest a stop may take after its signal: a save of a ViT-B/16 train state (~1.2 GB with the
# optimizer state) takes seconds; spot VMs give 30 s notice, SLURM's --signal as much as one asks.
DEFAULT_TIMEOUT_S = 50.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped at ``step`` on a signal, after saving a checkpoint there."""

  def __init__(self, step: int, workdir):
    super().__init__(f"stopped on a signal at step {step}; the checkpoint of step {step} is saved "
                     f"in {workdir}: run the same command again to resume (exit code "
                     f"{REQUEUE_EXIT_CODE} asks a scheduler to requeue)")
    self.step = step


def _exit_now(why: str) -> None:
  logging.error("%s: exiting at once (code %d); the run resumes from its last finished checkpoint",
                why, REQUEUE_EXIT_CODE)
  logging.flush()
  os._exit(REQUEUE_EXIT_CODE)


def exit_for_requeue() -> None:
  """Ends the process with ``REQUEUE_EXIT_CODE`` once a stop has saved and flushed everything.

  Why not ``sys.exit``: the interpreter's teardown (the thread pools of XLA and tf.data, an
  iterator stopped mid-epoch) was seen to take 20 s and more on a loaded host, and it runs after
  the Python threads that enforce the deadline have stopped, so a scheduler's grace period could
  end in a kill. Nothing that teardown does matters once the checkpoint is saved.
  """
  if jax.process_count() > 1:
    jax.distributed.shutdown()  # the exit barrier: every process stopped at the same step
  logging.flush()
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(REQUEUE_EXIT_CODE)


class StopSignals:
  """``with StopSignals() as stop: ... if stop.should_stop(step): save, flush, raise Preempted``.

  Outside the main thread (a test calling the trainer from a worker thread) signals cannot be
  caught: ``should_stop`` is then always False and nothing is installed.
  """

  def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S):
    self.timeout_s = float(timeout_s)
    self.several = jax.process_count() > 1
    self.requested = threading.Event()   # one process: a signal has arrived
    self._signals = 0
    self._previous: dict = {}
    self._wakeup = None                  # (reader, writer) socket pair, one process
    self._previous_fd = -1
    self._closed = threading.Event()
    self._deadline_timer = None

  # -------------------------------------------------------------------- install, uninstall

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    if self.several:
      # SIGTERM stays JAX's; Ctrl-C is sent on to it.
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_sigint)
      return self
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    self._wakeup = (reader, writer)
    for sig in _SIGNALS:  # the Python-level handler only keeps the default action away
      self._previous[sig] = signal.signal(sig, lambda *_: None)
    self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=self._listen, name="stop-signals", daemon=True).start()
    return self

  def __exit__(self, *exc):
    if self._signals:  # stopping: a further signal, until the process is gone, exits at once
      return False
    self._closed.set()
    if self._deadline_timer is not None:
      self._deadline_timer.cancel()
    if self._wakeup is not None:
      signal.set_wakeup_fd(self._previous_fd)
      for s in self._wakeup:
        s.close()
      self._wakeup = None
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False

  # -------------------------------------------------------------------- the signals

  def _listen(self) -> None:
    reader = self._wakeup[0]
    while not self._closed.is_set():
      try:
        data = reader.recv(64)
      except OSError:
        return
      if not data:
        return
      for number in data:
        if number in _SIGNALS:
          self._on_signal(signal.Signals(number).name)

  def _on_signal(self, name: str) -> None:
    self._signals += 1
    if self._signals > 1:
      _exit_now(f"a second signal ({name})")
    logging.warning("%s received: stopping after the current step, saving a checkpoint there "
                    "(at most %.0f s; a second signal exits at once)", name, self.timeout_s)
    self.requested.set()
    self._start_deadline()

  def _forward_sigint(self, *_):
    self._signals += 1
    if self._signals > 1:
      _exit_now("a second Ctrl-C")
    logging.warning("SIGINT received: stopping every process at the same step (JAX's preemption "
                    "sync point); a second Ctrl-C exits at once")
    os.kill(os.getpid(), signal.SIGTERM)

  def _start_deadline(self) -> None:
    if self._deadline_timer is None:
      self._deadline_timer = threading.Timer(
          self.timeout_s, _exit_now, args=(f"the stop took longer than {self.timeout_s:.0f} s",))
      self._deadline_timer.daemon = True
      self._deadline_timer.start()

  # -------------------------------------------------------------------- the loop's question

  def should_stop(self, step: int) -> bool:
    """Called by every process after every step: True on all of them at the same step once a stop
    was asked for (on any process)."""
    if self.several:
      from jax.experimental import multihost_utils
      if not multihost_utils.reached_preemption_sync_point(int(step)):
        return False
      logging.warning("preemption sync point at step %d: saving there and stopping", step)
      self._start_deadline()
      if threading.current_thread() is threading.main_thread():
        # JAX's handler has done its work; a second SIGTERM from here on exits at once.
        signal.signal(signal.SIGTERM, lambda *_: _exit_now("a second SIGTERM"))
        self._previous.setdefault(signal.SIGTERM, signal.SIG_DFL)
      return True
    return self.requested.is_set()

