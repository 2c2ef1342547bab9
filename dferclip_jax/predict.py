"""Run a model on new clips: frame folders or video files -> top-k labels with probabilities.

Each input is sampled as the test loader samples (16 segment middles, the last frame repeated for
short clips; ``--config.eval_num_clips`` > 1 averages several temporal offsets), resized as the
test transform resizes, and batched, so a folder of 1,000 clips runs at the model's throughput
(inputs are read by a thread pool while the accelerator works). One JSON line per input:
``{"input", "label", "probs": {class: p}, "top_k": [[class, p], ...]}``; an unreadable input gives
``{"input", "error"}`` and the others go on. Video files (mp4, avi, mov, mkv, webm) are decoded
with PyAV, an optional extra (``pip install av``).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class InputError(ValueError):
  """An input that cannot be read as a clip."""


def expand_inputs(inputs: Sequence[str]) -> list[str]:
  """Paths as given; a ``@file`` entry reads one path per line from ``file``."""
  out = []
  for item in inputs:
    if item.startswith("@"):
      out += [line.strip() for line in Path(item[1:]).read_text().splitlines() if line.strip()]
    else:
      out.append(item)
  return out


def _decode_frames(paths: Sequence[str]) -> np.ndarray:
  import tensorflow as tf
  frames = []
  for p in paths:
    try:
      image = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False).numpy()
    except tf.errors.OpError as e:
      raise InputError(f"{p}: not a readable image ({e.message.splitlines()[0]})") from None
    if frames and image.shape != frames[0].shape:  # resize to the first frame's size, as training does
      image = tf.cast(tf.round(tf.image.resize(image, frames[0].shape[:2])), tf.uint8).numpy()
    frames.append(image)
  return np.stack(frames)


def _video_frames(path: str) -> np.ndarray:
  try:
    import av
  except ImportError:
    raise InputError(f"{path}: reading video files needs PyAV (pip install av)") from None
  try:
    with av.open(path) as container:
      frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  except Exception as e:  # PyAV raises many types (InvalidDataError, FileNotFoundError, ...)
    raise InputError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
  if not frames:
    raise InputError(f"{path}: the video has no frames")
  return np.stack(frames)


def load_clip(path: str, image_size: int, num_frames: int, num_clips: int = 1) -> np.ndarray:
  """-> uint8 [T, S, S, 3] (or [K, T, S, S, 3]) sampled and resized as the test pipeline does."""
  from dferclip_jax.data import augment, frames as frames_lib, sampling
  if os.path.isdir(path):
    names = frames_lib.list_frames(path)
    if not names:
      raise InputError(f"{path}: the folder holds no .jpg/.jpeg/.png frames")
    indices = sampling.test_indices(len(names), num_segments=num_frames, num_clips=num_clips).numpy()
    unique = sorted(set(indices.reshape(-1).tolist()))  # decode each sampled frame once
    decoded = dict(zip(unique, _decode_frames([os.path.join(path, names[i]) for i in unique])))
    video = np.stack([np.stack([decoded[i] for i in row]) for row in indices])
  elif os.path.isfile(path):
    if not path.lower().endswith(VIDEO_SUFFIXES):
      raise InputError(f"{path}: not a frame folder or a video file ({', '.join(VIDEO_SUFFIXES)})")
    all_frames = _video_frames(path)
    indices = sampling.test_indices(len(all_frames), num_segments=num_frames, num_clips=num_clips).numpy()
    video = all_frames[indices]
  else:
    raise InputError(f"{path}: no such file or folder")
  clips = [augment.quantize(augment.resize_clip_255(clip, image_size)).numpy() for clip in video]
  return clips[0] if num_clips == 1 else np.stack(clips)


def predict(model, variables, inputs: Sequence[str], class_names: Sequence[str], *, batch_size: int = 32,
            top_k: int = 3, num_clips: int = 1, workers: int = 8) -> Iterator[dict]:
  """Yields one result dict per input, in input order."""
  from dferclip_jax.train.train_step import class_text_features, clip_probabilities
  image_size = model.clip_config.vision_config.image_size
  text_features = jax.jit(lambda v: class_text_features(model, v))(variables)  # once, not per batch
  probs_fn = jax.jit(lambda v, t, x: clip_probabilities(model, v, x, t))
  names = list(class_names) or [str(i) for i in range(model.num_classes)]
  top_k = max(1, min(top_k, len(names)))

  def load(path):
    try:
      return path, load_clip(path, image_size, model.num_frames, num_clips), None
    except InputError as e:
      return path, None, str(e)

  def flush(pending):
    good = [(p, clip) for p, clip, _ in pending if clip is not None]
    results = {}
    if good:
      batch = np.stack([clip for _, clip in good])
      padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)]) \
          if len(batch) < batch_size else batch  # one compiled shape for every batch
      probs = np.asarray(probs_fn(variables, text_features, padded))[:len(good)]
      for (p, _), row in zip(good, probs):
        order = np.argsort(-row)[:top_k]
        results[p] = {"input": p, "label": names[order[0]],
                      "probs": {n: float(row[i]) for i, n in enumerate(names)},
                      "top_k": [[names[i], float(row[i])] for i in order]}
    for p, clip, error in pending:
      yield results[p] if clip is not None else {"input": p, "error": error}

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = []
    for item in pool.map(load, inputs):
      pending.append(item)
      if len(pending) == batch_size:
        yield from flush(pending)
        pending = []
    if pending:
      yield from flush(pending)


def write_jsonl(results: Iterable[dict], path: str | None) -> tuple[int, int]:
  """Writes results as JSON lines (stdout when path is None or '-') -> (predicted, failed)."""
  import sys
  out = sys.stdout if path in (None, "-") else open(path, "w")
  done = failed = 0
  try:
    for r in results:
      out.write(json.dumps(r) + "\n")
      out.flush()
      failed += "error" in r
      done += "error" not in r
  finally:
    if out is not sys.stdout:
      out.close()
  return done, failed
