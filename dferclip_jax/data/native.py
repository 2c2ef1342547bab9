"""DFEW, FERV39k and MAFW read as their publishers ship them: split files plus face-crop folders.

The expected layouts (the spellings are the table's, ``datasets.DATASETS``), under the dataset root a
user downloaded and unpacked:

  DFEW     Clip/clip_224x224/<5-digit id>/*.jpg       (or Clip/clip_224x224_16f/, see DFEW_FRAMES)
           EmoLabel_DataSplit/train(single-labeled)/set_<k>.csv, test(single-labeled)/set_<k>.csv
           CSV columns video_name,label; labels 1..7 (DFEW's README numbering)
  FERV39k  2_ClipsforFaceCrop/<Scenario>/<Class>/<id>/*.jpg
           4_setups/All_scenes/train_All.csv, test_All.csv; lines "<Scenario>/<Class>/<id> <Class>"
  MAFW     data/frames/<5-digit id>/*.png   (or data/faces/)
           Train & Test Set/single/no_caption/set_<k>/train.txt, test.txt (or split/...);
           lines "03747.mp4 anger"

Frame counts are the frame images actually in each folder (``frames.list_frames``) (the DFER-CLIP authors' lists carry
counts that do not always match the released frames), labels are mapped by class name into the
order of ``datasets.get(dataset).class_names``, and every clip remembers the split file and line
that listed it. Listed clips whose folder is missing or holds no frames are not dropped silently:
they come back in ``NativeSplits.problems``. A line that cannot be parsed (an unknown label, a
malformed id) is an error naming its file, line and field.

Record paths are relative to the dataset root, in POSIX form ("Clip/clip_224x224/02522"), so lists
written from them work wherever the dataset is mounted; ``NativeSplits.abspath`` resolves one.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Iterator, Mapping, MutableMapping, Sequence

from dferclip_jax.data import class_orders
from dferclip_jax.data import datasets
from dferclip_jax.data import frames as frames_lib
from dferclip_jax.data import textfiles
from dferclip_jax.data.records import ClipRecord

# DFEW ships two face-crop renderings: all frames (the default, what DFER-CLIP used) and 16
# frames per clip resampled by time interpolation.
DFEW_FRAMES = ("clip_224x224", "clip_224x224_16f")
_FERV39K_FRAMES = datasets.get("ferv39k").frames_dirs[0]
_HEADER_WORDS = {"label", "labels", "class", "classname", "emotion", "expression", "category"}


class LayoutError(ValueError):
  """The root is not the expected native layout (says what was expected and what was found)."""


class SplitFileError(ValueError):
  """A line of a publisher's split file that cannot be read (names file, line and field)."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """A listed clip that is left out of the splits, and why.

  ``kind`` is one of "missing" (no such folder), "empty" (no frame images), "not_a_folder",
  "unreadable" (a folder that cannot be listed: a symlink loop, permission denied),
  "duplicate" (listed twice in one file) or "label_mismatch" (FERV39k label disagrees with the
  class folder the clip sits in). ``source``/``line``: the split file (absolute) and the 1-based
  line that listed the clip; ``clip``: its folder relative to the root.
  """
  source: str
  line: int
  split: str
  clip: str
  kind: str
  reason: str

  def __str__(self) -> str:
    return f"{self.source}:{self.line}: {self.clip}: {self.kind} ({self.reason})"


@dataclasses.dataclass(frozen=True)
class NativeSplits:
  """One fold's train and test clips (paths relative to ``root``), in our class order."""
  dataset: str
  root: str
  fold: int | None
  class_names: tuple[str, ...]
  train: list[ClipRecord]
  test: list[ClipRecord]
  problems: list[Problem]
  # Clip folders (relative) whose frames a plain string sort would put in another order than
  # the numeric one we read them in (names numbered without zero padding: 1.jpg ... 16.jpg).
  reordered: list[str] = dataclasses.field(default_factory=list)

  def abspath(self, record: ClipRecord) -> str:
    return os.path.join(self.root, *record.path.split("/"))


def folds(dataset: str) -> tuple[int | None, ...]:
  """The folds ``read_native`` accepts: (1, ..., 5) for DFEW and MAFW, (None,) for FERV39k."""
  _check_dataset(dataset)
  return datasets.get(dataset).folds()


def frames_dir_candidates(dataset: str, *, dfew_frames: str = "clip_224x224") -> tuple[str, ...]:
  """Where the folder of per-clip frame folders may be, relative to the root, preferred first."""
  _check_dataset(dataset)
  if dfew_frames not in DFEW_FRAMES:
    raise ValueError(f"dfew_frames={dfew_frames!r}; expected one of {DFEW_FRAMES}")
  return tuple(d.format(dfew_frames=dfew_frames) for d in datasets.get(dataset).frames_dirs)


