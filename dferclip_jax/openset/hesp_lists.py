"""HESP's own MAFW clips: the lists its code trains and tests on, shipped here as data.

HESP (github cosinehuang/HESP) does not use MAFW's five folds: its ``annotation_text_label/
MAFW_train.txt`` (4,088 clips) and ``MAFW_val.txt`` (1,022 clips; "val" is its test set) list
``<path>/frames/<Train|Val>/<class folder>/<clip id> <num_frames> <label> <ClassWord>``, label an
index into HESP's class order (``class_orders.HESP_11``). ``data/openset/hesp_mafw_{train,val}.txt``
keep, from each line in its order, the clip id, the frame count, the label and the class word (no
paths): ``09314 83 0 Angry``.

``write_lists`` resolves them against a MAFW root, by clip id, in either layout:
  * MAFW as its publisher ships it: ``data/frames/<clip id>/`` (or ``data/faces/``, see
    ``data.native``), the folders ``cli.prepare`` reads;
  * HESP's re-sorted copy: ``frames/<Train|Val>/<class folder>/<clip id>/``, the class folder
    being the word, with ``w``/``x``/``y``/``z`` before Contempt, Anxiety, Helplessness and
    Disappointment (as in every path of HESP's lists, so the folders sort in label order).
and writes annotation lists (labels in the config's class order, mapped by name) that the
ordinary list reader then validates clip by clip. Frame counts are HESP's (its loader trusts them,
as DFER-CLIP's does); a folder holding fewer frames is reported with its line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from dferclip_jax import storage
from dferclip_jax.data import class_orders
from dferclip_jax.data import native
from dferclip_jax.data import textfiles

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "openset"  # local: the package's own files
LIST_FILES = {"train": DATA_DIR / "hesp_mafw_train.txt", "test": DATA_DIR / "hesp_mafw_val.txt"}
# Label i of HESP's lists is this word (its 4th column); the names are class_orders.HESP_11's.
MAFW_WORDS = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise", "Contempt",
              "Anxiety", "Helplessness", "Disappointment")
WORD_OF = dict(zip(class_orders.HESP_11, MAFW_WORDS))
# HESP's frames/<split>/ folder for each split, and its class folders where they differ from the word.
_HESP_SPLIT_DIRS = {"train": "Train", "test": "Val"}
_HESP_CLASS_DIRS = {"Contempt": "wContempt", "Anxiety": "xAnxiety", "Helplessness": "yHelplessness",
                    "Disappointment": "zDisappointment"}
LAYOUTS = ("published", "hesp")


class HespListError(ValueError):
  """A line of a shipped HESP list that cannot be read (names file, line and field)."""


@dataclasses.dataclass(frozen=True)
class HespClip:
  clip_id: str
  num_frames: int
  label: int   # index into class_orders.HESP_11
  word: str
  line: int


def read_list(split: str) -> list[HespClip]:
  """HESP's MAFW ``split`` ("train": its MAFW_train.txt; "test": its MAFW_val.txt), in its order."""
  if split not in LIST_FILES:
    raise ValueError(f"split={split!r}; expected one of {sorted(LIST_FILES)}")
  path = LIST_FILES[split]
  clips = []
  for number, text in textfiles.read_lines(str(path), HespListError):
    fields = text.split()
    where = f"{path}:{number}"
    if len(fields) != 4:
      raise HespListError(f"{where}: {text!r}: expected 4 fields (clip id, frames, label, word)")
    clip_id, frames, label, word = fields
    if not clip_id.isdigit():
      raise HespListError(f"{where}: field clip id: {clip_id!r} is not a MAFW clip number")
    if not frames.isdigit() or int(frames) < 1:
      raise HespListError(f"{where}: field frames: {frames!r} is not a positive count")
    if not label.isdigit() or int(label) >= len(MAFW_WORDS) or MAFW_WORDS[int(label)] != word:
      raise HespListError(f"{where}: fields label, word: {label} {word!r} do not match HESP's "
                          f"classes ({', '.join(f'{i} {w}' for i, w in enumerate(MAFW_WORDS))})")
    clips.append(HespClip(clip_id, int(frames), int(label), word, number))
  return clips


def class_words(names: Sequence[str]) -> tuple[str, ...]:
  """HESP's words for our class names (anger -> Angry, ...). For DFEW and AFEW this assumes HESP
  would use the same words as in its MAFW lists: it ships no DFEW/AFEW lists."""
  unknown = [n for n in names if n not in WORD_OF]
  if unknown:
    raise ValueError(f"no HESP class word for {unknown}; HESP's classes are {list(WORD_OF)}")
  return tuple(WORD_OF[n] for n in names)


def detect_layout(root: str | os.PathLike) -> str:
  """"hesp" if ``root`` holds HESP's ``frames/Train`` and ``frames/Val``, "published" if it holds
  MAFW's frames folder; else a ``ValueError`` saying what was expected."""
  root = os.path.abspath(root)
  if all(os.path.isdir(os.path.join(root, "frames", d)) for d in _HESP_SPLIT_DIRS.values()):
    return "hesp"
  candidates = native.frames_dir_candidates("mafw")
  if any(os.path.isdir(os.path.join(root, c)) for c in candidates):
    return "published"
  raise ValueError(
      f"{root} holds neither MAFW's frames folder ({' or '.join(f'{c}/<clip id>/' for c in candidates)}) "
      f"nor HESP's frames/Train/<Class>/<clip id>/ and frames/Val/...: set config.data.root to the "
      f"MAFW root")


def clip_folder(clip: HespClip, split: str, layout: str, root: str | os.PathLike) -> str:
  """The clip's frame folder relative to ``root`` (POSIX)."""
  if layout == "hesp":
    folder = _HESP_CLASS_DIRS.get(clip.word, clip.word)
    return f"frames/{_HESP_SPLIT_DIRS[split]}/{folder}/{clip.clip_id}"
  if layout == "published":
    return f"{native.frames_dir('mafw', root)}/{clip.clip_id}"
  raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")


def write_lists(root: str | os.PathLike, out_dir: str | os.PathLike,
                class_names: Sequence[str]) -> dict[str, str]:
  """Writes ``train.txt``, ``test.txt`` (``<folder> <frames> <label>``, folders relative to
  ``root``, labels in ``class_names``' order) and ``classes.txt`` -> {"train": path, "test": path}."""
  layout = detect_layout(root)
  index = {name: i for i, name in enumerate(class_names)}
  missing = [n for n in class_orders.HESP_11 if n not in index]
  if missing:
    raise ValueError(f"class names {list(class_names)} lack HESP's {missing}")
  out_dir = storage.path(out_dir)
  written = {}
  for split in ("train", "test"):
    lines = [f"{clip_folder(c, split, layout, root)} {c.num_frames} "
             f"{index[class_orders.HESP_11[c.label]]}\n" for c in read_list(split)]
    path = out_dir / f"{split}.txt"
    storage.write_text_atomic(path, "".join(lines))  # every host may write it: never a half one
    written[split] = str(path)
  class_orders.write_classes_file(out_dir / class_orders.CLASSES_FILE, class_names)
  return written


