"""SIGTERM to one of two processes (4 simulated devices each, gloo over loopback): both stop at the
same step through JAX's preemption sync point, save it, exit 75; the same command again resumes
and ends as the uninterrupted run (the one-process, 8-device reference of test_multihost)."""

import os
import re
import signal

import numpy as np
import pytest

from dferclip_jax.train import preemption
from test_multihost import (assert_losses_match, data_dir, evaluations, free_port, launch_local,  # noqa: F401
                            main_args, reference, start_process, train_losses, wait_for_step)

pytestmark = pytest.mark.slow


def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path, data_dir, reference):  # noqa: F811
  ref_dir, _ = reference
  ref_losses, ref_evals = train_losses(ref_dir), evaluations(ref_dir)
  workdir = tmp_path / "run"
  args = main_args(workdir, data_dir)
  port = free_port()
  procs = [start_process(args, port, i) for i in range(2)]
  try:
    wait_for_step(procs, workdir, 2)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in procs]
    logs = [p.stderr.read() for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
  assert codes == [preemption.REQUEUE_EXIT_CODE] * 2, [log[-2000:] for log in logs]
  stops = [re.findall(r"preemption sync point at step (\d+)", log) for log in logs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  step = int(stops[0][0])
  assert step < 8, "the run finished before the signal"
  assert sorted(train_losses(workdir)) == list(range(1, step + 1))
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] == step

  launch_local(2, args)  # the same command again
  assert sorted(train_losses(workdir)) == list(range(1, 9))
  assert_losses_match(train_losses(workdir), ref_losses, range(1, 9))
  np.testing.assert_array_equal(evaluations(workdir)[8]["eval/confusion_matrix"],
                                ref_evals[8]["eval/confusion_matrix"])
