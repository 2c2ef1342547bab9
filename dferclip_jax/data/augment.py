"""Clip augmentation as in the official loader: one random draw per clip, shared by its frames.

Input: the sampled frames of one clip, uint8 ``[T, H, W, 3]`` (all frames one size). Output of
``augment_clip`` and ``resize_clip``: float32 ``[T, size, size, 3]`` in [0, 1], like the official
``ToTorchFormatTensor`` (the pipeline quantises back to uint8; the device divides by 255).

The official transforms, in their order (``train_data_loader`` / ``test_data_loader``):
  dfew     brightness jitter 0.5 -> random sized crop -> horizontal flip
  ferv39k  rotation within +-4 degrees -> random sized crop -> horizontal flip
  mafw     random sized crop -> horizontal flip
  none     test transform: bilinear resize to ``size x size`` (aspect ratio not kept)

Details kept from PIL / torchvision as the official code calls them:
  * brightness: factor ~ U[0.5, 1.5]; ``floor(pixel * factor)`` clipped to 255 (PIL's blend with
    black, bit-exact). Per-pixel, so it is applied after the crop: same pixels, less work.
  * rotation: ``Image.rotate(angle)``: counter-clockwise for positive angles, about the centre,
    nearest neighbour, corners filled with black, same canvas size.
  * random sized crop (``GroupRandomSizedCrop``): up to 10 tries of area ~ U[0.08, 1] of the frame
    and aspect ratio ~ U[3/4, 4/3] (uniform, not log-uniform), w and h rounded half-to-even, swapped
    with probability 1/2; the first try that fits is placed uniformly and resized bilinearly to
    ``size x size``. If none fits: resize the shorter side to ``size`` (the longer to
    ``int(size * long / short)``) and take a uniform ``size x size`` crop.
  * flip with probability 1/2.
  * bilinear resizes, antialiased when shrinking, as PIL's; results match PIL within 1/255.

Randomness: every draw is a stateless function of the clip seed (shape [2] int64), each op with
its own sub-seed, so a clip's augmentation depends only on (seed, position in the stream).
"""

from __future__ import annotations

import math

import tensorflow as tf

KINDS = ("dfew", "ferv39k", "mafw", "none")
BRIGHTNESS = 0.5
ROTATION_DEGREES = 4.0
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10

# Sub-seed ids: one per random op (0 is the frame sampler's, see pipeline).
_BRIGHTNESS, _ROTATION, _CROP, _FLIP = 1, 2, 3, 4


def augment_clip(frames: tf.Tensor, kind: str, size: int, seed) -> tf.Tensor:
  """The training transform of ``kind`` ("dfew", "ferv39k", "mafw", "none") -> float32 in [0, 1]."""
  return _unit(augment_clip_255(frames, kind, size, seed))


def resize_clip(frames: tf.Tensor, size: int) -> tf.Tensor:
  """The test transform: bilinear resize to ``size x size`` -> float32 in [0, 1]."""
  return _unit(resize_clip_255(frames, size))


def augment_clip_255(frames: tf.Tensor, kind: str, size: int, seed) -> tf.Tensor:
  """``augment_clip`` before the division: float32 in [0, 255] (what the pipeline quantises)."""
  if kind not in KINDS:
    raise ValueError(f"augmentation={kind!r}: expected one of {KINDS}")
  if kind == "none":
    return resize_clip_255(frames, size)
  seed = tf.cast(seed, tf.int64)
  if kind == "ferv39k":
    frames = rotate(frames, rotation_angle(_sub(seed, _ROTATION)))
  factor = brightness_factor(_sub(seed, _BRIGHTNESS)) if kind == "dfew" else None
  video = random_sized_crop(frames, size, _sub(seed, _CROP), brightness=factor)
  return random_flip(video, _sub(seed, _FLIP))


def resize_clip_255(frames: tf.Tensor, size: int) -> tf.Tensor:
  shape = tf.shape(frames)
  same = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
  # Frames already at the model's size skip the resize: it would be the identity.
  return tf.cond(same, lambda: tf.cast(frames, tf.float32), lambda: _resize(frames, size, size))


def quantize(video_255: tf.Tensor) -> tf.Tensor:
  """float32 in [0, 255] -> uint8, rounding to nearest."""
  return tf.cast(tf.clip_by_value(tf.round(video_255), 0.0, 255.0), tf.uint8)


# ---------------------------------------------------------------------------------------------
# The ops, each usable alone.
# ---------------------------------------------------------------------------------------------


def brightness_factor(seed, strength: float = BRIGHTNESS) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed=seed, minval=max(0.0, 1.0 - strength),
                                     maxval=1.0 + strength, dtype=tf.float32)


def adjust_brightness(frames: tf.Tensor, factor) -> tf.Tensor:
  """PIL's ``ImageEnhance.Brightness``: uint8 ``floor(pixel * factor)``, clipped."""
  scaled = tf.floor(tf.cast(frames, tf.float32) * tf.cast(factor, tf.float32))
  return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def rotation_angle(seed, degrees: float = ROTATION_DEGREES) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed=seed, minval=-degrees, maxval=degrees,
                                     dtype=tf.float32)


