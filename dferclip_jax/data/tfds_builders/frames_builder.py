"""What the DFEW, FERV39k and MAFW builders share: read the manual folder, store encoded frames.

The manual folder (``--manual_dir``, or ``DownloadConfig(manual_dir=...)``) holds one of:
  * the dataset as its publisher ships it (``native.is_native_layout``): the builder reads the
    split files itself (``native.read_native``; clips the split files list but the disk lacks are
    logged with their file and line, as ``cli.prepare`` reports them);
  * annotation lists in the DFER-CLIP format with paths relative to the manual folder (what
    ``python -m dferclip_jax.cli.prepare --out=<manual_dir>`` writes, or the official lists with a
    ``path_map.txt``: one ``old_prefix=new_prefix`` a line), at the top of the folder or in
    ``annotations/``. Every line is validated as for training (``on_bad_clip="error"``; a folder
    listed twice in one list is an error too, ``duplicate_clips="error"``).

Each example is one clip: the original bytes of its first ``num_frames`` frames in natural name
order (``frames.list_frames``: 2.jpg before 10.jpg; no re-encoding: the pixels are those of the
frame folders, so training on TFDS or on the folders gives the same batches), the frame names, the frame count, the label (ClassLabel in DFER-CLIP's
order) and where the clip came from. Examples keep the list's order (shuffling is disabled: the
pipeline shuffles by index), and the files are ArrayRecord, which the pipeline reads by index
(``tfds.data_source``); that random access is what makes resuming exact.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from dferclip_jax.data import annotations
from dferclip_jax.data import datasets
from dferclip_jax.data import frames as frames_lib
from dferclip_jax.data import native
from dferclip_jax.data.records import ClipRecord

LIST_DIRS = ("", "annotations")
PATH_MAP_FILE = "path_map.txt"


class FoldConfig(tfds.core.BuilderConfig):
  """Which folds to build: all of them, or one (a fifth of the disk space)."""

  def __init__(self, *, folds: Sequence[int | None], **kwargs):
    super().__init__(**kwargs)
    self.folds = tuple(folds)


def fold_configs(dataset: str) -> list[FoldConfig]:
  """``all`` and one config per fold of ``dataset`` (from the dataset table); none for one split."""
  if not datasets.get(dataset).num_folds:
    return []
  folds = datasets.get(dataset).folds()
  every = FoldConfig(name="all", folds=folds,
                     description="every fold's train and test splits (each clip stored once per "
                                 "split it belongs to)")
  return [every] + [FoldConfig(name=f"fold{k}", folds=(k,), description=f"fold {k} only")
                    for k in folds]


def list_candidates(dataset: str, fold: int | None, split: str) -> tuple[str, ...]:
  """List file names accepted for one split: ``cli.prepare``'s, then the official repo's."""
  ours = datasets.list_file_name(fold, split)
  return (ours, f"{dataset.upper()}_{ours}")


class FramesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class; subclasses set ``DATASET`` and, for folds, ``BUILDER_CONFIGS``."""

  DATASET = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Encoded frames, frame names, frame count, label, clip and origin."}

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord by default: the pipeline needs random access by example index.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
            "frame_names": tfds.features.Tensor(shape=(None,), dtype=np.object_),
            "num_frames": np.int32,
            "label": tfds.features.ClassLabel(names=datasets.get(self.DATASET).class_names),
            "clip": tfds.features.Text(),
            "origin": tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _folds(self) -> tuple[int | None, ...]:
    return self.builder_config.folds if self.builder_config is not None else (None,)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    if native.is_native_layout(self.DATASET, root):
      splits = self._native_splits(root)
    else:
      splits = self._list_splits(root)
    return {name: self._generate_examples(root, records) for name, records in splits.items()}

  def _native_splits(self, root: str) -> dict[str, list[ClipRecord]]:
    listed: dict = {}
    out = {}
    for fold in self._folds():
      read = native.read_native(self.DATASET, root, fold=fold, frame_names=listed)
      for problem in read.problems:
        logging.warning("%s: left out: %s", self.DATASET, problem)
      out[datasets.tfds_split(fold, "train")] = read.train
      out[datasets.tfds_split(fold, "test")] = read.test
    return out

  def _list_splits(self, root: str) -> dict[str, list[ClipRecord]]:
    path_map = _read_path_map(os.path.join(root, PATH_MAP_FILE))
    names = datasets.get(self.DATASET).class_names
    out, missing = {}, []
    for fold in self._folds():
      for split in ("train", "test"):
        candidates = [os.path.join(root, d, f) for d in LIST_DIRS
                      for f in list_candidates(self.DATASET, fold, split)]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
          missing.append(" or ".join(os.path.relpath(c, root) for c in candidates))
          continue
        records, _ = annotations.read_annotation_list(found, len(names), root=root,
                                                      path_map=path_map, class_names=names)
        out[datasets.tfds_split(fold, split)] = records
    if missing:
      raise FileNotFoundError(
          f"{root} is neither the native {self.DATASET} layout nor a folder of annotation lists; "
          f"missing: {'; '.join(missing)}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return out

  def _generate_examples(self, root: str, records: list[ClipRecord]) -> Iterator[tuple[int, dict]]:
    for index, record in enumerate(records):
      folder = record.path if os.path.isabs(record.path) else os.path.join(root, record.path)
      try:
        names = frames_lib.list_frames(folder) or ()
      except frames_lib.FolderError as err:  # the folder changed since it was validated
        raise frames_lib.FolderError(f"{record.where()}: {err}") from None
      if len(names) < record.num_frames:  # the folder changed since it was validated
        raise FileNotFoundError(f"{record.where()}: {folder} holds {len(names)} frames, "
                                f"{record.num_frames} expected")
      names = names[:record.num_frames]
      data = []
      for name in names:
        with open(os.path.join(folder, name), "rb") as f:  # local: TFDS builds from local frame folders
          data.append(f.read())
      clip = _relative(folder, root)
      origin = f"{_relative(record.source, root)}:{record.line}"
      yield index, {
          "frames": np.array(data, dtype=object),
          "frame_names": np.array(names, dtype=object),
          "num_frames": record.num_frames,
          "label": record.label,
          "clip": clip.replace(os.sep, "/"),
          "origin": origin,
      }


def _relative(path: str, root: str) -> str:
  """``path`` relative to ``root`` if it lies inside it (portable), else as it is."""
  path, root = os.path.abspath(path), os.path.abspath(root)
  return os.path.relpath(path, root) if os.path.commonpath([path, root]) == root else path


def _read_path_map(path: str) -> tuple[str, ...]:
  if not os.path.isfile(path):
    return ()
  with open(path, encoding="utf-8-sig") as f:  # local: TFDS builds from local frame folders
    return tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))
