"""Several JAX processes (hosts) as one job: starting JAX's distributed runtime, and the few
multi-host rules the rest of the code relies on.

Each host is its own process: it sees its own devices, reads its own slice of every global batch
(``data/pipeline.py``) and takes part in every collective and every Orbax save; only the first
process writes the run's files (``is_writer``). JAX's coordination service is the engine: there
is no RPC of our own.

Launching: either explicitly (``--coordinator_address``, ``--num_processes``, ``--process_id``,
e.g. N processes on one machine, ``scripts/launch_local.sh``), or by JAX's cluster auto-detection
(SLURM, Open MPI, Cloud TPU; ``--distributed=auto|true``). On CPU the cross-process collectives
are gloo's (over TCP, loopback on one machine).

A dead host: every process sends heartbeats to the coordination service (on process 0). When a
process dies, the service marks it unhealthy after ``heartbeat_timeout`` seconds and every
survivor aborts (non-zero exit, "Terminating process because the JAX distributed service detected
fatal errors ... another task died") instead of waiting forever in a collective; when process 0
itself dies the others abort at once (they lose the service). Restarting all processes with the
same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins the job (main.py's flags)."""
  mode: str = "auto"                   # --distributed: auto | true | false
  coordinator_address: str | None = None   # HOST:PORT of process 0's coordination service
  num_processes: int | None = None
  process_id: int | None = None
  initialization_timeout: int = 300    # s to wait for every process to connect
  heartbeat_timeout: int = 60          # s without heartbeats before a process counts as dead
  shutdown_timeout: int = 300          # s the exit barrier waits for the other processes


def check_launch(launch: Launch) -> bool:
  """-> whether the explicit launch flags are given; errors name the flag at fault."""
  given = {"--coordinator_address": launch.coordinator_address,
           "--num_processes": launch.num_processes, "--process_id": launch.process_id}
  present = [name for name, value in given.items() if value not in (None, "")]
  if not present:
    return False
  if len(present) != len(given):
    missing = [name for name in given if name not in present]
    raise ValueError(f"{', '.join(present)} given without {', '.join(missing)}: pass all three of "
                     f"--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or none")
  host, sep, port = launch.coordinator_address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={launch.coordinator_address!r}: expected HOST:PORT")
  if launch.num_processes < 1:
    raise ValueError(f"--num_processes={launch.num_processes}: must be at least 1")
  if not 0 <= launch.process_id < launch.num_processes:
    raise ValueError(f"--process_id={launch.process_id}: must be in [0, --num_processes="
                     f"{launch.num_processes})")
  if launch.mode == "false":
    raise ValueError("--distributed=false contradicts --coordinator_address/--num_processes/"
                     "--process_id: drop one or the other")
  for name in ("initialization_timeout", "heartbeat_timeout", "shutdown_timeout"):
    if getattr(launch, name) < 1:
      raise ValueError(f"--{name}={getattr(launch, name)}: must be at least 1 second")
  return True


def several_hosts_in_environment(env=os.environ) -> bool:
  """What ``--distributed=auto`` looks at: a coordinator address, a multi-task SLURM or Open MPI
  job, or a multi-host TPU slice."""
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(launch: Launch) -> bool:
  """Starts JAX's distributed runtime when the flags or the environment ask for it (before
  anything touches a device). -> whether it did."""
  explicit = check_launch(launch)
  if not (explicit or launch.mode == "true"
          or (launch.mode == "auto" and several_hosts_in_environment())):
    return False
  # The CPU platform's default collectives are in-process only; gloo crosses process boundaries
  # (TCP). The setting only concerns the CPU backend, so GPU/TPU jobs are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=launch.initialization_timeout,
                heartbeat_timeout_seconds=launch.heartbeat_timeout,
                shutdown_timeout_seconds=launch.shutdown_timeout)
  if explicit:
    kwargs.update(coordinator_address=launch.coordinator_address,
                  num_processes=launch.num_processes, process_id=launch.process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d: %d local devices, %d in all", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_writer() -> bool:
  """Only the first process writes the run's files (logs, plots, reports); all take part in
  Orbax saves, which coordinate among themselves."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op with one process); e.g. files one
  host writes are complete before the others read them."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