def rotate(frames: tf.Tensor, angle_degrees) -> tf.Tensor:
  """PIL's ``Image.rotate(angle)`` on uint8 ``[T, H, W, 3]``: same size, nearest, black corners."""
  shape = tf.shape(frames)
  height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
  theta = tf.cast(angle_degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(theta), tf.sin(theta)
  # Output pixel (x, y) reads input (cos*x' - sin*y', sin*x' + cos*y') about the centre, in
  # pixel-index coordinates whose centre is ((w - 1) / 2, (h - 1) / 2): PIL's (w / 2, h / 2) in
  # its half-pixel convention. y points down, so this turns the picture counter-clockwise.
  cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
  transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                        sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=frames, transforms=tf.tile(transform[None], [shape[0], 1]),
      output_shape=shape[1:3], fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")


def random_sized_crop_box(height, width, seed, size: int) -> tuple[tf.Tensor, ...]:
  """The official crop's draw -> (y, x, h, w, found). ``found`` False: use the fallback."""
  seed = tf.cast(seed, tf.int64)
  h_in, w_in = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  area = tf.cast(h_in * w_in, tf.float64)
  target = tf.random.stateless_uniform([CROP_TRIES], seed=_sub(seed, 0), minval=CROP_AREA[0],
                                       maxval=CROP_AREA[1], dtype=tf.float64) * area
  ratio = tf.random.stateless_uniform([CROP_TRIES], seed=_sub(seed, 1), minval=CROP_RATIO[0],
                                      maxval=CROP_RATIO[1], dtype=tf.float64)
  swap = tf.random.stateless_uniform([CROP_TRIES], seed=_sub(seed, 2), dtype=tf.float64) < 0.5
  # tf.round rounds half to even, as Python's round() does.
  w = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  w, h = tf.where(swap, h, w), tf.where(swap, w, h)
  fits = tf.logical_and(w <= w_in, h <= h_in)
  found = tf.reduce_any(fits)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  # A crop is at least one pixel (the official one would fail on frames of a few pixels).
  w, h = tf.maximum(w[first], 1), tf.maximum(h[first], 1)
  x = _randint(_sub(seed, 3), w_in - w)
  y = _randint(_sub(seed, 4), h_in - h)
  return y, x, h, w, found


def random_sized_crop(frames: tf.Tensor, size: int, seed, *, brightness=None) -> tf.Tensor:
  """``GroupRandomSizedCrop(size)`` on uint8 ``[T, H, W, 3]`` -> float32 ``[T, size, size, 3]``
  in [0, 255]. ``brightness``: an optional factor applied to the cropped pixels (see module doc)."""
  seed = tf.cast(seed, tf.int64)
  shape = tf.shape(frames)
  height, width = shape[1], shape[2]
  y, x, h, w, found = random_sized_crop_box(height, width, seed, size)

  def bright(pixels):
    return pixels if brightness is None else adjust_brightness(pixels, brightness)

  def crop_then_resize():
    return _resize(bright(frames[:, y:y + h, x:x + w]), size, size)

  def fallback():
    # torchvision's Resize(size): shorter side to size, longer int(size * long / short).
    short, long = tf.minimum(height, width), tf.maximum(height, width)
    scaled_long = tf.cast(tf.cast(size * long, tf.float64) / tf.cast(short, tf.float64), tf.int32)
    new_h = tf.where(width <= height, scaled_long, size)
    new_w = tf.where(width <= height, size, scaled_long)
    resized = _resize(bright(frames), new_h, new_w)
    fy = _randint(_sub(seed, 5), new_h - size)
    fx = _randint(_sub(seed, 6), new_w - size)
    return resized[:, fy:fy + size, fx:fx + size]

  out = tf.cond(found, crop_then_resize, fallback)
  return tf.ensure_shape(out, [None, size, size, 3])


def random_flip(video: tf.Tensor, seed) -> tf.Tensor:
  """Mirrors every frame (axis 2 of ``[T, H, W, C]``) with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed=seed, dtype=tf.float32) < 0.5
  return tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)


def _unit(video_255: tf.Tensor) -> tf.Tensor:
  # Resampling rounding can leave 255.00002: clip so the documented [0, 1] holds exactly.
  return tf.clip_by_value(video_255 / 255.0, 0.0, 1.0)


def _resize(frames: tf.Tensor, height, width) -> tf.Tensor:
  """PIL's bilinear resize (within 1/255): its filter widens when shrinking, so antialiasing is
  needed then; when enlarging both are plain bilinear and the non-antialiased op is 3x faster."""
  size = tf.stack([height, width])
  shape = tf.shape(frames)
  shrinks = tf.logical_or(shape[1] > height, shape[2] > width)
  return tf.cond(shrinks,
                 lambda: tf.image.resize(frames, size, method="bilinear", antialias=True),
                 lambda: tf.image.resize(frames, size, method="bilinear", antialias=False))


def _randint(seed: tf.Tensor, high) -> tf.Tensor:
  """Uniform integer in [0, high] (inclusive, like ``random.randint(0, high)``)."""
  high = tf.maximum(tf.cast(high, tf.int32), 0)
  return tf.random.stateless_uniform([], seed=seed, minval=0, maxval=high + 1, dtype=tf.int32)


def _sub(seed: tf.Tensor, purpose: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, purpose)
