"""Run a model on new clips: frame folders or video files -> top-k labels with probabilities.

Each input is read by evaluation's own functions (``pipeline.test_clip``: the same JPEG decoder,
the test sampler's 16 segment middles with the last frame repeated for short clips,
``--config.eval_num_clips`` > 1 averaging several temporal offsets, the same resize), so a clip's
probabilities here equal those of ``--mode=evaluate``. Inputs are batched, so a folder of 1,000
clips runs at the model's throughput (inputs are read by a thread pool while the accelerator works). One JSON line per input:
``{"input", "label", "probs": {class: p}, "top_k": [[class, p], ...]}``; an unreadable input gives
``{"input", "error"}`` and the others go on. Video files (mp4, avi, mov, mkv, webm) are decoded
with PyAV, an optional extra (``pip install av``). With ``faces`` (``dferclip_jax.faces``) the
sampled frames are cropped to the face first (``main.py --mode=predict --faces=true``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np

from dferclip_jax import storage, timeline as timeline_lib, video_stream
from dferclip_jax.data.frames import VIDEO_SUFFIXES


class InputError(ValueError):
  """An input that cannot be read as a clip."""


def expand_inputs(inputs: Sequence[str]) -> list[str]:
  """Paths as given; a ``@file`` entry reads one path per line from ``file``."""
  out = []
  for item in inputs:
    if item.startswith("@"):
      out += [line.strip() for line in storage.path(item[1:]).read_text().splitlines() if line.strip()]
    else:
      out.append(item)
  return out


def _sampled_video_frames(path: str, num_frames: int, num_clips: int):
  """-> (frame count, decode(indices)) of a video file, holding only the test sampler's frames:
  the video streams through the decoder once (video_stream), never whole in memory."""
  import tensorflow as tf
  from dferclip_jax.data import sampling
  try:
    info = video_stream.probe(path)
    wanted = sampling.test_indices(info.num_frames, num_segments=num_frames,
                                   num_clips=num_clips).numpy().reshape(-1)
    kept = video_stream.selected_frames(video_stream.decoded_frames(path), wanted)
  except video_stream.VideoError as e:
    raise InputError(str(e)) from None
  order = sorted(kept)
  position = {f: i for i, f in enumerate(order)}
  stack = tf.constant(np.stack([kept[f] for f in order]))
  return info.num_frames, lambda i: tf.gather(stack, [position[int(x)] for x in np.asarray(i)])


def read_video_clip(path: str, image_size: int, num_frames: int, num_clips: int = 1, faces=None):
  """-> uint8 [T, S, S, 3] (or [K, T, S, S, 3]): the clip exactly as evaluation reads it.

  A frame folder goes through evaluation's own source, decoder (libjpeg's accurate DCT), test
  sampler and resize (``pipeline.test_clip``); a video file's decoded frames go through the same
  sampler and resize. With ``faces`` (a ``FaceStep``) the sampled frames are face crops before the
  resize, and the return value is ``(clip, faces summary)``.
  """
  import tensorflow as tf
  from dferclip_jax.data import pipeline, sources
  kwargs = dict(num_frames=num_frames, num_clips=num_clips, image_size=image_size)
  summary = {}

  def read(decode, count):
    if faces is not None:
      decode = _cropping_faces(decode, faces, path, image_size, summary)
    clip = pipeline.test_clip(decode, count, **kwargs).numpy()
    return clip if faces is None else (clip, summary)

  if os.path.isdir(path):
    source, count, handle = _frame_folder(path)
    try:
      return read(lambda i: sources.decode_frames(*source.frames(handle, i)), count)
    except (tf.errors.OpError, ValueError):
      try:
        source.check_clip(0)  # names the frame at fault
      except sources.ClipDataError as bad:
        raise InputError(str(bad)) from None
      raise
  if os.path.isfile(path):
    if not path.lower().endswith(VIDEO_SUFFIXES):
      raise InputError(f"{path}: not a frame folder or a video file ({', '.join(VIDEO_SUFFIXES)})")
    count, decode = _sampled_video_frames(path, num_frames, num_clips)
    return read(decode, count)
  raise InputError(f"{path}: no such file or folder")


def _frame_folder(path: str):
  """A frame folder as evaluation's source -> (source, frame count, handle)."""
  from dferclip_jax.data import frames as frames_lib, sources
  from dferclip_jax.data.records import ClipRecord
  names = frames_lib.list_frames(path)
  if not names:
    raise InputError(f"{path}: the folder holds no {frames_lib.FRAME_SUFFIXES_TEXT} frames")
  source = sources.FolderSource([ClipRecord(os.path.abspath(path), len(names), 0, source=path)])
  count, _, handle = source.fetch(0)
  return source, int(count), handle  # a tensor's count would turn the windows' times into tensors


