"""Clips/s of the training input pipeline: sampling, JPEG decode, DFEW augmentation, batching.

  python benchmarks/input_pipeline.py --list FILE [--root DIR] --batch 48 --steps 10
  python benchmarks/input_pipeline.py [--data_dir DIR] [--clips 1000]   # generated data

Without ``--list`` it first writes (once, cached in ``--data_dir``) ``--clips`` synthetic clips of
24 JPEG frames at 224x224 and reads them all. Output: one JSON line with ``clips_per_s``, the
CPU cores the process may use, clips/s per core, and how many such cores it takes to feed a
ViT-B/32 DFER-CLIP train step on an H100 (about 1,000 clips/s of [16, 224, 224, 3]). On a shared
machine the wall-clock rate swings with the neighbours' load; ``clips_per_cpu_s`` (clips per
second of CPU time the process used) is the steadier per-core figure.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

from absl import app, flags

import common  # noqa: F401  (sets sys.path and quiet logging first)

from dferclip_jax.data import pipeline, sources, synthetic

flags.DEFINE_string("list", None, "Annotation list to read (default: generated data).")
flags.DEFINE_string("root", None, "Root of the list's relative paths (default: cwd).")
flags.DEFINE_string("data_dir", os.path.join(tempfile.gettempdir(), "dferclip_input_bench"),
                    "Where generated data is cached.")
flags.DEFINE_integer("clips", 1000, "Generated clips (multiple of 10), without --list.")
flags.DEFINE_integer("batch", 48, "Clips per batch.")
flags.DEFINE_integer("steps", 10, "Timed batches (after --warmup).")
flags.DEFINE_integer("warmup", 2, "Untimed batches first (pipeline start, autotuning).")
flags.DEFINE_integer("frames", 16, "Frames per clip (segments).")
flags.DEFINE_integer("image_size", 224, "Output frame size.")
flags.DEFINE_string("augmentation", "dfew", "dfew, ferv39k, mafw or none.")
flags.DEFINE_integer("num_classes", 7, "Classes the list's labels index (for validation).")

# What a ViT-B/32 DFER-CLIP train step consumes on one H100 (clips of 16 frames at 224^2).
H100_VITB32_CLIPS_PER_S = 1000.0


def _generated_list(data_dir: str, clips: int) -> tuple[str, str, int]:
  if clips < 10 or clips % 10:
    raise app.UsageError(f"--clips={clips}: expected a multiple of 10")
  made = synthetic.make_synthetic_dataset(
      data_dir, num_classes=10, clips_per_class=clips // 10, frames_range=(24, 24),
      image_size=224, seed=0, test_fraction=0.1)
  both = os.path.join(made.root, "all.txt")  # train and test: every generated clip is read
  with open(both, "w") as out:
    for path in (made.train_list, made.test_list):
      with open(path) as f:
        out.write(f.read())
  return both, made.root, 10


def main(argv):
  del argv
  f = flags.FLAGS
  generated = f.list is None
  start = time.perf_counter()
  if generated:
    list_file, root, num_classes = _generated_list(f.data_dir, f.clips)
  else:
    list_file, root, num_classes = f.list, f.root, f.num_classes
  prepare_s = time.perf_counter() - start
  source, _ = sources.open_annotation_list(list_file, num_classes, root=root)
  batches = pipeline.train_batches(source, augmentation=f.augmentation, batch_size=f.batch,
                                   image_size=f.image_size, num_frames=f.frames, seed=0)
  for _ in range(f.warmup):
    batch = next(batches)
  cpu_start, start = _cpu_seconds(), time.perf_counter()
  for _ in range(f.steps):
    batch = next(batches)
  elapsed = time.perf_counter() - start
  cpu = _cpu_seconds() - cpu_start
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  clips = f.steps * f.batch
  clips_per_s = clips / elapsed
  per_core = clips_per_s / cores
  common.emit({
      "benchmark": "input_pipeline",
      "clips_per_s": round(clips_per_s, 1),
      "cores": cores,
      "clips_per_s_per_core": round(per_core, 1),
      # CPU time the process spent (all threads): robust to cores that other work shares.
      "clips_per_cpu_s": round(clips / cpu, 1),
      "cpu_utilisation": round(cpu / (elapsed * cores), 2),
      "batch": f.batch,
      "frames": f.frames,
      "image_size": f.image_size,
      "batch_shape": list(batch["video"].shape),
      "dtype": str(batch["video"].dtype),
      "augmentation": f.augmentation,
      "steps": f.steps,
      "clips_in_list": len(source),
      "data": "generated 24 JPEG frames of 224x224 per clip" if generated else list_file,
      "data_prepare_s": round(prepare_s, 1),
      "h100_vitb32_clips_per_s": H100_VITB32_CLIPS_PER_S,
      "cores_to_feed_h100_vitb32": round(H100_VITB32_CLIPS_PER_S / per_core, 1),
      "cores_to_feed_h100_vitb32_by_cpu_time": round(H100_VITB32_CLIPS_PER_S * cpu / clips, 1),
  })


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
  app.run(main)