def frames_dir(dataset: str, root: str | os.PathLike | None = None, *,
               dfew_frames: str = "clip_224x224") -> str:
  """The folder under ``root`` that holds one sub-folder of frames per clip: the first candidate
  that exists there (the preferred one if none does, or if no root is given)."""
  candidates = frames_dir_candidates(dataset, dfew_frames=dfew_frames)
  if root is not None:
    for candidate in candidates:
      if os.path.isdir(os.path.join(root, candidate)):
        return candidate
  return candidates[0]


def split_file_candidates(dataset: str, fold: int | None, split: str) -> tuple[str, ...]:
  """Where the split file may be, relative to the root, preferred spelling first."""
  _check_fold(dataset, fold)
  return tuple(t.format(fold=fold) for t in _split_templates(dataset, split))


def check_layout(dataset: str, root: str | os.PathLike, *, dfew_frames: str = "clip_224x224") -> None:
  """Raises ``LayoutError`` unless ``root`` holds the frames folder and every fold's split files."""
  root = os.path.abspath(root)
  if not os.path.isdir(root):
    raise LayoutError(f"{dataset} root {root} is not a directory")
  missing = _missing_parts(dataset, root, dfew_frames)
  if missing:
    raise LayoutError(_layout_message(dataset, root, missing, dfew_frames))


def is_native_layout(dataset: str, root: str | os.PathLike, *,
                     dfew_frames: str = "clip_224x224") -> bool:
  try:
    check_layout(dataset, root, dfew_frames=dfew_frames)
  except LayoutError:
    return False
  return True


def read_native(dataset: str, root: str | os.PathLike, *, fold: int | None = None,
                dfew_frames: str = "clip_224x224",
                frame_names: MutableMapping[str, tuple[str, ...] | None] | None = None
                ) -> NativeSplits:
  """Reads one fold (DFEW, MAFW: 1..5; FERV39k: None) of a native dataset root.

  ``frame_names`` is an optional cache (relative clip path -> its frame names in reading order,
  None if the folder is absent) that a caller reading several folds may share, so each folder is
  listed once.
  """
  _check_fold(dataset, fold)
  root = os.path.abspath(root)
  check_layout(dataset, root, dfew_frames=dfew_frames)
  frames = frames_dir(dataset, root, dfew_frames=dfew_frames)
  names = datasets.get(dataset).class_names
  listed = {} if frame_names is None else frame_names
  problems: list[Problem] = []
  reordered: dict[str, None] = {}
  parse = {"dfew": _parse_dfew, "ferv39k": _parse_ferv39k, "mafw": _parse_mafw}[dataset]
  splits = {}
  for split in ("train", "test"):
    source = os.path.join(root, _first_file(root, split_file_candidates(dataset, fold, split)))
    entries = list(parse(source))
    if not entries:
      raise SplitFileError(f"{source}: lists no clips")
    records = []
    first_line: dict[str, int] = {}
    for entry in entries:
      clip = _resolve(root, frames, entry.candidates)
      where = dict(source=source, line=entry.line, split=split, clip=clip)
      if entry.mismatch:
        problems.append(Problem(**where, kind="label_mismatch", reason=entry.mismatch))
        continue
      if clip in first_line:
        reason = f"first listed at line {first_line[clip]}"
        problems.append(Problem(**where, kind="duplicate", reason=reason))
        continue
      first_line[clip] = entry.line
      if clip not in listed:
        try:
          listed[clip] = frames_lib.list_frames(os.path.join(root, clip))
        except frames_lib.FolderError as err:
          problems.append(Problem(**where, kind="unreadable", reason=str(err)))
          continue
      frame_files = listed[clip]
      num_frames = None if frame_files is None else len(frame_files)
      if num_frames is None:
        kind = "not_a_folder" if os.path.exists(os.path.join(root, clip)) else "missing"
        problems.append(Problem(**where, kind=kind, reason=f"no folder {os.path.join(root, clip)}"))
      elif num_frames == 0:
        problems.append(Problem(**where, kind="empty",
                                reason=f"no {frames_lib.FRAME_SUFFIXES_TEXT} files"))
      else:
        if frames_lib.string_order_differs(frame_files):
          reordered[clip] = None
        records.append(ClipRecord(path=clip, num_frames=num_frames, label=names.index(entry.name),
                                  source=source, line=entry.line))
    splits[split] = records
  return NativeSplits(dataset=dataset, root=root, fold=fold, class_names=names,
                      train=splits["train"], test=splits["test"], problems=problems,
                      reordered=list(reordered))


