"""SIGTERM and Ctrl-C stop a run at a step, save it there and exit 75 (requeue); the same command
then resumes and ends exactly as an uninterrupted run, every step logged once. A second signal, or
a stop past its timeout, exits at once and the run resumes as after ``kill -9``. A second run on
a busy workdir refuses, naming the first; a finished run run again changes nothing.

One uninterrupted reference run (in a subprocess, the same command as the others) is shared by the
module's tests.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from dferclip_jax.train import preemption, reporting

pytestmark = pytest.mark.slow

# 7 classes x 8 clips: 42 training clips, 5 steps of 8 per epoch, 2 epochs; evaluations at 5 and 10.
STEPS, EVAL_STEPS = 10, (5, 10)
# A stop saves one small checkpoint: seconds. The bound the issue asks for is 60 s; the margin
# here is for a loaded 2-core CI machine.
STOP_BOUND_S = 60


def command(workdir, data_dir, *extra):
  return [sys.executable, str(REPO / "main.py"), "--config=configs/demo.py:epochs=2,clips_per_class=8",
          f"--workdir={workdir}", f"--config.data.synthetic.dir={data_dir}",
          "--config.data.num_frames=4", "--config.batch_size=8", "--config.eval_batch_size=8",
          "--config.log_every=1", "--config.checkpoint_every=100000", "--config.progress_bars=False",
          *extra]


def run(cmd, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def start(cmd, log_path) -> subprocess.Popen:
  # PYTHONFAULTHANDLER: a run that hangs is sent SIGABRT, which writes every thread's stack to its log.
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"),
                          start_new_session=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def train_steps(workdir) -> list[int]:
  return [r["step"] for r in reporting.read_metrics(workdir) if "train/loss" in r]


def wait_until(proc, ready, timeout=300) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if ready():
      return
    time.sleep(0.02)
  raise AssertionError(f"not reached before the run ended (exit {proc.poll()})")


def stop_and_wait(proc, sig=signal.SIGTERM, timeout=STOP_BOUND_S, log_path=None) -> tuple[int, float]:
  sent = time.time()
  proc.send_signal(sig)
  try:
    code = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGABRT)  # the stacks of the hung run, into its log
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
    log = log_path.read_text()[-8000:] if log_path else ""
    raise AssertionError(f"no exit within {timeout} s of {sig.name}; its log ends:\n{log}") from None
  return code, time.time() - sent


def signalled(cmd, log_path, ready, sig=signal.SIGTERM, timeout=STOP_BOUND_S, second=False):
  """Starts ``cmd``, sends ``sig`` once ``ready()`` holds (and, with ``second``, again once the
  run has logged receiving the first); -> (the ended process, seconds from the last signal to its
  exit, its log). A run still alive after ``timeout`` is killed and fails the test."""
  proc = start(cmd, log_path)
  try:
    wait_until(proc, ready)
    if second:
      proc.send_signal(sig)  # two signals sent back to back could merge into one pending signal
      wait_until(proc, lambda: f"{sig.name} received" in log_path.read_text(), timeout=60)
    _, took = stop_and_wait(proc, sig, timeout, log_path)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  return proc, took, log_path.read_text()


def checkpoint_steps(workdir) -> list[int]:
  path = workdir / "checkpoints"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("reference")
  result = run(command(workdir, data_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  records = reporting.read_metrics(workdir)
  assert train_steps(workdir) == list(range(1, STEPS + 1))
  assert [r["step"] for r in records if "eval/uar" in r] == list(EVAL_STEPS)
  return workdir, records, (workdir / "results.json").read_bytes()


def assert_equals_reference(workdir, reference):
  _, records, results = reference
  assert reporting.read_metrics(workdir) == records  # every step once, the same numbers
  got, want = json.loads((workdir / "results.json").read_bytes()), json.loads(results)
  assert got["final"] == want["final"] and got["best"] == want["best"]


def test_sigterm_saves_the_step_and_the_rerun_loses_nothing(tmp_path, data_dir, reference):
  workdir = tmp_path / "run"
  proc, took, log = signalled(command(workdir, data_dir), tmp_path / "log1",
                              lambda: 3 in train_steps(workdir))
  assert proc.returncode == preemption.REQUEUE_EXIT_CODE, log[-3000:]
  print(f"SIGTERM to exit: {took:.1f} s")
  logged = train_steps(workdir)
  assert logged == list(range(1, logged[-1] + 1)) and logged[-1] < STEPS
  assert checkpoint_steps(workdir) == [logged[-1]], "the stop saved no checkpoint at its step"
  assert f"stopped on a signal at step {logged[-1]}" in log
  assert not (workdir / "run.lock").exists()

  again = run(command(workdir, data_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resumed from step {logged[-1]} " in again.stderr
  assert_equals_reference(workdir, reference)


def test_two_runs_started_at_once_on_one_workdir(tmp_path, data_dir, reference):
  """Exactly one trains; the other exits 1 naming it; metrics.jsonl holds one run's steps."""
  workdir = tmp_path / "run"
  procs = [start(command(workdir, data_dir), tmp_path / f"log{i}") for i in range(2)]
  codes = [p.wait(timeout=300) for p in procs]
  assert sorted(codes) == [0, 1], codes
  winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
  log = (tmp_path / f"log{loser}").read_text()
  assert (f"{workdir} is in use by another run: host {socket.gethostname()}, pid {procs[winner].pid}, "
          f"started ") in log, log[-3000:]
  assert "Traceback" not in log
  assert_equals_reference(workdir, reference)


