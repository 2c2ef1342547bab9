"""Writing the small video files the tests read (PyAV, requirements-video.txt)."""

import itertools

import pytest


def write_video(path, frames, *, fps: float = 8, codec: str = "mpeg4", pix_fmt: str = "yuv420p",
                options: dict | None = None) -> None:
  """``frames``: uint8 [H, W, 3] arrays (an array of them or any iterable, read once)."""
  av = pytest.importorskip("av")
  frames = iter(frames)
  first = next(frames)
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], pix_fmt
    if options:
      stream.options = options
    for frame in itertools.chain([first], frames):
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
