"""Annotation lists in the official DFER-CLIP format, validated line by line when opened.

One clip per line: ``frames_dir num_frames label``, separated by spaces or tabs, label 0-based in
the dataset's class order (``class_orders``). ``num_frames`` is the count the sampler spreads its
segments over (the official loader trusts it); the folder must hold at least that many frames
(``frames.list_frames``), and only its first ``num_frames`` frames in natural name order can ever be sampled.

Published lists carry their authors' absolute paths, so a path map rewrites prefixes
(``"old_prefix=new_prefix"``; the longest matching prefix wins) and relative paths are joined to
``root`` (the current directory when None).

Every problem names the list file, the 1-based line and what is wrong. With
``on_bad_clip="error"`` (the default) the first one raises ``AnnotationError``; with ``"skip"`` bad
lines are left out and returned as ``SkippedClip`` entries, so the caller can count and list them.
A folder that cannot be listed (a symlink loop, permission denied) is such a bad line.
A bad ``path_map`` or ``on_bad_clip`` is a configuration error and always raises.

One folder listed on two lines (compared resolved, so ``a/b``, ``a/./b`` and a symlink to it are
one folder) would be weighted twice in training and counted twice in testing, and with two labels
the list contradicts itself. With ``duplicate_clips="error"`` (the default) that is an
``AnnotationError`` naming both lines, whatever ``on_bad_clip`` says (skipping would keep one of
two labels by position); with ``"warn"`` each duplicate is logged naming both lines and the list is
read as written. A folder in both the training and the test list is logged by ``warn_overlap``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import MutableMapping, Sequence

from absl import logging

from dferclip_jax import storage
from dferclip_jax.data import class_orders
from dferclip_jax.data import frames as frames_lib
from dferclip_jax.data import textfiles
from dferclip_jax.data.records import ClipRecord

ON_BAD_CLIP = ("error", "skip")
DUPLICATE_CLIPS = ("error", "warn")
# Duplicates (and train/test overlaps) named one by one in a log; the rest are counted.
_SHOWN_DUPLICATES = 20


class AnnotationError(ValueError):
  """A bad annotation line or option; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class SkippedClip:
  """A line left out with ``on_bad_clip="skip"``: where it is, what it listed, and why."""
  source: str
  line: int
  clip: str
  reason: str

  def __str__(self) -> str:
    return f"{self.source}:{self.line}: {self.reason}"


PathMap = tuple[tuple[str, str], ...]


def parse_path_map(path_map: str | Sequence[str] | None) -> PathMap:
  """``"old=new"`` or a list of them -> ((old, new), ...), longest prefix first.

  Splits at the first ``=``; the old prefix must be non-empty and mapped only once.
  """
  if path_map is None or path_map == "" or (not isinstance(path_map, str) and len(path_map) == 0):
    return ()
  entries = [path_map] if isinstance(path_map, str) else list(path_map)
  pairs: dict[str, str] = {}
  for entry in entries:
    if not isinstance(entry, str):
      raise AnnotationError(f"path_map entry {entry!r}: expected a string 'old_prefix=new_prefix'")
    old, sep, new = entry.partition("=")
    old, new = old.strip(), new.strip()
    if not sep or not old:
      raise AnnotationError(f"path_map entry {entry!r}: expected 'old_prefix=new_prefix' with a "
                            f"non-empty old prefix (e.g. '/data/DFEW_Frame_Face=/mnt/dfew/frames')")
    if old in pairs and pairs[old] != new:
      raise AnnotationError(f"path_map maps the prefix {old!r} twice: to {pairs[old]!r} and "
                            f"{new!r}")
    pairs[old] = new
  return tuple(sorted(pairs.items(), key=lambda kv: -len(kv[0])))


def map_path(path: str, path_map: PathMap) -> tuple[str, bool]:
  """Applies the longest matching prefix; returns (path, whether a prefix matched)."""
  for old, new in path_map:
    if path.startswith(old):
      return new + path[len(old):], True
  return path, False