def test_sigterm_during_an_evaluation(tmp_path, data_dir, reference):
  """The signal lands while step 5's evaluation runs (its train record written, its eval record
  not yet): the evaluation finishes, the step is saved with it, and the rerun equals the reference."""
  workdir = tmp_path / "run"

  def evaluating():
    records = reporting.read_metrics(workdir)
    return 5 in [r["step"] for r in records if "train/loss" in r] and not any("eval/uar" in r for r in records)

  proc, _, log = signalled(command(workdir, data_dir), tmp_path / "log", evaluating)
  assert proc.returncode == preemption.REQUEUE_EXIT_CODE, log[-3000:]
  assert [r["step"] for r in reporting.read_metrics(workdir) if "eval/uar" in r] == [5]
  assert checkpoint_steps(workdir) == [5]
  again = run(command(workdir, data_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 5 " in again.stderr
  assert_equals_reference(workdir, reference)


def test_a_second_ctrl_c_exits_at_once(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc, _, log = signalled(command(workdir, data_dir), tmp_path / "log",
                           lambda: 2 in train_steps(workdir), signal.SIGINT, timeout=10, second=True)
  assert proc.returncode == preemption.REQUEUE_EXIT_CODE, log[-3000:]
  assert "SIGINT received: stopping after the current step" in log
  assert "a second signal (SIGINT): exiting at once" in log


def test_a_stop_past_its_timeout_exits_at_once_and_the_run_resumes(tmp_path, data_dir, reference):
  """preemption_timeout_s=0.01: the deadline passes before the save can finish, so the process
  exits at once, leaving its lock and no checkpoint (as kill -9 would); the next run takes the
  lock over, saying so, and ends as the reference."""
  workdir = tmp_path / "run"
  proc, _, log = signalled(command(workdir, data_dir, "--config.preemption_timeout_s=0.01"),
                           tmp_path / "log", lambda: 2 in train_steps(workdir), timeout=20)
  assert proc.returncode == preemption.REQUEUE_EXIT_CODE, log[-3000:]
  assert "the stop took longer than 0 s: exiting at once" in log
  assert (workdir / "run.lock").exists()
  again = run(command(workdir, data_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert (f"taking over the lock of a run that is gone (pid {proc.pid} is not running on this host)"
          in again.stderr)
  assert_equals_reference(workdir, reference)


def test_rerunning_a_finished_run_changes_nothing(tmp_path, data_dir, reference):
  """The same command on a finished workdir: exit 0, nothing trained, results.json byte-identical;
  and on a run stopped after its last save but before results.json: the same results.json."""
  source, records, results = reference
  workdir = tmp_path / "run"
  subprocess.run(["cp", "-a", str(source), str(workdir)], check=True)
  started = time.time()
  again = run(command(workdir, data_dir))
  took = time.time() - started
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"{workdir} is a finished run (step {STEPS} of {STEPS}, results.json): nothing to train" in again.stderr
  assert took < 60, f"re-running a finished run took {took:.0f} s"
  assert (workdir / "results.json").read_bytes() == results
  assert reporting.read_metrics(workdir) == records

  (workdir / "results.json").unlink()  # as if stopped between the final save and results.json
  again = run(command(workdir, data_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resumed from step {STEPS} " in again.stderr
  assert (workdir / "results.json").read_bytes() == results
  assert reporting.read_metrics(workdir) == records  # the evaluation is not logged twice

  (workdir / "results.json").write_bytes(results[:len(results) // 2])  # cut short by a full disk
  again = run(command(workdir, data_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"{workdir / 'results.json'} cannot be read (" in again.stderr
  assert (workdir / "results.json").read_bytes() == results
