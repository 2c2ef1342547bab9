"""Which frames of a clip are read: the official segment sampler, as TensorFlow ops.

A clip of ``n`` frames (``n`` = the count its list declares; frames in natural name order,
``frames.list_frames``) is cut into ``num_segments`` segments; each contributes ``duration``
consecutive frames starting at its offset (a run that reaches the last frame repeats it). DFER-CLIP uses 16 segments of duration 1.

Train (a fresh random draw per clip and epoch), with ``avg = (n - duration + 1) // num_segments``:
  * ``avg > 0``: offset of segment ``i`` = ``i * avg + randint(avg)``, one frame per segment.
  * else, ``n > num_segments`` (only reachable with ``duration > 1``): sorted
    ``randint(n - duration + 1)`` draws.
  * else: ``0, 1, ..., n - 1`` and then the last frame repeated.
Test (deterministic): if ``n > num_segments + duration - 1``, with
``tick = (n - duration + 1) / num_segments`` the offsets are ``int(tick / 2 + tick * i)``, the
middle of each segment; otherwise the same repeat-the-last-frame padding.

Several test clips (``num_clips = K > 1``, our addition for multi-clip evaluation): clip ``c``
takes the point at fraction ``(c + 0.5) / K`` of each segment, ``int(tick * (c + 0.5) / K + tick
* i)``, so K=2 reads the quarter and three-quarter points and K=3 the 1/6, 1/2 and 5/6 points;
K=1 is exactly the official middle. Clips too short for segments give K identical clips.

Short clips (``short_clips``): ``"edge"`` (default, DFER-CLIP's loader) pads as above;
``"first"`` is HESP's loader (datasets/dataset_MAFW.py:72 and 80: ``np.zeros``): every
segment reads frame 0, so such a clip becomes a still of its first frame.

All functions take scalar tensors (or Python ints) and run eagerly or inside tf.data; the random
draws are stateless functions of the seed, so a clip's frames depend only on (seed, clip).
"""

from __future__ import annotations

import tensorflow as tf

from dferclip_jax.data import seeds


SHORT_CLIPS = ("edge", "first")


def train_indices(num_frames, seed, *, num_segments: int = 16, duration: int = 1,
                  short_clips: str = "edge") -> tf.Tensor:
  """Frame indices for one training clip: int32 ``[num_segments * duration]``.

  ``seed``: a stateless seed, shape [2] int64 (the clip key's ``seeds.Clip.SAMPLING`` stream).
  """
  _check(num_segments, duration, short_clips)
  n = tf.cast(num_frames, tf.int32)
  seed = tf.cast(seed, tf.int64)
  span = n - duration + 1
  average = span // num_segments
  segments = tf.range(num_segments, dtype=tf.int32)
  # Both random branches are drawn and the valid one selected: cheaper than a cond, and each
  # branch keeps its own stream (seeds.Sampling).
  jitter = tf.random.stateless_uniform([num_segments], seed=seeds.sub(seed, seeds.Sampling.JITTER),
                                       minval=0, maxval=tf.maximum(average, 1), dtype=tf.int32)
  spread = segments * average + jitter
  scattered = tf.sort(tf.random.stateless_uniform(
      [num_segments], seed=seeds.sub(seed, seeds.Sampling.SCATTER), minval=0,
      maxval=tf.maximum(span, 1), dtype=tf.int32))
  offsets = tf.where(average > 0, spread,
                     tf.where(n > num_segments, scattered, _short(n, num_segments, short_clips)))
  return _expand(offsets, n, duration)


def test_indices(num_frames, *, num_segments: int = 16, duration: int = 1,
                 num_clips: int = 1, short_clips: str = "edge") -> tf.Tensor:
  """Frame indices for evaluation: int32 ``[num_clips, num_segments * duration]``."""
  _check(num_segments, duration, short_clips)
  if num_clips < 1:
    raise ValueError(f"num_clips={num_clips}: expected at least 1")
  n = tf.cast(num_frames, tf.int32)
  # float64 and the official operation order, so that int() truncates exactly where Python's does.
  tick = tf.cast(n - duration + 1, tf.float64) / float(num_segments)
  segments = tf.range(num_segments, dtype=tf.float64)
  rows = []
  for clip in range(num_clips):
    fraction = (clip + 0.5) / num_clips  # 0.5 for one clip: tick * 0.5 == tick / 2.0 exactly
    rows.append(tf.cast(tf.floor(tick * fraction + tick * segments), tf.int32))
  spread = tf.stack(rows)
  padded = tf.tile(_short(n, num_segments, short_clips)[None], [num_clips, 1])
  offsets = tf.where(n > num_segments + duration - 1, spread, padded)
  return tf.reshape(_expand(offsets, n, duration), [num_clips, num_segments * duration])


def _padded(n: tf.Tensor, num_segments: int) -> tf.Tensor:
  """0, 1, ..., n - 1, then n - 1 repeated up to ``num_segments`` (numpy's 'edge' padding)."""
  return tf.minimum(tf.range(num_segments, dtype=tf.int32), n - 1)


def _short(n: tf.Tensor, num_segments: int, short_clips: str) -> tf.Tensor:
  if short_clips == "first":
    return tf.zeros([num_segments], tf.int32)
  return _padded(n, num_segments)


def _expand(offsets: tf.Tensor, n: tf.Tensor, duration: int) -> tf.Tensor:
  """Each offset -> ``duration`` consecutive frames that stop advancing at the last frame."""
  if duration == 1:
    return offsets
  steps = tf.range(duration, dtype=tf.int32)
  frames = tf.minimum(offsets[..., None] + steps, tf.maximum(offsets[..., None], n - 1))
  return tf.reshape(frames, tf.concat([tf.shape(offsets)[:-1], [-1]], 0))


def _check(num_segments: int, duration: int, short_clips: str = "edge") -> None:
  if num_segments < 1 or duration < 1:
    raise ValueError(f"num_segments={num_segments}, duration={duration}: both must be at least 1")
  if short_clips not in SHORT_CLIPS:
    raise ValueError(f"short_clips={short_clips!r}: expected one of {SHORT_CLIPS}")
