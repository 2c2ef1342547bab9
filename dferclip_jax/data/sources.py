"""Where clips come from: frame folders (from annotation lists) or a TFDS split. One interface.

The pipeline asks a source three things, all by example index (the position in the source):
  * ``fetch(example)`` inside tf.data: (frame count, label, handle);
  * ``frames(handle, indices)`` inside tf.data: (frame ids, encoded bytes) of the chosen frames;
  * ``check_clip(example)`` in Python, after a read failed: decodes every frame of the clip and
    raises ``ClipDataError`` naming the file (or TFDS record) that is broken.

``FolderSource`` keeps a table of every clip's sorted frame names and reads files with
``tf.io.read_file`` (no Python, no GIL). ``open_annotation_list`` builds one from a list: each
folder is listed once, when the list is validated, and the source keeps that listing (``subset``
builds sources over some of its clips, e.g. a held-out split, without listing again).
``TfdsSource`` reads an ArrayRecord TFDS split through ``tfds.data_source`` random access (one
Python call per clip), so both sources give the same examples at the same indices and the
pipeline's index-derived order and randomness (exact resume) apply to both. The frames are the original encoded bytes either way: same pixels, same batches.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from dferclip_jax.data import annotations
from dferclip_jax.data import frames as frames_lib
from dferclip_jax.data.records import ClipRecord


class ClipDataError(ValueError):
  """A clip's frames cannot be read or decoded; names the list line and the frame file."""


# ---------------------------------------------------------------------------------------------
# Frame folders.
# ---------------------------------------------------------------------------------------------


class FolderSource:
  """Clips as frame folders. ``records`` have absolute (or cwd-relative) folder paths."""

  def __init__(self, records: Sequence[ClipRecord],
               frame_names: Mapping[str, tuple[str, ...] | None] | None = None):
    """``frame_names``: folder -> sorted frame names (``frames.list_many``), e.g. the listing
    ``read_annotation_list`` made while validating; folders not in it are listed now."""
    if not records:
      raise ValueError("no clips: the source is empty")
    self.records = tuple(records)
    known = dict(frame_names or {})
    missing = [r.path for r in self.records if r.path not in known]
    known.update(frames_lib.list_many(missing))
    names, offsets = [], []
    for record in self.records:
      listed = known.get(record.path)
      if isinstance(listed, frames_lib.FolderError):
        raise ClipDataError(f"{record.where()}: {listed}")
      if listed is None:
        raise ClipDataError(f"{record.where()}: folder {record.path} does not exist")
      if len(listed) < record.num_frames:
        raise ClipDataError(f"{record.where()}: {record.num_frames} frames declared but "
                            f"{record.path} holds {len(listed)}")
      offsets.append(len(names))
      names.extend(listed[:record.num_frames])  # only these can be sampled
    self.frame_names = {r.path: known[r.path] for r in self.records}  # for ``subset``
    self._folders = tf.constant([r.path.rstrip("/\\") + "/" for r in self.records])
    self._offsets = tf.constant(offsets, tf.int64)
    self._counts = tf.constant([r.num_frames for r in self.records], tf.int32)
    self._labels = tf.constant([r.label for r in self.records], tf.int32)
    self._names = tf.constant(names if names else [""])
    self._py_names = names
    self._py_offsets = offsets

  def __len__(self) -> int:
    return len(self.records)

  def subset(self, records: Sequence[ClipRecord]) -> FolderSource:
    """A source over ``records``, clips of this source's folders (possibly relabelled), built
    from this source's listing: no folder is read again. A folder it does not hold is listed."""
    return FolderSource(records, self.frame_names)

  @property
  def labels(self) -> np.ndarray:
    return np.array([r.label for r in self.records], np.int32)

  def fetch(self, example):
    example = tf.cast(example, tf.int64)
    handle = (tf.gather(self._folders, example), tf.gather(self._offsets, example))
    return tf.gather(self._counts, example), tf.gather(self._labels, example), handle

  def frames(self, handle, indices):
    folder, offset = handle
    paths = folder + tf.gather(self._names, offset + tf.cast(indices, tf.int64))
    contents = tf.map_fn(tf.io.read_file, paths, fn_output_signature=tf.string)
    return paths, contents

  def describe(self, example: int) -> str:
    record = self.records[example]
    return f"{record.where()} ({record.path})"

  def clip_frames(self, example: int) -> list[tuple[str, bytes | Exception]]:
    """Every frame the clip may use: (path, bytes or the error reading it)."""
    record = self.records[example]
    start = self._py_offsets[example]
    out = []
    for name in self._py_names[start:start + record.num_frames]:
      path = os.path.join(record.path, name)
      try:
        with open(path, "rb") as f:  # local: frames are read from local disk or a FUSE mount
          out.append((path, f.read()))
      except OSError as err:
        out.append((path, err))
    return out

  def check_clip(self, example: int) -> None:
    _check_frames(self.describe(example), self.clip_frames(example))


