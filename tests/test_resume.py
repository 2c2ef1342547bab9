"""kill -9 during an evaluation, and again during training, then the same command again: each
restart really restores (it logs the step it resumed from), and the run ends exactly as an
uninterrupted one (same metrics.jsonl, same final and best results), also with a clip skipped when
read."""

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


def command(workdir, data_dir, *extra):
  return [sys.executable, str(REPO / "main.py"), "--config=configs/demo.py:epochs=3,clips_per_class=10",
          f"--workdir={workdir}", f"--config.data.synthetic.dir={data_dir}",
          "--config.data.num_frames=4", "--config.batch_size=8", "--config.eval_batch_size=8",
          "--config.log_every=1", "--config.checkpoint_every=2", "--config.progress_bars=False", *extra]


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


def kill_and_resume(tmp_path, data_dir, *extra):
  """Runs straight, then killed at 2/3 and resumed; both must end alike. -> the results.json."""
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  assert resumed_from(run(command(straight, data_dir, *extra))) == 0
  expected_records = reporting.read_metrics(straight)
  last_step = max(r["step"] for r in expected_records)
  first_eval = min(r["step"] for r in expected_records if "eval/uar" in r)

  # Kill 1: during the first evaluation (its step's train record is written, its eval record not yet).
  def evaluating(records):
    return (any(r["step"] == first_eval and "train/loss" in r for r in records)
            and not any("eval/uar" in r for r in records))

  kill_when(command(killed, data_dir, *extra), killed, tmp_path / "log1", evaluating)
  logged = reporting.read_metrics(killed)
  assert evaluating(logged), "the kill did not land during the first evaluation"

  # Kill 2: the same command resumes (from a checkpoint before that evaluation); kill it again
  # somewhere after a later checkpoint and evaluation, before the end.
  target = last_step * 2 // 3
  kill_when(command(killed, data_dir, *extra), killed, tmp_path / "log2",
            lambda records: any(r["step"] >= target for r in records if "train/loss" in r))
  assert 0 < resumed_from((tmp_path / "log2").read_text()) < first_eval
  logged = reporting.read_metrics(killed)
  assert logged and max(r["step"] for r in logged) < last_step, "the run finished before the kill"

  restart = resumed_from(run(command(killed, data_dir, *extra)))  # the same command again resumes
  assert restart >= first_eval, f"the last run restored step {restart}, not a checkpoint after step {first_eval}"
  assert reporting.read_metrics(killed) == expected_records
  a = json.loads((straight / "results.json").read_text())
  b = json.loads((killed / "results.json").read_text())
  assert a["final"] == b["final"] and a["best"] == b["best"]
  assert a["skipped_clips"] == b["skipped_clips"]
  return a


def test_kill_and_resume_equals_uninterrupted(tmp_path):
  kill_and_resume(tmp_path, tmp_path / "data")


def test_kill_and_resume_with_a_clip_skipped_when_read(tmp_path):
  """Explicit lists on the demo config; one training clip is all truncated JPEGs, on_bad_clip=skip."""
  from dferclip_jax.data import synthetic
  made = synthetic.make_synthetic_dataset(tmp_path / "data", clips_per_class=10, frames_range=(8, 24),
                                          image_size=40, seed=1)
  lines = (tmp_path / "data" / "train.txt").read_text().splitlines()
  broken = tmp_path / "data" / lines[4].split()[0]
  for frame in sorted(broken.iterdir()):
    frame.write_bytes(frame.read_bytes()[:frame.stat().st_size // 2])
  results = kill_and_resume(tmp_path, tmp_path / "unused", f"--config.data.train_list={made.train_list}",
                            f"--config.data.test_list={made.test_list}", f"--config.data.root={made.root}",
                            "--config.data.on_bad_clip=skip")
  [skipped] = results["skipped_clips"]
  assert f"{made.train_list}:5" in skipped and str(broken) in skipped
  assert results["num_clips"]["train"] == len(lines)
