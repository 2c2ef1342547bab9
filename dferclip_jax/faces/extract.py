"""The face step: read a video or frame folder, detect, follow one face, crop squares around it.

Two passes over the frames, so memory stays at one batch however long the video: the first
detects (on every ``detect_every``-th frame and the last), the second crops with the planned boxes
and writes ``00000.jpg, 00001.jpg, ...`` (zero-padded: name order is frame order). ``crop_frames`` is
the in-memory variant that ``--mode=predict --faces=true`` runs on the frames it samples.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Iterator, Sequence

import numpy as np

from dferclip_jax.data import frames as frames_lib
from dferclip_jax.data.frames import VIDEO_SUFFIXES
from dferclip_jax.faces import tracking


class FaceError(ValueError):
  """An input without a usable face track, or that cannot be read."""


@dataclasses.dataclass(frozen=True)
class FaceSettings:
  """How faces are found and cropped (the defaults of ``dferclip_jax.cli.faces``'s flags)."""
  size: int = 224              # crops are size x size pixels
  margin: float = 0.2          # added on each side, as a fraction of the face box's longer side
  detect_every: int = 1        # detect on every k-th frame (and the last); boxes between interpolated
  smooth: int = 5              # frames in the centred moving average over box centre and size
  min_confidence: float = 0.9  # MTCNN detections below this are ignored
  max_jump: float = 0.5        # a detection whose centre moved more box sides per frame is another face
  detect_max_side: int = 640   # frames are shrunk to this longer side for detection only
  jpeg_quality: int = 95

  def check(self) -> None:
    problems = [f"{name}={value!r}: {rule}" for name, value, ok, rule in (
        ("size", self.size, self.size >= 8, "must be at least 8"),
        ("margin", self.margin, 0 <= self.margin <= 2, "must lie in [0, 2]"),
        ("detect_every", self.detect_every, self.detect_every >= 1, "must be at least 1"),
        ("smooth", self.smooth, self.smooth >= 1, "must be at least 1"),
        ("min_confidence", self.min_confidence, 0 <= self.min_confidence <= 1, "must lie in [0, 1]"),
        ("max_jump", self.max_jump, self.max_jump > 0, "must be positive"),
        ("detect_max_side", self.detect_max_side, self.detect_max_side >= 48, "must be at least 48"),
        ("jpeg_quality", self.jpeg_quality, 1 <= self.jpeg_quality <= 100, "must lie in [1, 100]"),
    ) if not ok]
    if problems:
      raise ValueError("face settings (the flags of the same names): " + "; ".join(problems))


def iter_frames(path: str) -> Iterator[np.ndarray]:
  """uint8 [H, W, 3] frames of a video file or a frame folder, in order; FaceError if unreadable."""
  if os.path.isdir(path):
    from PIL import Image
    names = frames_lib.list_frames(path)
    if not names:
      raise FaceError(f"{path}: the folder holds no {frames_lib.FRAME_SUFFIXES_TEXT} frames")
    for name in names:
      try:
        with Image.open(os.path.join(path, name)) as image:
          frame = np.asarray(image.convert("RGB"))
      except OSError as e:
        raise FaceError(f"{os.path.join(path, name)}: not a readable image ({e})") from None
      yield frame
  elif os.path.isfile(path):
    if not path.lower().endswith(VIDEO_SUFFIXES):
      raise FaceError(f"{path}: not a frame folder or a video file ({', '.join(VIDEO_SUFFIXES)})")
    try:
      import av
    except ImportError:
      raise FaceError(f"{path}: reading video files needs PyAV (pip install -r requirements-video.txt)") from None
    try:
      with av.open(path) as container:
        for frame in container.decode(video=0):
          yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as e:  # InvalidDataError, truncated files, ...
      raise FaceError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
  else:
    raise FaceError(f"{path}: no such file or folder")


def detect_clip(path: str, detector, settings: FaceSettings) -> list[np.ndarray | None]:
  """Pass 1: per frame the detections, or None where the frame was not examined."""
  detections: list[np.ndarray | None] = []
  batch: list[tuple[int, np.ndarray]] = []

  def run(batch):
    for (t, _), found in zip(batch, detector.detect([frame for _, frame in batch])):
      detections[t] = found

  last = None
  for t, frame in enumerate(iter_frames(path)):
    detections.append(None)
    last = frame
    if t % settings.detect_every == 0:
      batch.append((t, frame))
      if len(batch) == detector.batch_size:
        run(batch)
        batch = []
  if last is None:
    raise FaceError(f"{path}: the video has no frames")
  if (len(detections) - 1) % settings.detect_every:  # the last frame, so nothing is extrapolated
    batch.append((len(detections) - 1, last))
  run(batch)
  return detections


def plan(path: str, detections: Sequence[np.ndarray | None], settings: FaceSettings) -> tracking.Track:
  track = tracking.plan_crops(detections, margin=settings.margin, smooth=settings.smooth,
                              min_confidence=settings.min_confidence, max_jump=settings.max_jump)
  if track is None:
    examined = sum(d is not None for d in detections)
    raise FaceError(f"{path}: no face found in {examined} examined frame(s) of {len(detections)} "
                    f"(confidence >= {settings.min_confidence})")
  return track


def crop(frame: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
  """The square ``box`` of ``frame`` (black beyond the frame's edges) resized to size x size."""
  from PIL import Image
  image = Image.fromarray(frame).crop(tuple(int(v) for v in box))
  return np.asarray(image.resize((size, size), Image.BILINEAR))


def extract_clip(path: str, out_dir: str, detector, settings: FaceSettings) -> dict:
  """Detects, plans and writes ``out_dir/00000.jpg ...``; returns the ``faces.jsonl`` record.

  Frames go to ``out_dir + ".partial"`` first and are renamed at the end, so a killed run never
  leaves a folder that looks finished.
  """
  from PIL import Image
  detections = detect_clip(path, detector, settings)
  track = plan(path, detections, settings)
  partial = out_dir + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  written = 0
  for t, frame in enumerate(iter_frames(path)):
    if t >= len(track.boxes):
      raise FaceError(f"{path}: more frames on the second read than on the first ({t + 1})")
    Image.fromarray(crop(frame, track.boxes[t], settings.size)).save(
        os.path.join(partial, frames_lib.frame_file_name(t, len(track.boxes))), quality=settings.jpeg_quality)
    written += 1
  if written != len(track.boxes):
    raise FaceError(f"{path}: {written} frames on the second read, {len(track.boxes)} on the first")
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(partial, out_dir)
  return {"input": path, "output": out_dir, "frames": written, "face_frames": track.face_frames,
          "boxes": track.boxes.tolist()}


def crop_frames(frames: np.ndarray, detector, settings: FaceSettings, size: int,
                where: str = "") -> tuple[np.ndarray, dict]:
  """In memory: uint8 [N, H, W, 3] (every frame examined) -> ([N, size, size, 3], summary)."""
  track = plan(where, detector.detect(list(frames)), settings)
  crops = np.stack([crop(f, box, size) for f, box in zip(frames, track.boxes)])
  return crops, {"frames": len(frames), "face_frames": track.face_frames, "boxes": track.boxes.tolist()}


class FaceStep:
  """The face step as ``--mode=predict --faces=true`` runs it: on the frames each clip samples.

  Only those frames (16 per clip) are examined, so a long video costs 16 detections, not one per
  frame; the face is followed and smoothed across them as across a video's frames.
  """

  def __init__(self, settings: FaceSettings = FaceSettings(), detector=None):
    from dferclip_jax.faces.detector import Detector
    settings.check()
    self.settings = settings
    self.detector = detector or Detector(max_side=settings.detect_max_side)

  def crop_sampled(self, path: str, video: np.ndarray, indices: np.ndarray,
                   size: int) -> tuple[np.ndarray, dict]:
    """uint8 [K, T, H, W, 3] sampled at ``indices`` [K, T] -> ([K, T, size, size, 3], summary);
    ``FaceError`` where no face is found."""
    first = {}
    for k, row in enumerate(indices):
      for t, i in enumerate(row.tolist()):
        first.setdefault(i, (k, t))
    unique = sorted(first)
    crops, summary = crop_frames(np.stack([video[first[i]] for i in unique]), self.detector,
                                 self.settings, size, where=path)
    lookup = dict(zip(unique, crops))
    summary["frame_indices"] = unique
    return np.stack([np.stack([lookup[i] for i in row.tolist()]) for row in indices]), summary
