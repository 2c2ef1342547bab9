"""kill -9 during an evaluation, and again during training, then the same command again: each
restart really restores (it logs the step it resumed from), and the run ends exactly as an
uninterrupted one (same metrics.jsonl, same final and best results)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from dferclip_jax.train import reporting

pytestmark = pytest.mark.slow


def command(workdir, data_dir):
  return [sys.executable, str(REPO / "main.py"), "--config=configs/demo.py:epochs=3,clips_per_class=10",
          f"--workdir={workdir}", f"--config.data.synthetic.dir={data_dir}",
          "--config.data.num_frames=4", "--config.batch_size=8", "--config.eval_batch_size=8",
          "--config.log_every=1", "--config.checkpoint_every=2", "--config.progress_bars=False"]


def run(cmd, timeout=300) -> str:
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def resumed_from(log: str) -> int:
  """The step the trainer logged restoring from (0 if it started afresh)."""
  found = re.findall(r"resumed from step (\d+)", log)
  return int(found[-1]) if found else 0


def kill_when(cmd, workdir, log_path, ready) -> None:
  """Starts ``cmd``, SIGKILLs its whole process group as soon as ``ready(metrics records)`` holds."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.time() + 300
    try:
      while time.time() < deadline and proc.poll() is None:
        if ready(reporting.read_metrics(workdir)):
          break
        time.sleep(0.02)
    finally:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def test_kill_and_resume_equals_uninterrupted(tmp_path):
  data_dir = tmp_path / "data"
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  assert resumed_from(run(command(straight, data_dir))) == 0
  expected_records = reporting.read_metrics(straight)
  last_step = max(r["step"] for r in expected_records)
  first_eval = min(r["step"] for r in expected_records if "eval/uar" in r)

  # Kill 1: during the first evaluation (its step's train record is written, its eval record not yet).
  def evaluating(records):
    return (any(r["step"] == first_eval and "train/loss" in r for r in records)
            and not any("eval/uar" in r for r in records))

  kill_when(command(killed, data_dir), killed, tmp_path / "log1", evaluating)
  logged = reporting.read_metrics(killed)
  assert evaluating(logged), "the kill did not land during the first evaluation"

  # Kill 2: the same command resumes (from a checkpoint before that evaluation); kill it again
  # somewhere after a later checkpoint and evaluation, before the end.
  target = last_step * 2 // 3
  kill_when(command(killed, data_dir), killed, tmp_path / "log2",
            lambda records: any(r["step"] >= target for r in records if "train/loss" in r))
  assert 0 < resumed_from((tmp_path / "log2").read_text()) < first_eval
  logged = reporting.read_metrics(killed)
  assert logged and max(r["step"] for r in logged) < last_step, "the run finished before the kill"

  restart = resumed_from(run(command(killed, data_dir)))  # the same command again resumes
  assert restart >= first_eval, f"the last run restored step {restart}, not a checkpoint after step {first_eval}"
  assert reporting.read_metrics(killed) == expected_records
  a = json.loads((straight / "results.json").read_text())
  b = json.loads((killed / "results.json").read_text())
  assert a["final"] == b["final"] and a["best"] == b["best"]
