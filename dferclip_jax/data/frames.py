"""Which files in a clip folder are frames, and in what order.

One rule for every reader (annotation lists, the native layouts, the TFDS builders): a frame is a
regular file directly in the clip folder whose name ends in ``.jpg``, ``.jpeg`` or ``.png`` (any
case) and does not start with a dot; frames are ordered by name, as the official loader sorts its
``glob``. Anything else in the folder (thumbnails, ``Thumbs.db``, landmarks) is ignored.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Iterable, Mapping

from dferclip_jax.data.native import FRAME_SUFFIXES

# Listing is I/O bound (and slow on network file systems): list folders from a thread pool.
_LIST_THREADS = 16


def is_frame_name(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(FRAME_SUFFIXES)


def list_frames(folder: str | os.PathLike) -> tuple[str, ...] | None:
  """Frame file names in ``folder``, sorted; None if ``folder`` is not a directory."""
  try:
    entries = list(os.scandir(folder))
  except (FileNotFoundError, NotADirectoryError):
    return None
  return tuple(sorted(e.name for e in entries if is_frame_name(e.name) and e.is_file()))


def list_many(folders: Iterable[str]) -> Mapping[str, tuple[str, ...] | None]:
  """``list_frames`` for many folders at once (each listed once), keyed by folder."""
  unique = list(dict.fromkeys(folders))
  if len(unique) < 2 * _LIST_THREADS:
    return {f: list_frames(f) for f in unique}
  with concurrent.futures.ThreadPoolExecutor(_LIST_THREADS) as pool:
    return dict(zip(unique, pool.map(list_frames, unique)))
