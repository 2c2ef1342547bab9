"""Named class orders, the publishers' label vocabularies, and the ``classes.txt`` beside every list.

A label is only an index into some order, and the projects in this field use different orders
for the same emotions. DFER-CLIP follows DFEW's own numbering (happiness first); MAFW's own
numbering (its annotation spreadsheets: 1 anger ... 11 disappointment), which HESP and MAE-DFER's
MAFW code follow, puts anger first; some repos sort names alphabetically. Mixing them up gives
a model that trains fine and predicts permuted classes, so every order here has a name, labels
move between orders only by class name (``convert_labels``), and every annotation list is written
with a ``classes.txt`` that a reader checks against the configured order (``check_classes_file``).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from dferclip_jax import storage

# DFER-CLIP's orders (its annotation lists and prompts): DFEW's 1..7 numbering minus one, and
# MAFW's four extra classes after the basic seven.
DFERCLIP_7 = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
DFERCLIP_11 = DFERCLIP_7 + ("contempt", "anxiety", "helplessness", "disappointment")

# MAFW's own numbering (its spreadsheets number 1 anger ... 11 disappointment), followed by HESP
# (open-set FER) and MAE-DFER's MAFW preprocessing. HESP's known-class split indices
# (its split.py) index this order; its MAFW lists pair 0 with Angry ... 10 with Disappointment.
# HESP ships no DFEW/AFEW list; HESP_7 (its first seven) is the order its 7-class splits assume.
HESP_11 = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
           "contempt", "anxiety", "helplessness", "disappointment")
HESP_7 = HESP_11[:7]

# Plain table for flags and configs that name an order.
ORDERS: Mapping[str, tuple[str, ...]] = {
    "dferclip_7": DFERCLIP_7,
    "dferclip_11": DFERCLIP_11,
    "hesp_7": HESP_7,
    "hesp_11": HESP_11,
}

# Which order each dataset's labels use is in the dataset table: ``datasets.get(name).class_names``.

# The publishers' vocabularies, as written in their split files, mapped to our names.
# DFEW's split CSVs number the classes 1..7 (its README: 1 Happy, 2 Sad, 3 Neutral, 4 Angry,
# 5 Surprise, 6 Disgust, 7 Fear).
DFEW_NATIVE: Mapping[int, str] = {i + 1: name for i, name in enumerate(DFERCLIP_7)}
# FERV39k names its class folders and its split-list labels like this.
FERV39K_NATIVE: Mapping[str, str] = {
    "Happy": "happiness", "Sad": "sadness", "Neutral": "neutral", "Angry": "anger",
    "Surprise": "surprise", "Disgust": "disgust", "Fear": "fear",
}
# MAFW's single-label split files name the classes with our words (labels mapped by name).
MAFW_NATIVE: Mapping[str, str] = {name: name for name in DFERCLIP_11}


def order_by_name(name: str) -> tuple[str, ...]:
  """A named order from ``ORDERS`` ("dferclip_7", "hesp_11", ...)."""
  try:
    return ORDERS[name]
  except KeyError:
    raise ValueError(f"unknown class order {name!r}; expected one of {sorted(ORDERS)}") from None


def index_map(source: Sequence[str], target: Sequence[str]) -> tuple[int, ...]:
  """``result[i]`` is the index in ``target`` of the class ``source[i]`` names.

  Fails on a source class that ``target`` lacks: there is no right answer for it.
  """
  _check_unique(source, "source")
  _check_unique(target, "target")
  missing = [name for name in source if name not in target]
  if missing:
    raise ValueError(f"classes {missing} of order {tuple(source)} are not in the target order "
                     f"{tuple(target)}")
  return tuple(list(target).index(name) for name in source)


def convert_labels(labels: Sequence[int], source: Sequence[str],
                   target: Sequence[str]) -> tuple[int, ...]:
  """Labels (indices into ``source``) -> the same classes' indices in ``target``, by name.

  Only the classes actually named must exist in ``target`` (MAFW's basic-seven labels convert to
  a 7-class order; a ``contempt`` label fails).

  E.g. HESP's MAFW split ``[10, 5, 6]`` with ``source=HESP_11, target=DFERCLIP_11`` gives
  ``(10, 1, 4)``: disappointment, sadness, surprise.
  """
  _check_unique(source, "source")
  _check_unique(target, "target")
  out = []
  for label in labels:
    if not 0 <= label < len(source):
      raise ValueError(f"label {label} is outside the source order {tuple(source)} "
                       f"(0..{len(source) - 1})")
    name = source[label]
    if name not in target:
      raise ValueError(f"label {label} ({name!r}) has no place in the target order {tuple(target)}")
    out.append(list(target).index(name))
  return tuple(out)


def names_of(labels: Sequence[int], order: Sequence[str]) -> tuple[str, ...]:
  """Labels -> class names in ``order``."""
  for label in labels:
    if not 0 <= label < len(order):
      raise ValueError(f"label {label} is outside the order {tuple(order)} (0..{len(order) - 1})")
  return tuple(order[label] for label in labels)


# ---------------------------------------------------------------------------------------------
# classes.txt: one class name per line, line i names label i.
# ---------------------------------------------------------------------------------------------

CLASSES_FILE = "classes.txt"


def write_classes_file(path: str | os.PathLike, names: Sequence[str]) -> None:
  """Writes ``names`` one a line (LF endings), refusing names that would not read back."""
  _check_unique(names, os.fspath(path))
  for name in names:
    if not name or name != name.strip() or "\n" in name:
      raise ValueError(f"{path}: class name {name!r} cannot be written one per line")
  storage.write_text_atomic(path, "".join(f"{name}\n" for name in names))


def read_classes_file(path: str | os.PathLike) -> tuple[str, ...]:
  """Reads a ``classes.txt``; blank trailing lines and CRLF endings are tolerated."""
  lines = [line.strip() for line in
           storage.path(path).read_bytes().decode("utf-8-sig").splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  for number, name in enumerate(lines, start=1):
    if not name:
      raise ValueError(f"{path}:{number}: empty class name (line {number} names label {number - 1})")
  _check_unique(lines, os.fspath(path))
  if not lines:
    raise ValueError(f"{path}: no class names")
  return tuple(lines)


def check_classes_file(path: str | os.PathLike, expected: Sequence[str]) -> None:
  """Refuses a ``classes.txt`` whose order differs from ``expected`` (the configured order)."""
  found = read_classes_file(path)
  expected = tuple(expected)
  if found == expected:
    return
  if sorted(found) == sorted(expected):
    first = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
    raise ValueError(
        f"{path}:{first + 1}: label {first} is {found[first]!r} here but {expected[first]!r} in the "
        f"configured order: same classes, permuted order.\n  file:       {found}\n"
        f"  configured: {expected}\nRe-run the prepare command, or configure the file's order.")
  raise ValueError(f"{path}: classes {found} differ from the configured classes {expected}")


def check_classes_beside(list_file: str | os.PathLike, expected: Sequence[str]) -> bool:
  """Checks the ``classes.txt`` in ``list_file``'s folder, if there is one.

  Returns whether a file was found (and agreed); raises if it disagrees. Lists without one (the
  DFER-CLIP authors' published lists) cannot be checked, and the caller decides what that means.
  """
  path = storage.absolute(list_file).parent / CLASSES_FILE
  if not path.is_file():
    return False
  check_classes_file(path, expected)
  return True


def _check_unique(names: Sequence[str], what: str) -> None:
  seen = set()
  for name in names:
    if name in seen:
      raise ValueError(f"{what}: class {name!r} appears twice in {tuple(names)}")
    seen.add(name)