def open_annotation_list(path, num_classes: int, **options
                         ) -> tuple[FolderSource, list[annotations.SkippedClip]]:
  """Reads and validates an annotation list (``annotations.read_annotation_list``, same
  arguments and errors) -> (its source, the skipped lines). Each folder is listed once."""
  listed: dict[str, tuple[str, ...]] = {}
  records, skipped = annotations.read_annotation_list(path, num_classes, frame_names=listed,
                                                      **options)
  return FolderSource(records, listed), skipped


# ---------------------------------------------------------------------------------------------
# TFDS splits (ArrayRecord, random access).
# ---------------------------------------------------------------------------------------------


class TfdsSource:
  """One split of a dataset built by ``dferclip_jax.data.tfds_builders`` (ArrayRecord format)."""

  def __init__(self, name: str, split: str, *, data_dir: str | None = None):
    import tensorflow_datasets as tfds
    from dferclip_jax.data import tfds_builders  # noqa: F401  (registers our builders)

    self.name, self.split = name, split
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
      raise ValueError(f"TFDS dataset {name!r} not found: {err}") from None
    if not builder.is_prepared():
      raise ValueError(f"TFDS dataset {name!r} is not built in {builder.data_dir}: build it first "
                       f"(see docs/data.md, `tfds build` or builder.download_and_prepare)")
    self.info = builder.info
    self.class_names = tuple(builder.info.features["label"].names)
    try:
      self._data = builder.as_data_source(split=split)
    except (ValueError, NotImplementedError) as err:
      raise ValueError(f"TFDS {name}:{split}: random access needs the ArrayRecord format (build "
                       f"with file_format='array_record', our builders' default): {err}") from None
    self._len = len(self._data)
    if not self._len:
      raise ValueError(f"TFDS {name}:{split} holds no clips")

  def __len__(self) -> int:
    return self._len

  def _record(self, example: int) -> dict:
    return self._data[int(example)]

  def _fetch_py(self, example):
    record = self._record(example)
    frames = np.array(list(record["frames"]), dtype=object)
    where = self._where(example, record)
    ids = np.array([f"{where}: frame {_text(n)}" for n in record["frame_names"]], dtype=object)
    return (np.int32(record["num_frames"]), np.int32(record["label"]), frames, ids)

  def fetch(self, example):
    count, label, frames, ids = tf.numpy_function(
        self._fetch_py, [example], (tf.int32, tf.int32, tf.string, tf.string), stateful=False)
    count.set_shape([])
    label.set_shape([])
    frames.set_shape([None])
    ids.set_shape([None])
    return count, label, (frames, ids)

  def frames(self, handle, indices):
    frames, ids = handle
    return tf.gather(ids, indices), tf.gather(frames, indices)

  def _where(self, example: int, record: dict) -> str:
    clip, origin = _text(record.get("clip", "")), _text(record.get("origin", ""))
    return f"tfds {self.name}:{self.split}[{int(example)}] clip {clip} (listed at {origin})"

  def describe(self, example: int) -> str:
    return self._where(example, self._record(example))

  def check_clip(self, example: int) -> None:
    record = self._record(example)
    names = [_text(n) for n in record["frame_names"]]
    _check_frames(self._where(example, record),
                  [(f"frame {n}", data) for n, data in zip(names, record["frames"])])


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# Decoding, shared by the pipeline and the checks.
# ---------------------------------------------------------------------------------------------


def decode_frame(contents: tf.Tensor) -> tf.Tensor:
  """JPEG (with libjpeg's accurate DCT, as PIL decodes) or PNG bytes -> uint8 ``[H, W, 3]``."""
  return tf.cond(
      tf.io.is_jpeg(contents),
      lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.ensure_shape(tf.io.decode_image(contents, channels=3, expand_animations=False),
                              [None, None, 3]))


def decode_frames(ids: tf.Tensor, contents: tf.Tensor) -> tf.Tensor:
  """Encoded frames ``[T]`` -> uint8 ``[T, H, W, 3]``.

  ``ids`` name the frames for error messages; frames of different sizes fail to stack, and the
  pipeline's error check then names the odd frame (an in-graph assertion would halve the speed).
  """
  del ids
  return tf.map_fn(decode_frame, contents,
                   fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def _check_frames(where: str, frames: list[tuple[str, bytes | Exception]]) -> None:
  """Decodes each frame eagerly; raises ``ClipDataError`` at the first unreadable one."""
  first = None
  for frame_id, data in frames:
    if isinstance(data, Exception):
      raise ClipDataError(f"{where}: {frame_id}: cannot read ({data})")
    try:
      shape = tuple(decode_frame(tf.constant(data)).shape[:2])
    except (tf.errors.OpError, ValueError) as err:
      message = getattr(err, "message", str(err)).strip().splitlines()[0]
      raise ClipDataError(f"{where}: {frame_id}: cannot decode the image ({message})") from None
    if first is None:
      first = shape
    elif shape != first:
      raise ClipDataError(f"{where}: {frame_id}: frame size {shape} differs from the clip's first "
                          f"frame {first}; all frames of a clip must have one size")
