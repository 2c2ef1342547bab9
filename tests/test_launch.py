"""The multi-process launch flags' checks, and scripts/launch_local.sh with a stand-in for Python
(a shell script that records its arguments and exits as told): no JAX process is started."""

import os
import signal
import subprocess
import time

import pytest

from conftest import REPO
from dferclip_jax import distributed
from dferclip_jax.distributed import Launch

LAUNCHER = REPO / "scripts" / "launch_local.sh"


@pytest.mark.parametrize("launch, message", [
    (Launch(num_processes=2), "--num_processes given without --coordinator_address, --process_id"),
    (Launch(coordinator_address="h:1", process_id=0), "without --num_processes"),
    (Launch(coordinator_address="localhost", num_processes=2, process_id=0), "expected HOST:PORT"),
    (Launch(coordinator_address="h:1", num_processes=2, process_id=2), "--process_id=2: must be in [0, "),
    (Launch(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes=0"),
    (Launch("false", "h:1", 2, 0), "--distributed=false contradicts"),
    (Launch("auto", "h:1", 2, 0, heartbeat_timeout=0), "--heartbeat_timeout=0"),
])
def test_bad_launch_flags_name_the_flag(launch, message):
  with pytest.raises(ValueError, match=None) as error:
    distributed.check_launch(launch)
  assert message in str(error.value)


def test_launch_flags_all_or_none():
  assert distributed.check_launch(Launch()) is False
  assert distributed.check_launch(Launch("auto", "10.0.0.1:1234", 4, 3)) is True


def test_auto_detection_reads_the_environment():
  assert not distributed.several_hosts_in_environment({})
  assert not distributed.several_hosts_in_environment({"SLURM_NTASKS": "1"})
  assert distributed.several_hosts_in_environment({"SLURM_NTASKS": "2"})
  assert distributed.several_hosts_in_environment({"JAX_COORDINATOR_ADDRESS": "h:1"})
  assert distributed.several_hosts_in_environment({"TPU_WORKER_HOSTNAMES": "a,b"})


@pytest.fixture
def fake_python(tmp_path):
  """Records "<XLA_FLAGS>|<args>" per process in record_<pid>; exits with $EXIT_<process_id>
  after sleeping $SLEEP_<process_id> seconds."""
  script = tmp_path / "python"
  script.write_text(f"""#!/usr/bin/env bash
for a in "$@"; do case "$a" in --process_id=*) id="${{a#--process_id=}}";; esac; done
echo "$XLA_FLAGS|$*" > {tmp_path}/record_$id
sleep_var="SLEEP_$id"; exit_var="EXIT_$id"
# A stopped stand-in takes its sleep with it, as a real process takes its file descriptors.
sleep "${{!sleep_var:-0}}" & child=$!
trap 'kill $child 2>/dev/null; exit 143' TERM
wait $child
exit "${{!exit_var:-0}}"
""")
  script.chmod(0o755)
  return tmp_path


def run_launcher(fake, num, env=None, **kwargs):
  env = {**os.environ, "PYTHON": str(fake / "python"), "PORT": "4321", **(env or {})}
  return subprocess.Popen(["bash", str(LAUNCHER), str(num), "--config=c.py", "--workdir=w"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_launcher_starts_each_process_with_its_place(fake_python):
  proc = run_launcher(fake_python, 3, {"DEVICES_PER_PROCESS": "2",
                                       "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --other"})
  assert proc.wait(timeout=30) == 0, proc.stderr.read()
  for i in range(3):
    xla, args = (fake_python / f"record_{i}").read_text().strip().split("|")
    assert xla.split() == ["--other", "--xla_force_host_platform_device_count=2"]
    assert args.split()[1:] == ["--config=c.py", "--workdir=w", "--coordinator_address=127.0.0.1:4321",
                                "--num_processes=3", f"--process_id={i}"]


def test_launcher_fails_and_stops_the_others_when_one_fails(fake_python):
  start = time.time()
  proc = run_launcher(fake_python, 2, {"SLEEP_0": "60", "EXIT_1": "3"})
  assert proc.wait(timeout=30) == 3
  assert time.time() - start < 30  # process 0 was stopped, not waited for
  assert "exited with status 3" in proc.stderr.read()


def test_launcher_forwards_sigterm(fake_python):
  proc = run_launcher(fake_python, 2, {"SLEEP_0": "60", "SLEEP_1": "60"})
  deadline = time.time() + 30
  while time.time() < deadline and not all((fake_python / f"record_{i}").exists() for i in range(2)):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 143


def test_launcher_usage():
  result = subprocess.run(["bash", str(LAUNCHER), "two"], capture_output=True, text=True)
  assert result.returncode == 2 and "usage" in result.stderr
