"""Shared by the benchmarks: timing, FLOP counting, and accelerator peaks for MFU."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Run from anywhere: the benchmarks import the project from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax

# Dense peak FLOP/s per chip, from the vendors' datasheets. float32 matmuls on these GPUs run as
# TF32 under JAX's default precision, so the TF32 peak is the honest denominator for float32.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 494e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 494e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 156e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v5p", "bfloat16"): 459e12, ("TPU v6 lite", "bfloat16"): 918e12,
}


def device_name() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


def peak_flops(dtype_name: str) -> float | None:
  kind = getattr(jax.devices()[0], "device_kind", "")
  for (chip, dt), peak in PEAK_FLOPS.items():
    if chip in kind and dt == dtype_name:
      return peak * jax.device_count()
  return None


def compiled_flops(compiled) -> float | None:
  """FLOPs per call as XLA counts them (None where the backend does not say)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def time_calls(fn, args, steps: int, warmup: int = 2) -> float:
  """Median seconds per call of an already-compiled fn, after warm-up; blocks on results."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  times.sort()
  return times[len(times) // 2]


def add_utilisation(record: dict, flops: float | None, step_s: float, dtype_name: str) -> dict:
  """Adds ``flops_per_step`` and, where the device's peak is known, ``mfu`` (model FLOPs
  utilisation: the given FLOPs per second over the dense peak; train_step.py passes its analytic
  count, clip_forward.py XLA's)."""
  if flops:
    record["flops_per_step"] = flops
    peak = peak_flops(dtype_name)
    if peak:
      record["mfu"] = flops / step_s / peak
  return record


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)
