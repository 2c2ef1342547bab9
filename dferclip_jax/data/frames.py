"""Which files in a clip folder are frames, in what order, and how we name the frames we write.

One rule for every reader (annotation lists, the native layouts, the TFDS builders, predict): a
frame is a regular file directly in the clip folder whose name ends in ``.jpg``, ``.jpeg`` or
``.png`` (any case) and does not start with a dot. Anything else in the folder (thumbnails,
``Thumbs.db``, landmarks) is ignored.

Frames are ordered by name with numbers compared as numbers ("natural" order: ``2.jpg`` before
``10.jpg``). DFEW's 16-frame rendering names its frames ``1.jpg`` ... ``16.jpg`` without zero
padding, and the official loader's plain string sort reads such a clip as 1, 10, 11, ..., 16, 2,
..., 9: scrambled time, with no error. On zero-padded names (``00001.jpg``) both orders agree, so
where the official loader is right we read what it reads.

Frames we write (face crops, the synthetic data) are named ``frame_file_name``: zero-padded, so
name order, natural order and the official string order all agree. Video files are recognized by
``VIDEO_SUFFIXES`` (predict and the face step read them; split files that name videos are mapped
to their frame folders).
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import re
from typing import Iterable, Mapping

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
FRAME_SUFFIXES_TEXT = "/".join(FRAME_SUFFIXES)  # ".jpg/.jpeg/.png", for messages
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")

# Listing is I/O bound (and slow on network file systems): list folders from a thread pool.
_LIST_THREADS = 16
# Digit runs are left-padded to this width before comparing (longer runs compare as written).
_NUMBER_WIDTH = 20
_DIGITS = re.compile(r"[0-9]+")


def is_frame_name(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(FRAME_SUFFIXES)


def frame_file_name(index: int, num_frames: int) -> str:
  """The name of frame ``index`` of ``num_frames`` that we write: at least 5 digits, enough for
  the last index, so that every order of the names is time order."""
  return f"{index:0{max(5, len(str(num_frames - 1)))}d}.jpg"


def natural_key(name: str) -> tuple[str, str]:
  """Sort key: every digit run zero-padded to a common width (so 2 < 10), ties by the name.

  Padding keeps the comparison a plain string comparison, so on names whose numbers are already
  padded to one width the order is exactly the string order.
  """
  return _DIGITS.sub(lambda m: m.group().rjust(_NUMBER_WIDTH, "0"), name), name


def sort_frames(names: Iterable[str]) -> tuple[str, ...]:
  """Frame names in natural order."""
  return tuple(sorted(names, key=natural_key))


def string_order_differs(names: Iterable[str]) -> bool:
  """True if a plain string sort (the official loader's) would read these frames in another order."""
  names = list(names)
  return sorted(names) != sorted(names, key=natural_key)


class FolderError(ValueError):
  """A folder that is there but cannot be listed: a symlink loop, permission denied, an I/O
  error. The message names the folder (and the entry at fault) and the OS error."""


def describe_os_error(err: OSError) -> str:
  """``[Errno 40] Too many levels ...: 'path'`` -> what it means, without repeating the path."""
  what = {errno.ELOOP: "a symlink loop", errno.EACCES: "permission denied",
          errno.EPERM: "permission denied"}.get(err.errno)
  text = err.strerror or type(err).__name__
  return f"{what} ({text})" if what and what.lower() != text.lower() else text


def list_frames(folder: str | os.PathLike) -> tuple[str, ...] | None:
  """Frame file names in ``folder``, in natural order; None if ``folder`` is not a directory
  (missing, a file, a dangling link); ``FolderError`` if it cannot be listed (a symlink loop,
  permission denied, an entry that cannot be examined)."""
  try:
    entries = list(os.scandir(folder))
  except (FileNotFoundError, NotADirectoryError):
    return None
  except OSError as err:
    raise FolderError(f"folder {folder} cannot be listed: {describe_os_error(err)}") from None
  names = []
  for entry in entries:
    try:
      if is_frame_name(entry.name) and entry.is_file():  # is_file follows a link: it can fail
        names.append(entry.name)
    except OSError as err:
      raise FolderError(f"folder {folder} cannot be listed: its entry {entry.name}: "
                        f"{describe_os_error(err)}") from None
  return sort_frames(names)


def _listed_or_error(folder: str) -> tuple[str, ...] | None | FolderError:
  try:
    return list_frames(folder)
  except FolderError as err:
    return err


def list_many(folders: Iterable[str]) -> Mapping[str, tuple[str, ...] | None | FolderError]:
  """``list_frames`` for many folders at once (each listed once), keyed by folder. A folder that
  cannot be listed maps to its ``FolderError``, not raised, so that the caller can name the list
  line or skip that clip."""
  return _each(_listed_or_error, folders)


def resolve_many(folders: Iterable[str]) -> Mapping[str, str]:
  """``os.path.realpath`` of many folders at once, keyed by folder: one folder reached as
  ``a/b``, ``a/./b`` or through a symlink resolves to one path (a symlink loop, to itself)."""
  return _each(os.path.realpath, folders)


def _each(fn, folders: Iterable[str]) -> dict:
  """``fn`` of each distinct folder; I/O bound, so from a thread pool when there are many."""
  unique = list(dict.fromkeys(folders))
  if len(unique) < 2 * _LIST_THREADS:
    return {f: fn(f) for f in unique}
  with concurrent.futures.ThreadPoolExecutor(_LIST_THREADS) as pool:
    return dict(zip(unique, pool.map(fn, unique)))
