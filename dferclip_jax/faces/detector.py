"""MTCNN face detection on batches of frames, at a bounded resolution.

The ``mtcnn`` package (MIT; its weights ship inside the wheel, so nothing is downloaded) runs on
TensorFlow, which the input pipeline already needs. It is an optional extra
(``pip install -r requirements-video.txt``), imported when a ``Detector`` is made.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

INSTALL_HINT = "pip install -r requirements-video.txt (or: pip install mtcnn)"


class MissingDetectorError(ImportError):
  """The optional face detector is not installed."""


class Detector:
  """``detect(frames)`` -> per frame an array [n, 5] of (x0, y0, x1, y1, confidence), source pixels.

  Frames whose longer side exceeds ``max_side`` are shrunk to it first (MTCNN's time grows with
  the pixel count; faces in a phone video are still far above its 20-pixel minimum), and the
  boxes scaled back.
  """

  def __init__(self, max_side: int = 640, batch_size: int = 16, min_face: int = 20):
    try:
      from mtcnn import MTCNN
    except ImportError as e:
      raise MissingDetectorError(
          f"face detection needs the optional 'mtcnn' package ({e}); {INSTALL_HINT}") from None
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # a small CNN; keep TensorFlow off the accelerators
    self._mtcnn = MTCNN(device="CPU:0")
    self.max_side, self.batch_size, self.min_face = max_side, batch_size, min_face

  def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for start in range(0, len(frames), self.batch_size):
      out += self._detect_batch(frames[start:start + self.batch_size])
    return out

  def _detect_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    scaled, scales = zip(*(_shrink(f, self.max_side) for f in frames))
    if len({s.shape for s in scaled}) > 1:  # MTCNN pads a mixed batch; run such frames one by one
      results = [self._mtcnn.detect_faces(s, min_face_size=self.min_face) for s in scaled]
    else:
      results = self._mtcnn.detect_faces(list(scaled), min_face_size=self.min_face)
    out = []
    for faces, scale in zip(results, scales):
      rows = [(x, y, x + w, y + h, float(f["confidence"])) for f in faces for x, y, w, h in [f["box"]]]
      boxes = np.array(rows, np.float64).reshape(-1, 5)
      boxes[:, :4] /= scale
      out.append(boxes)
    return out


def _shrink(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  height, width = frame.shape[:2]
  scale = min(1.0, max_side / max(height, width))
  if scale == 1.0:
    return np.ascontiguousarray(frame), 1.0
  from PIL import Image
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR)), scale
