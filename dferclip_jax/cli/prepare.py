r"""Writes DFER-CLIP annotation lists from a dataset as its publisher ships it.

  python -m dferclip_jax.cli.prepare --dataset=dfew --root=/data/DFEW --out=annotations/dfew

Each list line is ``<frames folder> <frame count> <label>`` as in the official DFER-CLIP lists,
except that the folder is relative to ``--root`` (train with ``--config.data.root=<root>``) and
the count is the frames actually on disk. Written to ``--out``:

  set_<k>_train.txt, set_<k>_test.txt   per fold (DFEW, MAFW); train.txt, test.txt (FERV39k)
  classes.txt                            line i names label i (for loaders to check against the config)
  report.json, report.txt                clip counts per fold and class, every listed clip left
                                         out (missing folder, no frames, ...) with file:line, and
                                         the folders whose frames are numbered without zero
                                         padding (read in numeric order, which a string sort,
                                         the official loader's, would scramble)

A root that is not the expected layout exits with status 1 and says what was expected.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from dferclip_jax.data import class_orders
from dferclip_jax.data import datasets
from dferclip_jax.data import fingerprint as fingerprint_lib
from dferclip_jax.data import native
from dferclip_jax.data import textfiles
from dferclip_jax.data.annotations import format_list  # noqa: F401 -- also this module's API

_DATASET = flags.DEFINE_enum("dataset", None, datasets.NATIVE, "Which dataset --root holds.")
_ROOT = flags.DEFINE_string("root", None, "Dataset root as unpacked from the publisher's archives.")
_OUT = flags.DEFINE_string("out", None, "Folder for the lists, classes.txt and the report.")
_FOLD = flags.DEFINE_string("fold", "all", "'all' or one fold: " + "; ".join(
    f"{d.name} 1..{d.num_folds}" if d.num_folds else f"{d.name} has one split"
    for d in map(datasets.get, datasets.NATIVE)) + ".")
_DFEW_FRAMES = flags.DEFINE_enum("dfew_frames", "clip_224x224", native.DFEW_FRAMES,
                                 "DFEW frames rendering: all frames, or the 16-frame resampled one.")

# Problems printed to the terminal; the report files list them all.
_PRINTED_PROBLEMS = 20


def parse_folds(dataset: str, value: str) -> tuple[int | None, ...]:
  """``--fold`` -> the folds to prepare."""
  available = native.folds(dataset)
  if value == "all":
    return available
  if available == (None,):
    raise ValueError(f"--fold={value}: {dataset} has a single train/test split; use --fold=all")
  if not value.isdigit() or int(value) not in available:
    raise ValueError(f"--fold={value}: expected 'all' or one of {', '.join(map(str, available))}")
  return (int(value),)


def prepare(dataset: str, root: str, out: str, fold_ids: Sequence[int | None], *,
            dfew_frames: str = "clip_224x224") -> dict:
  """Reads the native layout and writes lists, ``classes.txt`` and the report; returns the report."""
  root = os.path.abspath(root)
  native.check_layout(dataset, root, dfew_frames=dfew_frames)
  names = datasets.get(dataset).class_names
  os.makedirs(out, exist_ok=True)
  names_cache: dict = {}  # folds share clips: list each folder once
  report = {
      "dataset": dataset,
      "root": root,
      "frames_dir": native.frames_dir(dataset, root, dfew_frames=dfew_frames),
      "class_names": list(names),
      "folds": [],
      "problems": [],
      "reordered": [],
  }
  reordered: dict[str, None] = {}
  for fold in fold_ids:
    splits = native.read_native(dataset, root, fold=fold, dfew_frames=dfew_frames,
                                frame_names=names_cache)
    reordered.update(dict.fromkeys(splits.reordered))
    entry = {"fold": fold}
    for split in ("train", "test"):
      records = getattr(splits, split)
      textfiles.write_atomic(os.path.join(out, datasets.list_file_name(fold, split)), format_list(records))
      per_class = collections.Counter(r.label for r in records)
      entry[split] = {
          "list": datasets.list_file_name(fold, split),
          "clips": len(records),
          "frames_min": min((r.num_frames for r in records), default=0),
          "frames_max": max((r.num_frames for r in records), default=0),
          "per_class": {name: per_class[i] for i, name in enumerate(names)},
          "problems": dict(collections.Counter(p.kind for p in splits.problems if p.split == split)),
          "fingerprint": _fingerprint(records, names_cache, root),
      }
    report["folds"].append(entry)
    for p in splits.problems:
      report["problems"].append({
          "fold": fold, "split": p.split, "source": os.path.relpath(p.source, root), "line": p.line,
          "clip": p.clip, "kind": p.kind, "reason": p.reason})
  report["reordered"] = list(reordered)
  class_orders.write_classes_file(os.path.join(out, class_orders.CLASSES_FILE), names)
  textfiles.write_atomic(os.path.join(out, "report.json"), json.dumps(report, indent=2) + "\n")
  textfiles.write_atomic(os.path.join(out, "report.txt"), format_report(report) + "\n")
  return report


def _fingerprint(records, names_cache, root: str) -> dict:
  """The split's data fingerprint (data/fingerprint.py), ids relative to ``root``: a run trained
  with ``--config.data.root=ROOT`` on these lists records the same one in its results.json."""
  absolute = [dataclasses.replace(r, path=os.path.join(root, r.path)) for r in records]
  names = {a.path: names_cache[r.path] for r, a in zip(records, absolute)}
  return fingerprint_lib.split_fingerprint(absolute, names, root)


def format_report(report: dict, max_problems: int | None = None) -> str:
  lines = [f"{report['dataset']} at {report['root']} (frames: {report['frames_dir']}/)",
           f"classes, label 0 first: {', '.join(report['class_names'])}"]
  for entry in report["folds"]:
    name = "single split" if entry["fold"] is None else f"fold {entry['fold']}"
    parts = []
    for split in ("train", "test"):
      s = entry[split]
      left_out = ", ".join(f"{n} {k}" for k, n in sorted(s["problems"].items())) or "none left out"
      frames = f"{s['frames_min']}-{s['frames_max']} frames"
      parts.append(f"{split} {s['clips']} clips ({frames}; {left_out})")
    lines.append(f"{name}: " + "; ".join(parts))
    lines.append("  data fingerprint (results.json records the same for a run on these lists):")
    lines.append(fingerprint_lib.format_fingerprint({split: entry[split]["fingerprint"]
                                                     for split in ("train", "test")}))
  problems = report["problems"]
  if problems:
    shown = problems if max_problems is None else problems[:max_problems]
    more = f" (first {len(shown)}; all in report.txt)" if len(shown) < len(problems) else ""
    lines.append(f"{len(problems)} listed clips left out{more}:")
    lines += [f"  {p['source']}:{p['line']}: {p['clip']}: {p['kind']} ({p['reason']})" for p in shown]
  else:
    lines.append("every listed clip was found with frames")
  reordered = report["reordered"]
  if reordered:
    shown = reordered if max_problems is None else reordered[:max_problems]
    more = f" (first {len(shown)}; all in report.txt)" if len(shown) < len(reordered) else ""
    lines.append(f"{len(reordered)} clip folders number their frames without zero padding "
                 f"(e.g. 1.jpg ... 16.jpg): read in numeric order; a string sort (the official "
                 f"loader's) would read them as 1, 10, 11, ..., 2, ...{more}:")
    lines += [f"  {clip}" for clip in shown]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  dataset = _DATASET.value
  try:
    fold_ids = parse_folds(dataset, _FOLD.value)
    report = prepare(dataset, _ROOT.value, _OUT.value, fold_ids, dfew_frames=_DFEW_FRAMES.value)
  except (native.LayoutError, native.SplitFileError, ValueError) as err:
    print(f"prepare: {err}", file=sys.stderr)
    sys.exit(1)
  print(format_report(report, max_problems=_PRINTED_PROBLEMS))
  print(f"wrote {len(report['folds']) * 2} lists, {class_orders.CLASSES_FILE} and report.json/.txt "
        f"to {_OUT.value}; train with --config.data.root={report['root']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["dataset", "root", "out"])
  app.run(main)
