"""Windows per second and peak memory of ``--mode=predict --timeline=true`` on a 1-minute
1280 x 720 video at 30 fps (1,800 frames, generated here), with the README demo's trained model
(tests/fixtures/demo_model) or --checkpoint.

  python benchmarks/timeline.py [--checkpoint DIR] [--minutes 1] [--fps 30]

Runs main.py in a child process (so its peak resident memory is its own) and prints one JSON
line: frames, windows, seconds, windows_per_s, frames_per_s (decode included) and peak_rss_mib,
beside the bytes the video's frames would take decoded whole (what predict held before it streamed).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

import common  # noqa: F401  (sets sys.path first)

REPO = Path(__file__).resolve().parents[1]
flags.DEFINE_string("checkpoint", str(REPO / "tests" / "fixtures" / "demo_model"), "The model.")
flags.DEFINE_float("minutes", 1.0, "Video length.")
flags.DEFINE_integer("fps", 30, "Video frame rate.")


def write_video(path: Path, frames: int, fps: int) -> None:
  import av
  import numpy as np
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
    frame = np.zeros((720, 1280, 3), np.uint8)
    for i in range(frames):
      frame[:] = (i * 3) % 256
      frame[:, (i * 11) % 1280:, 1] = 200
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def main(argv):
  del argv
  f = flags.FLAGS
  frames = int(f.minutes * 60 * f.fps)
  with tempfile.TemporaryDirectory() as tmp:
    video, out = Path(tmp) / "video.mp4", Path(tmp) / "timeline.jsonl"
    write_video(video, frames, f.fps)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "main.py"), "--mode=predict", "--config=configs/demo.py",
                    f"--checkpoint={f.checkpoint}", f"--inputs={video}", "--timeline=true",
                    f"--output={out}", "--config.progress_bars=False"], cwd=REPO, check=True,
                   capture_output=True)
    seconds = time.perf_counter() - start
    windows = len(out.read_text().splitlines())
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  print(json.dumps({"device": common.device_name(), "frames": frames, "windows": windows,
                    "seconds": round(seconds, 2), "windows_per_s": round(windows / seconds, 2),
                    "frames_per_s": round(frames / seconds, 1), "peak_rss_mib": round(peak),
                    "decoded_whole_mib": round(frames * 1280 * 720 * 3 / 2 ** 20)}))


if __name__ == "__main__":
  app.run(main)
