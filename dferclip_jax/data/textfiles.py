"""Reading the line-oriented text files datasets ship (lists, split files), tolerantly; writing ours
atomically."""

from __future__ import annotations

import re

from dferclip_jax import storage


def read_lines(path: str, error: type[Exception] = ValueError) -> list[tuple[int, str]]:
  """(1-based line number, stripped text) of every non-blank line; a UTF-8 BOM and CRLF or CR
  line ends are tolerated. Non-UTF-8 bytes, or a file that cannot be read (permission denied, a
  symlink loop), raise ``error`` naming the file."""
  try:
    with storage.path(path).open("rb") as f:
      data = f.read()
  except OSError as err:
    raise error(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as err:
    raise error(f"{path}: not UTF-8 text ({err})") from None
  # Only real line breaks: str.splitlines would also split on form feeds and the like.
  rows = re.split(r"\r\n|\r|\n", text)
  return [(i, row.strip()) for i, row in enumerate(rows, start=1) if row.strip()]


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` (UTF-8, LF) to ``path`` through a temporary file and a rename, so an
  interrupted run never leaves a half file that looks whole."""
  storage.write_text_atomic(path, text)
