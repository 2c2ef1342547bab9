"""Video files read with bounded memory: frames are decoded one at a time, in order, and only the
ones asked for are kept (and, for a timeline, resized at once and dropped when no window needs them
any more). Nothing ever holds a video's frames at full resolution.

The bound: one decoded frame at full resolution, plus the frames kept. A whole-video prediction
keeps ``num_frames x num_clips`` full-resolution frames (16 frames of 1080p: 100 MB); a timeline
keeps, resized to the model's input, the sampled frames of the windows still open (with a 2 s
window and a 1 s stride, 3 windows of 16 frames of 224 x 224: 7 MB).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

# A video longer than this many frames is refused before anything is decoded (10 h at 60 fps).
MAX_FRAMES = 10 * 3600 * 60


class VideoError(ValueError):
  """A file that is not a readable video."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  num_frames: int
  fps: float
  width: int
  height: int

  @property
  def duration_s(self) -> float:
    return self.num_frames / self.fps


def _open(path: str):
  try:
    import av
  except ImportError:
    raise VideoError(f"{path}: reading video files needs PyAV (pip install -r requirements-video.txt)") \
        from None
  try:
    return av.open(path)
  except Exception as e:  # PyAV raises many types (InvalidDataError, FileNotFoundError, ...)
    raise VideoError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None


def probe(path: str) -> VideoInfo:
  """Frame count (packets of the first video stream, demuxed without decoding), frame rate and
  size of ``path``."""
  with _open(path) as container:
    if not container.streams.video:
      raise VideoError(f"{path}: the file holds no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    try:
      count = 0
      for packet in container.demux(stream):
        count += packet.size > 0
        if count > MAX_FRAMES:
          raise VideoError(f"{path}: longer than {MAX_FRAMES} frames, the limit this reader takes")
    except VideoError:
      raise
    except Exception as e:  # noqa: BLE001 -- a corrupt container: PyAV's many error types
      raise VideoError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
    width, height = stream.codec_context.width, stream.codec_context.height
  if count == 0:
    raise VideoError(f"{path}: the video has no frames")
  if not fps > 0:
    raise VideoError(f"{path}: the video states no frame rate")
  return VideoInfo(count, fps, width, height)


def decoded_frames(path: str) -> Iterator[np.ndarray]:
  """Every frame of ``path`` in order, uint8 [H, W, 3], one at a time."""
  with _open(path) as container:
    try:
      for frame in container.decode(video=0):
        yield frame.to_ndarray(format="rgb24")
    except Exception as e:  # noqa: BLE001 -- a corrupt stream part way through
      raise VideoError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None


def selected_frames(frames: Iterable[np.ndarray], wanted: Sequence[int],
                    transform: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[int, np.ndarray]:
  """The frames at the ``wanted`` indices (each through ``transform``), read in one pass that stops
  after the last one."""
  wanted = set(int(i) for i in wanted)
  last = max(wanted)
  kept, seen = {}, 0
  for index, frame in enumerate(frames):
    seen = index + 1
    if index in wanted:
      kept[index] = transform(frame) if transform else frame
    if index >= last:
      break
  missing = wanted - set(kept)
  if missing:
    raise VideoError(f"the video ended before frame {min(missing)} (it decoded to {seen} frames, "
                     f"fewer than its container said)")
  return kept
