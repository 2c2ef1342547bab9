"""Every random stream of the input pipeline, in one table: who folds which number into which key.

All draws are stateless (``tf.random.stateless_*``): a stream's key is its parent key with the
stream's number folded in (``sub``). Numbers are unique within each level (``enum.unique``), so
adding a draw means adding a row here, and no two draws can share a stream by accident.

  key(seed, Root.PERMUTATION) + epoch     -> the epoch's permutation of the clips (pipeline)
  key(seed, Root.CLIP) + position         -> the clip key of one stream position (pipeline)
    clip key + Clip.SAMPLING              -> the frame sampler's key (sampling.train_indices)
      + Sampling.JITTER / SCATTER         ->   offsets within segments / sorted scattered draws
    clip key + Clip.BRIGHTNESS            -> brightness factor (augment, "dfew")
    clip key + Clip.ROTATION              -> rotation angle (augment, "ferv39k")
    clip key + Clip.CROP                  -> the random sized crop (augment)
      + Crop.AREA / RATIO / SWAP / X / Y  ->   the crop box's draws
      + Crop.FILL_Y / FILL_X              ->   the fallback crop's offsets
    clip key + Clip.FLIP                  -> horizontal flip (augment)

The numbers are what every existing run used: changing one changes every batch and breaks the
exact resume of checkpoints written before.
"""

from __future__ import annotations

import enum

import tensorflow as tf


@enum.unique
class Root(enum.IntEnum):
  """Streams under the user's seed (``key(seed, stream)``)."""
  PERMUTATION = 1
  CLIP = 2


@enum.unique
class Clip(enum.IntEnum):
  """Streams under one clip key (all draws for the clip at one stream position)."""
  SAMPLING = 0
  BRIGHTNESS = 1
  ROTATION = 2
  CROP = 3
  FLIP = 4


@enum.unique
class Sampling(enum.IntEnum):
  """Streams under the frame sampler's key; each random branch has its own, so adding one never
  shifts another's draws."""
  JITTER = 0
  SCATTER = 1


@enum.unique
class Crop(enum.IntEnum):
  """Streams under the crop key."""
  AREA = 0
  RATIO = 1
  SWAP = 2
  X = 3
  Y = 4
  FILL_Y = 5
  FILL_X = 6


def key(seed: int, stream: Root) -> tf.Tensor:
  """The [2] int64 key of a stream directly under the user's seed."""
  return tf.constant([seed, int(stream)], tf.int64)


def sub(parent, stream) -> tf.Tensor:
  """The key of ``stream`` (a row of this table, or an epoch / a stream position, int64 tensors
  allowed) under ``parent``, a [2] int64 key."""
  if isinstance(stream, enum.IntEnum):
    stream = int(stream)
  return tf.random.experimental.stateless_fold_in(parent, stream)