def read_annotation_list(
    path: str | os.PathLike, num_classes: int, *, root: str | os.PathLike | None = None,
    path_map: str | Sequence[str] | None = None, on_bad_clip: str = "error",
    class_names: Sequence[str] | None = None,
    frame_names: MutableMapping[str, tuple[str, ...]] | None = None,
    duplicate_clips: str = "error",
) -> tuple[list[ClipRecord], list[SkippedClip]]:
  """Reads and validates one list -> (clips, skipped lines).

  Args:
    path: the list file.
    num_classes: labels must lie in [0, num_classes).
    root: folder that relative clip paths are relative to (None: the current directory).
    path_map: prefix rewrites for absolute paths, see ``parse_path_map``.
    on_bad_clip: "error" raises on the first bad line; "skip" leaves bad lines out and reports
      them in the second return value.
    class_names: the configured class order; a ``classes.txt`` beside the list must agree.
    frame_names: optional dict, filled with resolved folder -> sorted frame names, so that
      ``sources.FolderSource`` does not list every folder a second time
      (``sources.open_annotation_list`` passes it on).
    duplicate_clips: "error" raises on a folder listed twice, naming both lines; "warn" logs
      each such pair and keeps both lines.

  Returns:
    Records with absolute folder paths, the declared frame counts and the list's labels, each
    remembering its file and line; and the skipped lines (always empty with "error").
  """
  if on_bad_clip not in ON_BAD_CLIP:
    raise AnnotationError(f"on_bad_clip={on_bad_clip!r}: expected one of {ON_BAD_CLIP}")
  if duplicate_clips not in DUPLICATE_CLIPS:
    raise AnnotationError(f"duplicate_clips={duplicate_clips!r}: expected one of {DUPLICATE_CLIPS}")
  if num_classes < 1:
    raise AnnotationError(f"num_classes={num_classes}: expected at least 1")
  mapping = parse_path_map(path_map)
  source = os.fspath(storage.absolute(path))  # a local list, or one in a bucket
  if not storage.path(source).is_file():
    raise AnnotationError(f"{source}: no such annotation list")
  if class_names is not None:
    if len(class_names) != num_classes:
      raise AnnotationError(f"{source}: {len(class_names)} class names given for "
                            f"num_classes={num_classes}")
    class_orders.check_classes_beside(source, class_names)
  base = os.path.abspath(root if root is not None else os.getcwd())
  if root is not None and not os.path.isdir(base):
    raise AnnotationError(f"root {base} (for the relative paths in {source}) is not a directory")

  skipped: list[SkippedClip] = []

  def bad(line: int, clip: str, reason: str) -> None:
    if on_bad_clip == "error":
      raise AnnotationError(f"{source}:{line}: {reason}")
    skipped.append(SkippedClip(source, line, clip, reason))

  # Pass 1: the text of every line; pass 2 (after listing all folders at once): the disk.
  parsed = []
  any_mapped = False
  for line, text in _read_lines(source):
    fields = text.split()
    if len(fields) != 3:
      bad(line, fields[0] if fields else "", f"malformed line {text!r}: expected 3 fields "
          f"'frames_dir num_frames label', found {len(fields)}")
      continue
    raw, count_text, label_text = fields
    if not re.fullmatch(r"[0-9]+", count_text) or int(count_text) < 1:
      bad(line, raw, f"field num_frames: {count_text!r} is not a positive integer")
      continue
    if not re.fullmatch(r"[+-]?[0-9]+", label_text):
      bad(line, raw, f"field label: {label_text!r} is not an integer")
      continue
    label = int(label_text)
    if not 0 <= label < num_classes:
      bad(line, raw, f"field label: {label} is outside [0, {num_classes}) "
          f"({num_classes} classes{_names_hint(class_names)})")
      continue
    mapped, matched = map_path(raw, mapping)
    any_mapped |= matched
    folder = os.path.normpath(os.path.join(base, os.path.expanduser(mapped)))
    parsed.append((line, raw, mapped, matched, folder, int(count_text), label))

  listed = frames_lib.list_many(p[4] for p in parsed)
  records = []
  for line, raw, mapped, matched, folder, count, label in parsed:
    names = listed[folder]
    if isinstance(names, frames_lib.FolderError):  # a symlink loop, permission denied, ...
      bad(line, raw, f"field frames_dir: {names} (listed as {raw!r})")
      continue
    if names is None:
      what = "is not a directory" if os.path.exists(folder) else "does not exist"
      bad(line, raw, f"field frames_dir: folder {folder} {what}"
          f"{_path_hint(raw, mapped, matched, mapping, root, any_mapped)}")
      continue
    if len(names) < count:
      bad(line, raw, f"field num_frames: {count} frames declared but {folder} holds "
          f"{len(names)} frame images ({frames_lib.FRAME_SUFFIXES_TEXT})")
      continue
    if frame_names is not None:
      frame_names[folder] = names
    records.append(ClipRecord(path=folder, num_frames=count, label=label, source=source, line=line))
  _check_duplicates(source, records, duplicate_clips)
  skipped.sort(key=lambda s: s.line)  # text problems were found in the first pass
  if not records:
    detail = f"; all {len(skipped)} lines were skipped, the first: {skipped[0]}" if skipped else ""
    raise AnnotationError(f"{source}: lists no usable clips{detail}")
  return records, skipped


def format_list(records: Sequence[ClipRecord]) -> str:
  """The official format, one clip a line; a space in a path would make the line ambiguous."""
  lines = []
  for r in records:
    if any(c.isspace() for c in r.path):
      raise ValueError(f"{r.where()}: clip path {r.path!r} contains whitespace, which the "
                       f"space-separated list format cannot hold")
    lines.append(f"{r.path} {r.num_frames} {r.label}\n")
  return "".join(lines)