def _cropping_faces(decode, faces, path: str, size: int, summary: dict):
  """``decode`` followed by the face step on the decoded frames; fills ``summary``."""
  from dferclip_jax.faces import extract

  def decode_faces(indices):
    frames = decode(indices).numpy()[None]
    try:
      crops, found = faces.crop_sampled(path, frames, indices.numpy()[None], size)
    except extract.FaceError as e:
      raise InputError(str(e)) from None
    summary.update(found)
    return crops[0]
  return decode_faces


def predict(model, variables, inputs: Sequence[str], class_names: Sequence[str], *, batch_size: int = 32,
            top_k: int = 3, num_clips: int = 1, workers: int = 8, faces=None,
            keep_clips: bool = False) -> Iterator[dict]:
  """Yields one result dict per input, in input order; with ``faces`` (a ``FaceStep``) the
  sampled frames are face crops and each result gains a ``faces`` summary. ``keep_clips``: each
  result also holds ``clip``, the uint8 frames the model saw (no second read, no second detection)."""
  from dferclip_jax.inference import clip_probabilities, jit_class_text_features
  image_size = model.clip_config.vision_config.image_size
  text_features = jit_class_text_features(model)(variables)  # once, not per batch
  probs_fn = jax.jit(lambda v, t, x: clip_probabilities(model, v, x, t))
  names = list(class_names) or [str(i) for i in range(model.num_classes)]
  top_k = max(1, min(top_k, len(names)))

  face_summaries = {}

  def load(path):
    try:
      clip = read_video_clip(path, image_size, model.num_frames, num_clips, faces=faces)
      if faces is not None:
        clip, face_summaries[path] = clip
      return path, clip, None
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
        if p in face_summaries:
          results[p]["faces"] = face_summaries.pop(p)
    if keep_clips:
      for p, clip in good:
        results[p]["clip"] = clip
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
  if path not in (None, "-") and not storage.is_remote(path):
    storage.path(path).parent.mkdir(parents=True, exist_ok=True)
  out = sys.stdout if path in (None, "-") else storage.path(path).open("w")
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


# ---------------------------------------------------------------------------- timeline


def _timeline_frames(path: str, frames_fps: float):
  """-> (frame count, fps, iterator of (index, frame) in order) for a video file or a frame
  folder; a folder's frames are decoded one at a time, as they are asked for."""
  from dferclip_jax.data import sources
  if os.path.isdir(path):
    source, count, handle = _frame_folder(path)

    def folder_frames():
      for i in range(count):
        yield i, sources.decode_frames(*source.frames(handle, np.array([i], np.int32))).numpy()[0]
    return count, frames_fps, folder_frames()
  if os.path.isfile(path):
    if not path.lower().endswith(VIDEO_SUFFIXES):
      raise InputError(f"{path}: not a frame folder or a video file ({', '.join(VIDEO_SUFFIXES)})")
    try:
      info = video_stream.probe(path)
    except video_stream.VideoError as e:
      raise InputError(str(e)) from None
    return info.num_frames, info.fps, enumerate(video_stream.decoded_frames(path))
  raise InputError(f"{path}: no such file or folder")


