"""One run per workdir: processes started at the same moment on one workdir -> exactly one holds
it, the others refuse naming it; a lock left by a process that is gone is taken over, saying why;
a live one on another host is not; the holder removes only its own lock."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from dferclip_jax.train import checkpointing, workdir_lock
from dferclip_jax.train.workdir_lock import WorkdirLock, WorkdirLockedError

# Each contender imports the lock, says "ready", waits for "go", then tries; the winner holds the
# lock until "done" exists, so every loser meets a live holder.
CONTENDER = """
import pathlib, sys, time
from dferclip_jax.train.workdir_lock import WorkdirLock, WorkdirLockedError
work = pathlib.Path(sys.argv[1])
print("ready", flush=True)
while not (work.parent / "go").exists():
    time.sleep(0.01)
try:
    with WorkdirLock(work):
        print("took", flush=True)
        while not (work.parent / "done").exists():
            time.sleep(0.01)
except WorkdirLockedError as e:
    print("refused:", e, flush=True)
    sys.exit(1)
"""


def test_processes_started_at_once_exactly_one_takes_the_lock(tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(work)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
  for p in procs:
    assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
  (tmp_path / "go").touch()
  lines = {}
  for p in procs:
    line = p.stdout.readline().strip()
    lines[p.pid] = line
    if line == "took":
      holder = p
  winners = [pid for pid, line in lines.items() if line == "took"]
  assert len(winners) == 1, lines
  record = json.loads((work / "run.lock").read_text())
  assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
  (tmp_path / "done").touch()
  for p in procs:
    p.wait(timeout=60)
    if p is holder:
      assert p.returncode == 0
    else:
      assert p.returncode == 1
      assert lines[p.pid].startswith(
          f"refused: {work} is in use by another run: host {socket.gethostname()}, pid {holder.pid}, "
          f"started {record['started']}"), lines[p.pid]
  assert not (work / "run.lock").exists(), "the holder left its lock behind"


def write_lock(work, **fields):
  record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
            "command": ["main.py", "--workdir=x"], "token": "t", "heartbeat": time.time(), **fields}
  (work / "run.lock").write_text(json.dumps(record))
  return record


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, caplog):
  pid = dead_pid()
  write_lock(tmp_path, pid=pid)
  with WorkdirLock(tmp_path) as lock:
    assert json.loads((tmp_path / "run.lock").read_text())["token"] == lock.record["token"]
  assert f"taking over the lock of a run that is gone (pid {pid} is not running on this host)" in caplog.text
  assert not (tmp_path / "run.lock").exists()


def test_a_live_holder_elsewhere_is_refused_and_a_silent_one_taken_over(tmp_path, caplog):
  record = write_lock(tmp_path, host="tpu-worker-7", pid=1234)
  with pytest.raises(WorkdirLockedError) as refused:
    with WorkdirLock(tmp_path):
      pass
  assert str(refused.value) == (
      f"{tmp_path} is in use by another run: host tpu-worker-7, pid 1234, started "
      f"2026-01-01T00:00:00+00:00 (main.py --workdir=x). Wait for it to finish or use another "
      f"--workdir; if that run is gone, delete {tmp_path / 'run.lock'}")
  assert json.loads((tmp_path / "run.lock").read_text()) == record  # untouched

  write_lock(tmp_path, host="tpu-worker-7", pid=1234,
             heartbeat=time.time() - workdir_lock.STALE_AFTER_S - 5)
  with WorkdirLock(tmp_path):
    pass
  assert "taking over the lock of a run that is gone (no heartbeat for 30" in caplog.text


def test_a_live_holder_on_this_host_is_refused(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    write_lock(tmp_path, pid=sleeper.pid)
    with pytest.raises(WorkdirLockedError, match=f"pid {sleeper.pid}, started"):
      with WorkdirLock(tmp_path):
        pass
  finally:
    sleeper.kill()
    sleeper.wait()


def test_the_heartbeat_is_rewritten_and_a_foreign_lock_is_not_removed(tmp_path):
  with WorkdirLock(tmp_path, heartbeat_s=0.05):
    first = json.loads((tmp_path / "run.lock").read_text())["heartbeat"]
    time.sleep(0.5)
    later = json.loads((tmp_path / "run.lock").read_text())["heartbeat"]
    assert later > first
    write_lock(tmp_path, token="someone else")
    time.sleep(0.2)  # the heartbeat would put ours back: it must not
  assert json.loads((tmp_path / "run.lock").read_text())["token"] == "someone else"


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]",
                                     b'{"pid": 1, "pad": "' + b"x" * workdir_lock.MAX_LOCK_BYTES + b'"}'])
def test_an_unreadable_lock_is_named(tmp_path, content):
  """Not JSON, not an object, or longer than any lock this project writes (read no further)."""
  (tmp_path / "run.lock").write_bytes(content)
  with pytest.raises(WorkdirLockedError, match=r"run.lock exists but is not a lock this project wrote"):
    with WorkdirLock(tmp_path):
      pass
  assert (tmp_path / "run.lock").read_bytes() == content


def test_stale_tmp_checkpoints_are_removed_with_a_log_line(tmp_path, caplog):
  ckpt = tmp_path / "checkpoints"
  (ckpt / "12.orbax-checkpoint-tmp-1733140000" / "state").mkdir(parents=True)
  (ckpt / "10" / "state").mkdir(parents=True)
  assert checkpointing.clean_stale_tmp_checkpoints(ckpt) == ["12.orbax-checkpoint-tmp-1733140000"]
  assert sorted(p.name for p in ckpt.iterdir()) == ["10"]
  assert "an unfinished checkpoint save left behind by an earlier run" in caplog.text