def format_skipped(skipped: Sequence[SkippedClip], limit: int | None = 20) -> str:
  """A human summary: the count, then one line per skipped clip (the first ``limit``)."""
  if not skipped:
    return "no clips skipped"
  shown = skipped if limit is None else skipped[:limit]
  lines = [f"{len(skipped)} clip(s) skipped:"] + [f"  {s}" for s in shown]
  if len(shown) < len(skipped):
    lines.append(f"  ... and {len(skipped) - len(shown)} more")
  return "\n".join(lines)


def find_duplicates(records: Sequence[ClipRecord], earlier: Sequence[ClipRecord] = ()
                    ) -> list[tuple[ClipRecord, ClipRecord, str]]:
  """(first record, record naming its folder again, the resolved folder) for every record of
  ``records`` whose folder, resolved, an ``earlier`` record or a previous one of ``records`` names."""
  resolved = frames_lib.resolve_many([r.path for r in earlier] + [r.path for r in records])
  first: dict[str, ClipRecord] = {}
  for record in earlier:
    first.setdefault(resolved[record.path], record)
  found = []
  for record in records:
    real = resolved[record.path]
    if real in first:
      found.append((first[real], record, real))
    elif not earlier:  # within one list: the first line is the one the others repeat
      first[real] = record
  return found


def _duplicate_text(first: ClipRecord, again: ClipRecord, real: str) -> str:
  labels = (f"with the same label {again.label}" if first.label == again.label
            else f"with label {first.label} there and {again.label} here")
  alias = f" (listed there as {first.path}; both resolve to {real})" if first.path != again.path else ""
  return f"{again.where()}: folder {again.path} is already listed at {first.where()}, {labels}{alias}"


def _check_duplicates(source: str, records: Sequence[ClipRecord], mode: str) -> None:
  """A folder on two lines: an error naming both ("error"), or a warning for each ("warn")."""
  found = find_duplicates(records)
  if not found:
    return
  more = f" ({len(found)} duplicate lines in {source})" if len(found) > 1 else ""
  if mode == "error":
    raise AnnotationError(
        f"{_duplicate_text(*found[0])}{more}: a clip listed twice is weighted twice in training and "
        f"counted twice in testing; list each folder once, or set data.duplicate_clips='warn' to "
        f"read the list as written")
  for duplicate in found[:_SHOWN_DUPLICATES]:
    logging.warning("duplicate clip (data.duplicate_clips='warn': both lines kept): %s",
                    _duplicate_text(*duplicate))
  if len(found) > _SHOWN_DUPLICATES:
    logging.warning("... and %d more duplicate lines in %s", len(found) - _SHOWN_DUPLICATES, source)


def warn_overlap(train: Sequence[ClipRecord], test: Sequence[ClipRecord]
                 ) -> list[tuple[ClipRecord, ClipRecord, str]]:
  """Logs one warning naming both lines of every test clip whose folder (resolved) the training
  list also lists -> those (train record, test record, resolved folder) triples.

  Not an error: training and testing on one list is a legitimate check (fitting a fixture, a
  fine-tuning smoke run), but the test metrics of such clips are not held-out metrics.
  """
  found = find_duplicates(test, earlier=train)
  if found:
    shown = [f"  test {again.where()} is train {first.where()}: {again.path}"
             for first, again, _ in found[:_SHOWN_DUPLICATES]]
    if len(found) > _SHOWN_DUPLICATES:
      shown.append(f"  ... and {len(found) - _SHOWN_DUPLICATES} more")
    logging.warning("%d of %d test clips are also training clips: the test metrics are inflated by "
                    "clips the model was trained on\n%s", len(found), len(test), "\n".join(shown))
  return found


def _read_lines(path: str) -> list[tuple[int, str]]:
  return textfiles.read_lines(path, AnnotationError)


def _names_hint(class_names: Sequence[str] | None) -> str:
  return f": {', '.join(class_names)}" if class_names else ""


def _path_hint(raw: str, mapped: str, matched: bool, mapping: PathMap, root, any_mapped) -> str:
  """Why a folder may be missing: the remap or root in effect."""
  if matched:
    return f" (listed as {raw!r}, path_map gave {mapped!r})"
  if os.path.isabs(raw):
    if mapping:
      prefixes = ", ".join(repr(old) for old, _ in mapping)
      return f" (listed as {raw!r}; no path_map prefix ({prefixes}) matched it)"
    return (f" (listed as the absolute path {raw!r}: lists published with another machine's paths "
            f"need data.path_map='old_prefix=new_prefix')")
  where = f"data.root={root!r}" if root is not None else "the current directory (data.root unset)"
  hint = " and no path_map prefix matched" if mapping and not any_mapped else ""
  return f" (listed as {raw!r}, relative to {where}{hint})"