def predict_timeline(model, variables, inputs: Sequence[str], class_names: Sequence[str], *,
                     window_s: float = timeline_lib.DEFAULT_WINDOW_S,
                     stride_s: float = timeline_lib.DEFAULT_STRIDE_S,
                     frames_fps: float = timeline_lib.DEFAULT_FRAMES_FPS, batch_size: int = 32,
                     top_k: int = 3, num_clips: int = 1, faces=None) -> Iterator[dict]:
  """Yields one result per window of each input, in order ({"input", "start_s", "end_s",
  "label", "probs", "top_k"}), or one {"input", "error"} for an input that cannot be read.
  Windows are batched (``batch_size``), across inputs' boundaries too.

  ``faces`` (a ``FaceStep``): the face is detected and followed once over the whole input (a
  detection about every 0.2 s, boxes between interpolated and smoothed), each window's sampled
  frames are cropped with its boxes, and each line gains ``face_box``, the box at the window's
  middle frame."""
  import tensorflow as tf
  from dferclip_jax.data import augment
  from dferclip_jax.faces import extract
  from dferclip_jax.inference import clip_probabilities, jit_class_text_features
  image_size = model.clip_config.vision_config.image_size
  text_features = jit_class_text_features(model)(variables)
  probs_fn = jax.jit(lambda v, t, x: clip_probabilities(model, v, x, t))
  names = list(class_names) or [str(i) for i in range(model.num_classes)]
  top_k = max(1, min(top_k, len(names)))

  def resizer(boxes):
    def resize(index, frame):
      if boxes is not None:
        frame = extract.crop(frame, boxes[index], image_size)
      return augment.resize_clip_uint8(tf.constant(frame[None]), image_size).numpy()[0]
    return resize

  def run(pending):
    batch = np.stack([clip for _, clip in pending])
    if len(batch) < batch_size:  # one compiled shape for every batch
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)])
    probs = np.asarray(probs_fn(variables, text_features, batch))[:len(pending)]
    for (meta, _), row in zip(pending, probs):
      order = np.argsort(-row)[:top_k]
      yield {**meta, "label": names[order[0]], "probs": {n: float(row[i]) for i, n in enumerate(names)},
             "top_k": [[names[i], float(row[i])] for i in order]}

  pending = []
  for path in inputs:
    try:
      count, fps, frames = _timeline_frames(path, frames_fps)
      boxes = _face_boxes(path, faces, fps, count) if faces is not None else None
      windows = timeline_lib.make_windows(count, fps, window_s, stride_s)
      indices = [timeline_lib.window_indices(w, model.num_frames, num_clips) for w in windows]
      for w, clip in timeline_lib.window_clips(frames, indices, resizer(boxes)):
        meta = {"input": path, "start_s": windows[w].start / fps, "end_s": windows[w].end / fps}
        if boxes is not None:
          meta["face_box"] = [int(v) for v in boxes[(windows[w].start + windows[w].end - 1) // 2]]
        pending.append((meta, clip if num_clips > 1 else clip[0]))
        if len(pending) == batch_size:
          yield from run(pending)
          pending = []
    except (InputError, video_stream.VideoError, ValueError) as e:
      yield from run(pending) if pending else ()
      pending = []
      yield {"input": path, "error": str(e)}
  if pending:
    yield from run(pending)


def _face_boxes(path: str, faces, fps: float, count: int) -> np.ndarray:
  """One pass of face detection over the whole input -> crop boxes [count, 4]."""
  from dferclip_jax.faces import extract
  settings = dataclasses.replace(faces.settings,
                                 detect_every=max(faces.settings.detect_every, round(fps / 5)))
  try:
    track = extract.plan(path, extract.detect_clip(path, faces.detector, settings), settings)
  except extract.FaceError as e:
    raise InputError(str(e)) from None
  if len(track.boxes) != count:
    raise InputError(f"{path}: {len(track.boxes)} frames when detecting faces, {count} when "
                     f"counting them")
  return track.boxes


def write_timeline_files(results: Iterable[dict], out_dir, class_names: Sequence[str]) -> Iterator[dict]:
  """Passes ``results`` through; for each input with windows, writes ``<input>.csv`` and
  ``<input>.png`` (probabilities over time, top class shaded) into ``out_dir``."""
  rows: list[dict] = []

  def finish():
    if rows:
      name = timeline_lib.slug(rows[0]["input"])
      directory = storage.path(out_dir)
      timeline_lib.write_csv(directory / f"{name}.csv", rows, class_names)
      timeline_lib.save_plot(directory / f"{name}.png", rows, class_names, rows[0]["input"])

  for r in results:
    if rows and r["input"] != rows[0]["input"]:
      finish()
      rows = []
    if "error" not in r:
      rows.append(r)
    yield r
  finish()
