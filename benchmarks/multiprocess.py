"""Clips/s of the train step with the same devices split over 1, 2, ... JAX processes: the cost of
cross-process collectives (gloo over loopback on CPU).

  python benchmarks/multiprocess.py [--processes 1,2] [--devices 8] [--steps 20] [--config=configs/demo.py --config.batch_size=16]

For each process count N it starts N copies of itself on this machine (``--devices / N``
simulated CPU devices each, joined through ``jax.distributed`` as ``main.py``'s launch flags
do), builds the config's model (default: the tiny demo model), and times the jitted train step on
a random global batch of ``config.batch_size`` clips, each process feeding its host-local slice.
One JSON line per N (printed by process 0): clips_per_s, step_s, processes, devices_per_process.
Run on a CPU host (it sets JAX_PLATFORMS=cpu for the workers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

import common  # noqa: F401  (sys.path and quiet logging first)

flags.DEFINE_list("processes", ["1", "2"], "Process counts to measure.")
flags.DEFINE_integer("devices", 8, "Simulated CPU devices in all (split over the processes).")
flags.DEFINE_integer("steps", 20, "Timed steps per setting (median reported).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.py"),
    "Config file (its model, batch_size, num_frames); --config.x=y overrides work.")
# Internal: how a worker learns its place.
flags.DEFINE_string("coordinator_address", None, "(worker) coordinator HOST:PORT")
flags.DEFINE_integer("num_processes", None, "(worker) process count")
flags.DEFINE_integer("process_id", None, "(worker) this process's index")

REPO = Path(__file__).resolve().parents[1]


def launch(num: int) -> dict:
  f = flags.FLAGS
  if f.devices % num:
    raise app.UsageError(f"--devices={f.devices} is not divisible by {num} processes")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={f.devices // num}"}
  # The workers get this command's own flags (config and overrides, steps) plus their place.
  forwarded = [a for a in sys.argv[1:] if not a.startswith(("--processes", "--devices"))]
  procs = [subprocess.Popen([sys.executable, __file__, *forwarded,
                             f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num}",
                             f"--process_id={i}"], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
           for i in range(num)]
  outputs = [p.communicate()[0] for p in procs]
  if any(p.returncode for p in procs):
    raise RuntimeError(f"a worker failed (exit codes {[p.returncode for p in procs]})")
  return json.loads(outputs[0].strip().splitlines()[-1])


def worker() -> None:
  f = flags.FLAGS
  from dferclip_jax import distributed
  distributed.initialize(distributed.Launch("auto", f.coordinator_address, f.num_processes, f.process_id))
  import jax
  import numpy as np
  from dferclip_jax.train import model_setup, optimizer, sharding
  from dferclip_jax.train import state as state_lib
  from dferclip_jax.train import train_step as steps

  config = _CONFIG.value
  bundle = model_setup.build_model(config, rng=jax.random.PRNGKey(0))
  assignment, tx, schedules = optimizer.grouped_optimizer(bundle.variables["params"], config.optim, 100)
  state = state_lib.new_state(state_lib.host_state(bundle.variables["params"], assignment,
                                                   prompts=bundle.variables["prompts"]), tx)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  shardings = sharding.tree_shardings(state, mesh, config.shard_min_size)
  state = sharding.put_global(jax.tree.map(np.asarray, state), shardings)
  local = sharding.check_batch_size(config.batch_size, mesh)
  size = bundle.model.clip_config.vision_config.image_size
  rng = np.random.default_rng(jax.process_index())
  data = sharding.global_batch({
      "video": rng.integers(0, 256, (local, config.data.num_frames, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, bundle.num_classes, (local,), dtype=np.int32)}, mesh)
  step_fn = jax.jit(steps.make_train_step(bundle.model, tx, schedules),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  compiled = step_fn.lower(state, data).compile()
  holder = [state]

  def run(batch):
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  step_s = common.time_calls(run, (data,), f.steps, warmup=3)
  if jax.process_index() == 0:
    common.emit({"bench": "multiprocess_train_step", "batch": config.batch_size,
                 "frames": config.data.num_frames, "processes": jax.process_count(),
                 "devices_per_process": jax.local_device_count(), "devices": jax.device_count(),
                 "clips_per_s": config.batch_size / step_s, "step_s": step_s,
                 "device": common.device_name()})


def main(argv):
  del argv
  f = flags.FLAGS
  if f.process_id is not None:
    return worker()
  baseline = None
  for num in (int(n) for n in f.processes):
    record = launch(num)
    baseline = baseline or record["clips_per_s"]
    record["speedup_vs_first"] = record["clips_per_s"] / baseline
    common.emit(record)


if __name__ == "__main__":
  app.run(main)
