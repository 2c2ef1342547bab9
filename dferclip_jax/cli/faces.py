r"""Face clips from raw videos and frame folders: detect, follow one face, crop, write frames.

  python -m dferclip_jax.cli.faces --inputs=a.mp4,b.avi,FRAME_DIR,@list.txt --out=DIR

For each input it writes ``DIR/<name>/00000.jpg ...`` (square crops of one face, ``--size``
pixels) and a line of ``DIR/faces.jsonl``: ``{"input", "output", "frames", "face_frames", "boxes"}``
(``boxes``: per frame the crop ``[x0, y0, x1, y1]`` in source pixels) or ``{"input", "error"}``.
``<name>`` is the input's path below the inputs' common folder, without the video suffix. Inputs
run in parallel (``--workers``); a rerun skips inputs already in faces.jsonl with their folder.

With ``--labels=FILE_OR_FOLDER`` (see ``dferclip_jax.faces.labels``) the inputs come from the
labels, and ``DIR/train.txt``, ``DIR/test.txt`` and ``classes.txt`` are written in the DFER-CLIP
format (``<name> <frames> <label>``, paths relative to DIR), ready for
``main.py --config=configs/ferv39k.py --config.data.root=DIR --config.data.train_list=DIR/train.txt
--config.data.test_list=DIR/test.txt``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import sys
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app
from absl import flags

from dferclip_jax.data import class_orders
from dferclip_jax.data import textfiles
from dferclip_jax.faces import extract
from dferclip_jax.faces import labels as labels_lib

RESULTS_FILE = "faces.jsonl"


def _define_flags() -> None:
  """Flags exist only when this runs as a program: importing ``run`` defines none (no clash with
  other tools' --out when both are imported, e.g. by the tests)."""
  defaults = extract.FaceSettings()
  flags.DEFINE_list("inputs", [], "Video files and frame folders; @FILE reads one path per line.")
  flags.DEFINE_string("out", None, "Folder for the crops, faces.jsonl and (with --labels) the lists.",
                      required=True)
  flags.DEFINE_string("labels", None, "A '<video> <label> [train|test]' file or a folder per class; "
                      "its videos are the inputs, and train.txt/test.txt are written.")
  flags.DEFINE_enum("classes", "dferclip_7", sorted(class_orders.ORDERS),
                    "--labels: the class order that labels name or index.")
  flags.DEFINE_float("test_fraction", 0.2, "--labels: share of each class's clips without a given "
                     "split that goes to test.txt.")
  flags.DEFINE_integer("size", defaults.size, "Crop side in pixels.")
  flags.DEFINE_float("margin", defaults.margin, "Added on each side of the face box, as a fraction "
                     "of its longer side.")
  flags.DEFINE_integer("detect_every", defaults.detect_every, "Detect on every k-th frame (and the last); "
                       "boxes in between are interpolated.")
  flags.DEFINE_integer("smooth", defaults.smooth, "Frames in the moving average of the box.")
  flags.DEFINE_float("min_confidence", defaults.min_confidence, "Ignore detections below this confidence.")
  flags.DEFINE_integer("workers", 2, "Inputs processed at once.")


def output_names(inputs: Sequence[str]) -> dict[str, str]:
  """Input -> its folder name under --out: the path below the common folder, suffix dropped."""
  stems = {p: _stem(os.path.abspath(p)) for p in inputs}
  root = os.path.commonpath([os.path.dirname(s) for s in stems.values()])
  names, owner = {}, {}
  for path, stem in stems.items():
    name = re.sub(r"\s", "_", os.path.relpath(stem, root))  # list lines are space separated
    if name in owner:
      raise ValueError(f"inputs {owner[name]} and {path} would both be written to {name}/")
    names[path], owner[name] = name, path
  return names


def _stem(path: str) -> str:
  path = os.path.normpath(path)
  return os.path.splitext(path)[0] if path.lower().endswith(extract.VIDEO_SUFFIXES) else path


def finished_records(out: str) -> dict[str, dict]:
  """Successful records of an earlier run whose crop folder is still there, keyed by input."""
  path = os.path.join(out, RESULTS_FILE)
  if not os.path.isfile(path):
    return {}
  done = {}
  with open(path, encoding="utf-8") as f:  # local: faces are extracted to local folders
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a killed run: that input runs again
        continue
      if "error" not in record and os.path.isdir(record.get("output", "")):
        done[record["input"]] = record
  return done


def run(inputs: Sequence[str], out: str, settings: extract.FaceSettings, *, workers: int = 2,
        progress: bool = True) -> list[dict]:
  """Runs the face step over ``inputs`` -> one record per input, in input order."""
  from tqdm import tqdm
  from dferclip_jax.faces.detector import Detector
  settings.check()
  if len(set(inputs)) != len(inputs):
    raise ValueError("--inputs lists a path twice: " + ", ".join(sorted({p for p in inputs if inputs.count(p) > 1})))
  names = output_names(inputs)
  os.makedirs(out, exist_ok=True)
  earlier = finished_records(out)
  records = {p: earlier[p] for p in inputs
             if p in earlier and os.path.normpath(earlier[p]["output"]) == os.path.normpath(os.path.join(out, names[p]))}
  todo = [p for p in inputs if p not in records]
  results_path = os.path.join(out, RESULTS_FILE)
  _write_records(results_path, [records[p] for p in inputs if p in records])
  if todo:
    detector = Detector(max_side=settings.detect_max_side)

    def one(path):
      try:
        return extract.extract_clip(path, os.path.join(out, names[path]), detector, settings)
      except Exception as e:  # noqa: BLE001 -- one bad input must not stop the others
        message = str(e) if isinstance(e, extract.FaceError) else f"{path}: {type(e).__name__}: {e}"
        return {"input": path, "error": message}

    log_file = open(results_path, "a", encoding="utf-8")  # local: faces are extracted to local folders
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool, log_file as log, \
        tqdm(total=len(todo), desc="faces", unit="clip", dynamic_ncols=True, disable=not progress) as bar:
      for record in pool.map(one, todo):
        records[record["input"]] = record
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.update()
  ordered = [records[p] for p in inputs]
  _write_records(results_path, ordered)  # input order, once all are done
  return ordered


def write_lists(out: str, items: Sequence[labels_lib.LabelledInput], records: Sequence[dict],
                class_names: Sequence[str]) -> dict[str, int]:
  """train.txt / test.txt (DFER-CLIP format, relative to ``out``) of the inputs that got crops."""
  from dferclip_jax.data.annotations import format_list
  from dferclip_jax.data.records import ClipRecord
  by_input = {r["input"]: r for r in records}
  lists = {split: [] for split in labels_lib.SPLITS}
  for item in items:
    record = by_input[item.path]
    if "error" not in record:
      name = os.path.relpath(record["output"], out)
      lists[item.split].append(ClipRecord(name, record["frames"], item.label, item.where))
  for split, clips in lists.items():
    textfiles.write_atomic(os.path.join(out, f"{split}.txt"), format_list(clips))
  class_orders.write_classes_file(os.path.join(out, class_orders.CLASSES_FILE), class_names)
  return {split: len(clips) for split, clips in lists.items()}


def _write_records(path: str, records: Sequence[dict]) -> None:
  textfiles.write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from dferclip_jax.faces.detector import MissingDetectorError
  from dferclip_jax.predict import expand_inputs
  f = flags.FLAGS
  settings = extract.FaceSettings(size=f.size, margin=f.margin, detect_every=f.detect_every,
                                  smooth=f.smooth, min_confidence=f.min_confidence)
  class_names = class_orders.order_by_name(f.classes)
  try:
    if f.labels:
      if f.inputs:
        raise ValueError("give either --inputs or --labels (whose videos are the inputs), not both")
      items = labels_lib.assign_splits(labels_lib.read_labels(f.labels, class_names), f.test_fraction)
      inputs = [item.path for item in items]
    else:
      if not f.inputs:
        raise ValueError("--inputs (or --labels) is required")
      inputs = expand_inputs(f.inputs)
    records = run(inputs, f.out, settings, workers=f.workers)
  except (ValueError, OSError, MissingDetectorError) as err:
    print(f"faces: {err}", file=sys.stderr)
    sys.exit(1)
  failed = [r for r in records if "error" in r]
  for r in failed[:20]:
    print(f"  failed: {r['error']}")
  print(f"{len(records) - len(failed)} of {len(records)} inputs cropped to {f.out} "
        f"({len(failed)} failed; every result in {os.path.join(f.out, RESULTS_FILE)})")
  if f.labels:
    counts = write_lists(f.out, items, records, class_names)
    print(f"wrote train.txt ({counts['train']} clips), test.txt ({counts['test']}) and classes.txt; "
          f"train with --config.data.root={os.path.abspath(f.out)}")
    for split, count in counts.items():
      if not count:
        print(f"warning: {split}.txt is empty; training needs clips in both lists (label more "
              f"videos, mark some '{split}', or change --test_fraction)", file=sys.stderr)
  if len(failed) == len(records):
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
