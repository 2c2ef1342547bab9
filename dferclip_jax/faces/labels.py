"""Your own labelled videos -> the inputs of the face step, and DFER-CLIP lists of its crops.

Two ways to say which video shows what (``--labels``):

* a text file, one ``<video or frame folder> <label> [train|test]`` per line (paths relative to
  the file's folder; blank lines and ``#`` comments ignored);
* a folder per class: ``ROOT/<label>/<videos or frame folders>``, or with the split given,
  ``ROOT/train/<label>/...`` and ``ROOT/test/<label>/...``.

A label is a class name of the chosen order (``--classes``, case-insensitive) or its 0-based index.
Clips without a split go to test by ``test_fraction`` within each class, evenly spread over the
clips sorted by path (no randomness: reruns agree).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Sequence

from dferclip_jax.data import textfiles
from dferclip_jax.data.frames import VIDEO_SUFFIXES

SPLITS = ("train", "test")


class LabelError(ValueError):
  """A bad labels file or folder; the message names the file and line or folder."""


@dataclasses.dataclass(frozen=True)
class LabelledInput:
  path: str
  label: int
  split: str | None  # "train", "test", or None (assigned by test_fraction)
  where: str         # file:line or the class folder, for messages


def read_labels(spec: str, class_names: Sequence[str]) -> list[LabelledInput]:
  if os.path.isdir(spec):
    items = _from_folders(spec, class_names)
  elif os.path.isfile(spec):
    items = _from_file(spec, class_names)
  else:
    raise LabelError(f"--labels={spec}: no such file or folder")
  if not items:
    raise LabelError(f"--labels={spec}: no labelled videos or frame folders found")
  seen = {}
  for item in items:
    if item.path in seen:
      raise LabelError(f"{item.where}: {item.path} is already labelled at {seen[item.path]}")
    seen[item.path] = item.where
  return items


def parse_label(token: str, class_names: Sequence[str], where: str) -> int:
  lowered = [n.lower() for n in class_names]
  if token.lower() in lowered:
    return lowered.index(token.lower())
  if token.isdigit() and int(token) < len(class_names):
    return int(token)
  raise LabelError(f"{where}: label {token!r} is neither a class name nor an index 0..{len(class_names) - 1} "
                   f"of the classes {', '.join(class_names)} (choose the order with --classes)")


def assign_splits(items: Sequence[LabelledInput], test_fraction: float) -> list[LabelledInput]:
  """Fills in the split of items without one: per class, every (1/test_fraction)-th to test."""
  if not 0 <= test_fraction < 1:
    raise LabelError(f"--test_fraction={test_fraction}: must lie in [0, 1)")
  open_items = collections.defaultdict(list)
  for item in items:
    if item.split is None:
      open_items[item.label].append(item)
  decided = {}
  for group in open_items.values():
    for i, item in enumerate(sorted(group, key=lambda x: x.path)):
      to_test = math.floor((i + 1) * test_fraction) > math.floor(i * test_fraction)
      decided[item.path] = "test" if to_test else "train"
  return [item if item.split else dataclasses.replace(item, split=decided[item.path]) for item in items]


def _from_file(path: str, class_names: Sequence[str]) -> list[LabelledInput]:
  base = os.path.dirname(os.path.abspath(path))
  items = []
  for number, text in textfiles.read_lines(path, LabelError):
    if text.startswith("#"):
      continue
    where = f"{path}:{number}"
    parts = text.rsplit(maxsplit=2)
    if len(parts) == 3 and parts[2] in SPLITS:
      clip, label, split = parts
    else:
      parts = text.rsplit(maxsplit=1)
      if len(parts) != 2:
        raise LabelError(f"{where}: expected '<video or frame folder> <label> [train|test]', got {text!r}")
      (clip, label), split = parts, None
    items.append(LabelledInput(os.path.join(base, clip), parse_label(label, class_names, where), split, where))
  return items


def _from_folders(root: str, class_names: Sequence[str]) -> list[LabelledInput]:
  children = _subfolders(root)
  if children and set(children) <= set(SPLITS):
    return [item for split in children for item in _class_folders(os.path.join(root, split), split, class_names)]
  return _class_folders(root, None, class_names)


def _class_folders(root: str, split: str | None, class_names: Sequence[str]) -> list[LabelledInput]:
  items = []
  for name in _subfolders(root):
    folder = os.path.join(root, name)
    label = parse_label(name, class_names, f"{folder}/ (a class folder)")
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
      if entry.name.startswith("."):
        continue
      if entry.is_dir() or entry.name.lower().endswith(VIDEO_SUFFIXES):
        items.append(LabelledInput(entry.path, label, split, folder))
  return items


def _subfolders(root: str) -> list[str]:
  return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
