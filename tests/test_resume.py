"""kill -9 during training, then the same command again: the run ends exactly as an uninterrupted
one (same metrics.jsonl, same final and best results), also with a clip skipped when read."""

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


def command(workdir, data_dir, *extra):
  return [sys.executable, str(REPO / "main.py"), "--config=configs/demo.py:epochs=3,clips_per_class=10",
          f"--workdir={workdir}", f"--config.data.synthetic.dir={data_dir}",
          "--config.data.num_frames=4", "--config.batch_size=8", "--config.eval_batch_size=8",
          "--config.log_every=1", "--config.checkpoint_every=2", "--config.progress_bars=False", *extra]


def run(cmd, timeout=300):
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]


def kill_and_resume(tmp_path, data_dir, *extra):
  """Runs straight, then killed at 2/3 and resumed; both must end alike. -> the results.json."""
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  run(command(straight, data_dir, *extra))
  expected_records = reporting.read_metrics(straight)
  last_step = max(r["step"] for r in expected_records)

  # Kill somewhere after a checkpoint and the first evaluation, before the end.
  target = last_step * 2 // 3
  proc = subprocess.Popen(command(killed, data_dir, *extra), cwd=REPO, stdout=subprocess.DEVNULL,
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

  run(command(killed, data_dir, *extra))  # the same command again resumes
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
