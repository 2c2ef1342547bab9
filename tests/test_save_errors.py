"""A full disk during a checkpoint save: one line naming the step, the path and the OS error (no
traceback), no unfinished save left behind, and the checkpoints before it resume as usual.

The disk is a real one: a small tmpfs mounted on the run's checkpoint folder (needs root, as CI
has; skipped, saying so, where mounting is not allowed), filled up once the first checkpoint is on it.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO
from dferclip_jax.train import reporting

pytestmark = pytest.mark.slow


def command(workdir, data_dir):
  return [sys.executable, str(REPO / "main.py"), "--config=configs/demo.py:epochs=2,clips_per_class=8",
          f"--workdir={workdir}", f"--config.data.synthetic.dir={data_dir}",
          "--config.data.num_frames=4", "--config.batch_size=8", "--config.eval_batch_size=8",
          "--config.log_every=1", "--config.checkpoint_every=3", "--config.progress_bars=False"]


@pytest.fixture
def small_disk(tmp_path):
  mount = tmp_path / "run" / "checkpoints"
  mount.mkdir(parents=True)
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk) -> None:
  with open(disk / "filler", "wb") as f:
    try:
      while True:
        f.write(b"\0" * (1 << 20))
    except OSError:
      pass


def test_a_full_disk_is_one_line_and_the_earlier_checkpoint_resumes(tmp_path, small_disk):
  workdir, data_dir = tmp_path / "run", tmp_path / "data"
  proc = subprocess.Popen(command(workdir, data_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not (small_disk / "3" / "meta").exists():
    time.sleep(0.01)
  fill(small_disk)  # step 3's checkpoint is on the disk; the next save (step 5) finds it full
  stderr = proc.communicate(timeout=300)[1]
  assert proc.returncode == 1, stderr[-3000:]
  error = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(error) == 1, stderr[-4000:]
  assert error == [
      f"error: could not save the checkpoint of step 5 in {small_disk}: No space left on device "
      f"(ENOSPC) writing {error[0].split(' writing ')[1].split(';')[0]}; the checkpoints before it "
      f"are kept (steps [3]) and the run resumes from the latest of them"], stderr[-3000:]
  assert str(small_disk) in error[0].split(" writing ")[1]
  # The report is the last line. (Orbax's own writer threads may print their failures before it:
  # they are not this project's to silence; nothing of ours raises a traceback.)
  assert stderr.strip().splitlines()[-1] == error[0]
  assert "Traceback" not in stderr.split("RuntimeError: Event loop is closed")[-1].split(error[0])[0] \
      or "checkpointing.py" not in stderr, stderr[-3000:]
  assert "meta_path" not in stderr and "trainer.py\", line" not in stderr, stderr[-3000:]
  assert sorted(os.listdir(small_disk)) == ["3", "filler"], "an unfinished save was left behind"

  (small_disk / "filler").unlink()
  again = subprocess.run(command(workdir, data_dir), cwd=REPO, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 3 " in again.stderr
  steps = [r["step"] for r in reporting.read_metrics(workdir) if "train/loss" in r]
  assert steps == list(range(1, 11))
  shutil.copy(workdir / "results.json", tmp_path / "results.json")  # readable after the umount


def test_a_failed_save_folder_recreated_by_a_late_writer_is_removed_too(tmp_path):
  """After a failed save, an Orbax writer thread still running (a loaded machine) can recreate the
  save's folder just after close() removed it: close() removes it until it stays gone."""
  import threading
  from dferclip_jax.train import checkpointing
  manager = checkpointing.Checkpointer(tmp_path, "eval/uar", asynchronous=False)
  manager._failed = True  # as _storage_errors leaves it
  unfinished = tmp_path / "5.orbax-checkpoint-tmp-1"
  (unfinished / "d").mkdir(parents=True)

  def late_writer():
    while unfinished.exists():
      time.sleep(0.01)
    time.sleep(0.2)  # after the first removal
    (unfinished / "d").mkdir(parents=True)
    (unfinished / "d" / "chunk").write_bytes(b"\0" * 100)

  writer = threading.Thread(target=late_writer)
  writer.start()
  started = time.monotonic()
  manager.close()
  writer.join()
  assert not unfinished.exists() and time.monotonic() - started < 10
