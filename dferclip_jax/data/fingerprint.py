"""What data a run saw, in a form two labs can compare before (``cli.prepare``) and after
(``results.json``) training.

Per split: the clip count, the total frames, a hash of the sorted (clip id, frame count, label)
lines, and a hash over the bytes of each clip's first frame (in clip-id order). A clip id is the
clip folder's path relative to the data root (``config.data.root``, ``prepare --root``), or, with
no root, to the folder all the run's clips share: the same dataset under two mount points gives
the same ids. Two runs on the same lists and frames show the same fingerprint; one frame count,
one label or one first frame changed changes it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Mapping, Sequence

from dferclip_jax import storage
from dferclip_jax.data.records import ClipRecord


def id_base(records: Iterable[ClipRecord], root: str | None) -> str:
  """The folder clip ids are relative to: ``root``, or the one all the clips share."""
  if root:
    return os.path.abspath(root)
  paths = [os.path.abspath(r.path) for r in records]
  if not paths:
    return ""
  return os.path.dirname(paths[0]) if len(paths) == 1 else os.path.commonpath(paths)


def clip_id(path: str, base: str) -> str:
  relative = os.path.relpath(os.path.abspath(path), base) if base else path
  return relative.replace(os.sep, "/").rstrip("/")


def split_fingerprint(records: Sequence[ClipRecord], frame_names: Mapping[str, Sequence[str]],
                      base: str) -> dict:
  """One split's fingerprint. ``frame_names``: each clip folder's frames in reading order (the
  listing the source already made: nothing is listed again)."""
  rows = sorted((clip_id(r.path, base), r.num_frames, r.label, r.path) for r in records)
  lines = hashlib.sha256()
  first_frames = hashlib.sha256()
  for cid, count, label, path in rows:
    lines.update(f"{cid}\t{count}\t{label}\n".encode())
    names = frame_names[path]
    first = storage.path(path) / names[0]  # local: a frame of the user's data
    try:
      data = first.read_bytes()
    except OSError as e:
      raise ValueError(f"{first}: cannot read this clip's first frame for the data fingerprint: "
                       f"{e.strerror or e}") from None
    first_frames.update(f"{cid}\t{hashlib.sha256(data).hexdigest()}\n".encode())
  return {"clips": len(rows), "frames": int(sum(r[1] for r in rows)),
          "list_sha256": lines.hexdigest(), "first_frames_sha256": first_frames.hexdigest()}


def config_sha256(config) -> str:
  """A hash of the resolved config (every key, sorted)."""
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()


def source_commit() -> str | None:
  """The project's git commit (with "+changes" when the checkout differs from it), or None."""
  import subprocess
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                            timeout=10)
    if commit.returncode != 0:
      return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def format_fingerprint(splits: Mapping[str, dict]) -> str:
  lines = []
  for split, f in splits.items():
    lines.append(f"  {split:<6} {f['clips']:>6} clips {f['frames']:>9} frames  "
                 f"list {f['list_sha256'][:16]}  first frames {f['first_frames_sha256'][:16]}")
  return "\n".join(lines)