# ---------------------------------------------------------------------------------------------
# Split-file parsers: one entry per listed clip, label already as our class name.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
  line: int
  candidates: tuple[str, ...]  # folder names under the frames dir, preferred first
  name: str                    # class name in our vocabulary
  mismatch: str = ""           # why the entry cannot be trusted, if it cannot


def _parse_dfew(path: str) -> Iterator[_Entry]:
  lines = _read_lines(path)
  name_col, label_col = 0, 1
  if lines and not _strip_video_suffix(_csv_fields(path, *lines[0])[0]).isdigit():
    number, text = lines.pop(0)
    header = [f.lower() for f in _csv_fields(path, number, text)]
    if "video_name" not in header or "label" not in header:
      raise SplitFileError(f"{path}:{number}: header {text!r}: expected the columns video_name,label")
    name_col, label_col = header.index("video_name"), header.index("label")
  for number, text in lines:
    fields = _csv_fields(path, number, text)
    if len(fields) <= max(name_col, label_col):
      raise SplitFileError(f"{path}:{number}: {text!r}: expected the fields video_name,label")
    video = _strip_video_suffix(fields[name_col])
    if not video.isdigit():
      raise SplitFileError(f"{path}:{number}: field video_name: {fields[name_col]!r} is not a clip "
                           f"number (DFEW clips are numbered 00001..16372)")
    raw = fields[label_col]
    label = int(raw) if re.fullmatch(r"[0-9]+", raw) else None
    if label not in class_orders.DFEW_NATIVE:
      raise SplitFileError(f"{path}:{number}: field label: {raw!r} is not a DFEW label; expected "
                           f"1..7 ({_describe(class_orders.DFEW_NATIVE)})")
    yield _Entry(number, _padded(video), class_orders.DFEW_NATIVE[label])


def _parse_ferv39k(path: str) -> Iterator[_Entry]:
  for number, fields in _whitespace_rows(path, ("path", "label")):
    clip = fields[0].replace("\\", "/").strip("/")
    clip = clip[2:] if clip.startswith("./") else clip
    # Some copies list paths that include the frames folder; the clip is what follows it.
    marker = f"{_FERV39K_FRAMES}/"
    if marker in f"/{clip}":
      clip = f"/{clip}".split(f"/{marker}", 1)[1]
    name = _native_name(path, number, "label", fields[1], class_orders.FERV39K_NATIVE)
    parts = clip.split("/")
    if len(parts) != 3 or not all(parts):
      raise SplitFileError(f"{path}:{number}: field path: {fields[0]!r}; expected "
                           f"<Scenario>/<Class>/<id> (e.g. Action/Happy/0267)")
    folder = _lookup(parts[1], class_orders.FERV39K_NATIVE)
    mismatch = ""
    if folder is not None and folder != name:
      mismatch = f"labelled {fields[1]!r} but it sits in the class folder {parts[1]!r}"
    yield _Entry(number, (clip,), name, mismatch)


def _parse_mafw(path: str) -> Iterator[_Entry]:
  for number, fields in _whitespace_rows(path, ("video", "label")):
    video = _strip_video_suffix(fields[0].replace("\\", "/").rsplit("/", 1)[-1])
    if not video:
      raise SplitFileError(f"{path}:{number}: field video: empty clip name")
    name = _native_name(path, number, "label", fields[1], class_orders.MAFW_NATIVE)
    yield _Entry(number, _padded(video), name)


def _read_lines(path: str) -> list[tuple[int, str]]:
  return textfiles.read_lines(path, SplitFileError)


def _csv_fields(path: str, number: int, text: str) -> list[str]:
  try:
    return [field.strip() for field in next(csv.reader([text]))]
  except csv.Error as err:
    raise SplitFileError(f"{path}:{number}: {text!r}: not a CSV row ({err})") from None


