"""Frames/s of the face step (decode, MTCNN detection, tracking, crop, JPEG write), detecting on
every frame vs every k-th.

  python benchmarks/faces.py [--video FILE] [--every 1,2,4,8] [--repeats 2]

Without ``--video`` it writes (to a temporary folder) a 640x360 video of ``--frames`` frames in
which scikit-image's astronaut portrait drifts across a grey canvas (needs scikit-image, a test
dependency). One JSON line per ``--every``: wall-clock and CPU-time frames/s of the best of
``--repeats`` runs. On a shared machine the wall-clock rate swings with the neighbours' load.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time

from absl import app, flags

import common  # noqa: F401  (sets sys.path and quiet logging first)

from dferclip_jax.faces import detector as detector_lib, extract

flags.DEFINE_string("video", None, "Video file or frame folder to time (default: generated).")
flags.DEFINE_list("every", ["1", "2", "4", "8"], "Detect on every k-th frame, one run per k.")
flags.DEFINE_integer("frames", 48, "Frames of the generated video.")
flags.DEFINE_integer("repeats", 2, "Runs per setting; the fastest counts.")
flags.DEFINE_integer("size", 224, "Crop side.")
FLAGS = flags.FLAGS


def make_video(path: str, num_frames: int, height: int = 360, width: int = 640) -> None:
  import av
  import numpy as np
  from PIL import Image
  from skimage import data
  portrait = Image.fromarray(data.astronaut())
  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for t in range(num_frames):
      side = 220 + t
      canvas = np.full((height, width, 3), 90, np.uint8)
      x, y = 40 + 4 * t, 30 + t % 20
      canvas[y:y + side, x:x + side] = np.asarray(portrait.resize((side, side)))
      for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv):
  del argv
  work = tempfile.mkdtemp(prefix="faces_bench_")
  video = FLAGS.video or os.path.join(work, "portrait.mp4")
  if not FLAGS.video:
    make_video(video, FLAGS.frames)
  detector = detector_lib.Detector()
  detector.detect([next(extract.iter_frames(video))])  # build the networks before timing
  for every in map(int, FLAGS.every):
    settings = extract.FaceSettings(size=FLAGS.size, detect_every=every)
    best = None
    for _ in range(FLAGS.repeats):
      wall, cpu = time.perf_counter(), cpu_seconds()
      record = extract.extract_clip(video, os.path.join(work, f"out_{every}"), detector, settings)
      wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
      if best is None or wall < best[0]:
        best = (wall, cpu)
    frames = record["frames"]
    print(json.dumps({"benchmark": "faces", "video": os.path.basename(video), "frames": frames,
                      "detect_every": every, "seconds": round(best[0], 3),
                      "frames_per_s": round(frames / best[0], 1),
                      "frames_per_cpu_s": round(frames / best[1], 1),
                      "cpu_cores": len(os.sched_getaffinity(0)), "face_frames": record["face_frames"]}))


if __name__ == "__main__":
  app.run(main)
