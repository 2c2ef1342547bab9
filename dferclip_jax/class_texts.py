"""The text that describes each class, from ``data/class_texts`` or a user's file."""

from __future__ import annotations

from pathlib import Path

from dferclip_jax import storage

TEXTS_DIR = Path(__file__).resolve().parents[1] / "data" / "class_texts"  # local: the package's own files
TEXT_TYPES = ("class_names", "class_names_with_context", "class_descriptor")


def read_texts_file(path: str | Path, num_classes: int) -> list[str]:
  """One non-empty line per class; the count must match (the error names the file and counts)."""
  path = storage.path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such class-texts file")
  lines = [line.strip() for line in path.read_bytes().decode("utf-8").splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  for number, line in enumerate(lines, 1):
    if not line:
      raise ValueError(f"{path}:{number}: empty line; give one text per class, in label order")
  if len(lines) != num_classes:
    raise ValueError(f"{path}: {len(lines)} class texts for {num_classes} classes (one line per class)")
  return lines


def load(text_type: str, num_classes: int, path: str | Path | None = None) -> list[str]:
  """Class texts by type ('class_names', 'class_names_with_context', 'class_descriptor') for the
  7- or 11-class DFER-CLIP order, or from ``path`` when given."""
  if path:
    return read_texts_file(path, num_classes)
  if text_type not in TEXT_TYPES:
    raise ValueError(f"text type {text_type!r}: expected one of {TEXT_TYPES} (or a texts file)")
  builtin = TEXTS_DIR / f"{text_type}_{num_classes}.txt"
  if not builtin.is_file():
    raise ValueError(f"no built-in {text_type} texts for {num_classes} classes (there are 7 and 11); "
                     f"give config.model.class_texts_file")
  return read_texts_file(builtin, num_classes)