def _whitespace_rows(path: str, fields: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
  """Rows of "<clip> <label>" lines (spaces, tabs or a comma between), skipping a header line."""
  for index, (number, text) in enumerate(_read_lines(path)):
    row = [f for f in re.split(r"[\s,]+", text) if f]
    if index == 0 and row and row[-1].lower() in _HEADER_WORDS:
      continue
    if len(row) != len(fields):
      raise SplitFileError(f"{path}:{number}: {text!r}: expected {len(fields)} fields "
                           f"({' '.join(fields)}), found {len(row)}")
    yield number, row


def _native_name(path: str, number: int, field: str, raw: str, vocabulary: Mapping[str, str]) -> str:
  name = _lookup(raw, vocabulary)
  if name is None:
    raise SplitFileError(f"{path}:{number}: field {field}: unknown class name {raw!r}; expected one "
                         f"of {', '.join(vocabulary)}")
  return name


def _lookup(raw: str, vocabulary: Mapping[str, str]) -> str | None:
  """Exact spelling first, then ignoring case (hand-edited files capitalise freely)."""
  if raw in vocabulary:
    return vocabulary[raw]
  folded = {k.lower(): v for k, v in vocabulary.items()}
  return folded.get(raw.lower())


def _describe(vocabulary: Mapping) -> str:
  return ", ".join(f"{k} {v}" for k, v in vocabulary.items())


def _strip_video_suffix(name: str) -> str:
  stem, suffix = os.path.splitext(name.strip())
  return stem if suffix.lower() in frames_lib.VIDEO_SUFFIXES else name.strip()


def _padded(video: str) -> tuple[str, ...]:
  """Folder names to try for a clip id: zero-padded to 5 digits first, then as written."""
  if not video.isdigit():
    return (video,)
  padded = f"{int(video):05d}"
  return (padded,) if padded == video else (padded, video)


# ---------------------------------------------------------------------------------------------
# The file system.
# ---------------------------------------------------------------------------------------------


def _resolve(root: str, frames: str, candidates: tuple[str, ...]) -> str:
  """The first candidate folder that exists, else the preferred one (reported missing later)."""
  for candidate in candidates:
    if os.path.isdir(os.path.join(root, frames, candidate)):
      return f"{frames}/{candidate}"
  return f"{frames}/{candidates[0]}"


def _split_templates(dataset: str, split: str) -> tuple[str, ...]:
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r}; expected 'train' or 'test'")
  return datasets.get(dataset).split_files[split]


def _first_file(root: str, candidates: Sequence[str]) -> str | None:
  for candidate in candidates:
    if os.path.isfile(os.path.join(root, candidate)):
      return candidate
  return None


def _missing_parts(dataset: str, root: str, dfew_frames: str) -> list[str]:
  candidates = frames_dir_candidates(dataset, dfew_frames=dfew_frames)
  missing = []
  if not any(os.path.isdir(os.path.join(root, c)) for c in candidates):
    missing.append(" or ".join(f"{c}/" for c in candidates) + " (one folder of frames per clip)")
  for split in ("train", "test"):
    absent = [fold for fold in folds(dataset)
              if _first_file(root, split_file_candidates(dataset, fold, split)) is None]
    num_folds = datasets.get(dataset).num_folds
    if absent and len(absent) == num_folds > 1:  # all folds: say it once
      templates = _split_templates(dataset, split)
      missing.append(" or ".join(t.format(fold="<k>") for t in templates) + f" for k = 1..{num_folds}")
    else:
      missing += [" or ".join(split_file_candidates(dataset, fold, split)) for fold in absent]
  return missing


def _layout_message(dataset: str, root: str, missing: list[str], dfew_frames: str) -> str:
  lines = [f"{root} is not the native {dataset} layout; expected under it:"]
  lines += [f"  {m}" for m in missing]
  try:
    found = sorted(os.listdir(root))
  except OSError:
    found = []
  shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "")
  lines.append(f"found in {root}: {shown or 'nothing'}")
  if dataset == "dfew":
    other = next(f for f in DFEW_FRAMES if f != dfew_frames)
    if os.path.isdir(os.path.join(root, "Clip", other)):
      lines.append(f"Clip/{other}/ is there: to use it, pass dfew_frames={other} "
                   f"(--dfew_frames={other}).")
  for entry in found[:50]:  # the archive unpacked one level deeper than the root given?
    sub = os.path.join(root, entry)
    if os.path.isdir(sub) and not _missing_parts(dataset, sub, dfew_frames):
      lines.append(f"{sub} has the expected layout: did you mean that as the root?")
  return "\n".join(lines)


def _check_dataset(dataset: str) -> None:
  if dataset not in datasets.NATIVE:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {datasets.NATIVE}")


def _check_fold(dataset: str, fold: int | None) -> None:
  _check_dataset(dataset)
  num_folds = datasets.get(dataset).num_folds
  if num_folds == 0:
    if fold is not None:
      raise ValueError(f"{dataset} has a single train/test split; pass fold=None, not {fold!r}")
  elif not isinstance(fold, int) or not 1 <= fold <= num_folds:
    raise ValueError(f"{dataset} has folds 1..{num_folds}; got fold={fold!r}")
