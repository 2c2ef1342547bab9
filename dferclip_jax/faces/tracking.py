"""One face through a clip: per-frame detections -> one square crop box per frame (pure numpy).

The face followed is the largest confident detection of the first frame that has one; on each
later examined frame it continues with the detection whose centre is nearest the previous box,
if that centre moved at most ``max_jump`` box sides per frame since the last sighting (else the
frame counts as a miss: another face, not ours). Frames not examined or missed get boxes interpolated linearly from the
neighbouring sightings (held constant before the first and after the last); centre and size are
then averaged over a centred window of ``smooth`` frames, so the crop does not jitter.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Track:
  boxes: np.ndarray      # [T, 4] int square crops (x0, y0, x1, y1) in source pixels; may overhang
  seen: np.ndarray       # [T] bool: the face was detected here or between two sightings in a row

  @property
  def face_frames(self) -> int:
    return int(self.seen.sum())


def follow(detections: Sequence[np.ndarray | None], *, min_confidence: float,
           max_jump: float) -> np.ndarray | None:
  """Per frame the followed face's (x0, y0, x1, y1), NaN where not seen; None if no face at all.

  ``detections[t]`` is None for a frame that was not examined, else [n, 5] boxes+confidence.
  """
  chosen = np.full((len(detections), 4), np.nan)
  previous, last_seen = None, 0
  for t, found in enumerate(detections):
    if found is None:
      continue
    found = found[found[:, 4] >= min_confidence, :4]
    if not len(found):
      continue
    if previous is None:
      areas = (found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1])
      box = found[np.argmax(areas)]
    else:
      distances = np.hypot(*(_centre(found) - _centre(previous[None])).T)
      nearest = int(np.argmin(distances))
      if distances[nearest] > max_jump * _side(previous) * (t - last_seen):
        continue
      box = found[nearest]
    chosen[t] = previous = box
    last_seen = t
  return None if previous is None else chosen


def plan_crops(detections: Sequence[np.ndarray | None], *, margin: float, smooth: int,
               min_confidence: float, max_jump: float) -> Track | None:
  """Detections -> the followed face's square crop box on every frame; None if no face."""
  chosen = follow(detections, min_confidence=min_confidence, max_jump=max_jump)
  if chosen is None:
    return None
  frames = np.arange(len(detections))
  known = ~np.isnan(chosen[:, 0])
  centre, size = _centre(chosen[known]), np.max(chosen[known, 2:] - chosen[known, :2], axis=1)
  # (cx, cy, side) on every frame: linear between sightings, held at the ends, then smoothed.
  filled = np.stack([np.interp(frames, frames[known], v) for v in (*centre.T, size)], axis=1)
  filled = _moving_average(filled, smooth)
  side = filled[:, 2] * (1 + 2 * margin)
  x0 = np.round(filled[:, 0] - side / 2)
  y0 = np.round(filled[:, 1] - side / 2)
  side = np.maximum(np.round(side), 1)
  boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int64)
  return Track(boxes=boxes, seen=_seen(detections, known))


def _seen(detections, known: np.ndarray) -> np.ndarray:
  """Sightings, plus the frames between two consecutive examined frames that both had the face."""
  seen = known.copy()
  examined = [t for t, d in enumerate(detections) if d is not None]
  for a, b in zip(examined, examined[1:]):
    if known[a] and known[b]:
      seen[a:b + 1] = True
  return seen


def _centre(boxes: np.ndarray) -> np.ndarray:
  return (boxes[:, :2] + boxes[:, 2:4]) / 2


def _side(box: np.ndarray) -> float:
  return float(max(box[2] - box[0], box[3] - box[1]))


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
  """Centred mean over ``window`` frames (odd; even is rounded up), edges padded by repetition."""
  half = max(0, window // 2)
  if half == 0 or len(values) < 2:
    return values
  padded = np.pad(values, ((half, half), (0, 0)), mode="edge")
  kernel = np.ones(2 * half + 1) / (2 * half + 1)
  return np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(values.shape[1])], 1)
