"""kill -9 during training, then the same command again: the run ends exactly as an uninterrupted
one (same metrics.jsonl, same final and best results)."""

import json
import os
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


def run(cmd, timeout=300):
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]


def test_kill_and_resume_equals_uninterrupted(tmp_path):
  data_dir = tmp_path / "data"
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  run(command(straight, data_dir))
  expected_records = reporting.read_metrics(straight)
  last_step = max(r["step"] for r in expected_records)

  # Kill somewhere after a checkpoint and the first evaluation, before the end.
  target = last_step * 2 // 3
  proc = subprocess.Popen(command(killed, data_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 300
  try:
    while time.time() < deadline and proc.poll() is None:
      if any(r["step"] >= target for r in reporting.read_metrics(killed) if "train/loss" in r):
        break
      time.sleep(0.05)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  logged = reporting.read_metrics(killed)
  assert logged and max(r["step"] for r in logged) < last_step, "the run finished before the kill"

  run(command(killed, data_dir))  # the same command again resumes
  assert reporting.read_metrics(killed) == expected_records
  a = json.loads((straight / "results.json").read_text())
  b = json.loads((killed / "results.json").read_text())
  assert a["final"] == b["final"] and a["best"] == b["best"]
