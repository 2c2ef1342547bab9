"""Decode every frame of every clip once, before a long run: ``python main.py --mode=verify``.

Training reads only the frames its sampler draws, so a broken frame can surface hours into a run.
This pass checks each clip's frames the way the pipeline's error check does
(``FolderSource.check_clip``: readable, decodable, one size per clip) and lists the clips at fault.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Sequence

from absl import logging

from dferclip_jax import storage
from dferclip_jax.data.sources import ClipDataError, FolderSource

BAD_CLIPS_FILE = "bad_clips.txt"


def find_bad_clips(source: FolderSource, workers: int = 8) -> list[str]:
  """-> one message per clip whose frames cannot all be read and decoded, in source order."""
  def check(example):
    try:
      source.check_clip(example)
    except ClipDataError as err:
      return str(err)
    return None

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return [m for m in pool.map(check, range(len(source))) if m is not None]


def verify_sources(sources: Sequence[tuple[str, FolderSource]], out: str | Path) -> list[str]:
  """Checks each (name, source); writes every bad clip, one per line, to ``out``; -> the lines."""
  bad = []
  for name, source in sources:
    found = find_bad_clips(source)
    logging.info("%s: %d clips, %d unreadable", name, len(source), len(found))
    bad += found
  storage.write_text_atomic(out, "".join(line + "\n" for line in bad))
  return bad
