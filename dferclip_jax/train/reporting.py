"""Where numbers go: ``metrics.jsonl`` (one JSON object per logged step or evaluation), TensorBoard
event files, and the console.

On resume the jsonl is cut back to the restored step, so that a run killed and restarted ends
with the same file as an uninterrupted one (the steps after the last checkpoint are re-run and
re-logged, not duplicated).

In a bucket (``gs://``), where an object cannot be appended to, metrics.jsonl is uploaded whole
after each record, and TensorBoard writes into a local folder whose event files are uploaded to
``WORKDIR/tensorboard`` after each record (TensorFlow's own GCS client would bypass gcsfs and
ignore an emulator).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from dferclip_jax import distributed, storage

METRICS_FILE = "metrics.jsonl"


def json_plain(value: Any) -> Any:
  """JSON-safe: numpy/jax scalars and arrays to Python numbers and lists, NaN/inf to None."""
  if isinstance(value, Mapping):
    return {str(k): json_plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_plain(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
    value = np.asarray(value).item()
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, np.ndarray):
    return json_plain(value.tolist())
  return value


def write_json(path: str | Path, value: Any) -> None:
  """``value`` (made ``json_plain``) as an indented JSON file: the run's reports and results."""
  storage.write_text_atomic(path, json.dumps(json_plain(value), indent=2) + "\n")


RESULTS_FILE = "results.json"


def read_results(workdir: str | Path) -> Any:
  """The parsed ``WORKDIR/results.json``, or None where there is none; ValueError where it cannot
  be read (``storage.read_json``)."""
  return storage.read_json(storage.path(workdir) / RESULTS_FILE)


def finished_results(workdir: str | Path) -> dict | None:
  """A finished run's results (``complete``), or None: absent, unfinished or unreadable (a run
  that cannot be read counts as unfinished: training it again resumes and rewrites it)."""
  try:
    results = read_results(workdir)
  except ValueError:
    return None
  return results if isinstance(results, dict) and results.get("complete") else None


def read_metrics(workdir: str | Path) -> list[dict]:
  path = storage.path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for number, line in enumerate(lines, 1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if number == len(lines):  # a run killed mid-write leaves a partial last line: drop it
        break
      raise ValueError(f"{path}:{number}: not a JSON line") from None
  return records


def progress_bar(desc: str, enabled: bool, unit: str, total: int | None = None, initial: int = 0):
  """A tqdm progress bar on the writing process when ``enabled``; None otherwise."""
  if not enabled or not distributed.is_writer():
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class MetricWriter:
  """Writes on the first host only; every host may call it."""

  def __init__(self, workdir: str | Path, resume_step: int = 0, tensorboard: bool = True):
    self.active = distributed.is_writer()
    workdir = storage.path(workdir)
    self.path = workdir / METRICS_FILE
    self.remote = storage.is_remote(workdir)
    self._tb = None
    self._lines: list[str] = []  # a bucket's metrics.jsonl, uploaded whole after each record
    if not self.active:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self.path.exists():  # keep only what the restored state had already produced
      kept = [r for r in read_metrics(self.path.parent) if r.get("step", 0) <= resume_step]
      self._lines = [json.dumps(r) + "\n" for r in kept]
      storage.write_text_atomic(self.path, "".join(self._lines))
    if tensorboard:
      import tensorflow as tf
      self._tb_dir = workdir / "tensorboard"
      self._tb_local = None
      if self.remote:
        import tempfile
        self._tb_local = tempfile.TemporaryDirectory(prefix="dferclip-tensorboard-")
      self._tb = tf.summary.create_file_writer(self._tb_local.name if self.remote else str(self._tb_dir))

  def write(self, step: int, scalars: Mapping[str, Any], extra: Mapping[str, Any] | None = None):
    """One jsonl record {"step", **scalars, **extra}; scalars also go to TensorBoard."""
    if not self.active:
      return
    record = {"step": int(step), **json_plain(dict(scalars)), **json_plain(dict(extra or {}))}
    if self.remote:
      self._lines.append(json.dumps(record) + "\n")
      storage.write_text_atomic(self.path, "".join(self._lines))
    else:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      import tensorflow as tf
      with self._tb.as_default(step=int(step)):
        for name, value in scalars.items():
          value = json_plain(value)
          if isinstance(value, (int, float)):
            tf.summary.scalar(name, value)
      self._tb.flush()
      self._upload_tensorboard()

  def _upload_tensorboard(self) -> None:
    if self._tb_local is None:
      return
    for event_file in sorted(Path(self._tb_local.name).iterdir()):  # local: the local staging folder
      storage.copy_file(event_file, self._tb_dir / event_file.name)

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._upload_tensorboard()
      if self._tb_local is not None:
        self._tb_local.cleanup()
      self._tb = None


def format_scalars(scalars: Mapping[str, Any]) -> str:
  parts = []
  for name, value in scalars.items():
    value = json_plain(value)
    parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
  return " ".join(parts)


def log_table(title: str, rows: list[tuple[str, str]]) -> str:
  """A two-column text table, logged and returned (evaluation prints it)."""
  width = max((len(k) for k, _ in rows), default=0)
  text = "\n".join([title] + [f"  {k.ljust(width)}  {v}" for k, v in rows])
  logging.info("%s", text)
  return text
