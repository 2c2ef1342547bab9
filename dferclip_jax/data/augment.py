"""Clip augmentation as in the official loader: one random draw per clip, shared by its frames.

Input: the sampled frames of one clip, uint8 ``[T, H, W, 3]`` (all frames one size).
``augment_clip`` / ``resize_clip`` return float32 ``[T, size, size, 3]`` in [0, 1]: uint8 pixels
divided by 255, exactly what the official ``ToTorchFormatTensor`` makes of its PIL images. The
pipeline uses ``augment_clip_uint8`` / ``resize_clip_uint8`` (the same pixels before the division:
4x fewer bytes to the device, which divides by 255).

The official transforms, in their order (``train_data_loader`` / ``test_data_loader``):
  dfew     brightness jitter 0.5 -> random sized crop -> horizontal flip
  ferv39k  rotation within +-4 degrees -> random sized crop -> horizontal flip
  mafw     random sized crop -> horizontal flip
  hesp     HESP's train transform (its datasets/dataset_MAFW.py:119-121): horizontal flip ->
           bilinear resize to ``size x size`` -> random sized crop (of the resized frame); the
           flip is applied last here, which draws the same distribution (the crop's position is
           uniform, so mirrored or not it is the same law)
  none     test transform: bilinear resize to ``size x size`` (aspect ratio not kept)

Details kept from PIL / torchvision as the official code calls them:
  * brightness: factor ~ U[0.5, 1.5]; ``floor(pixel * factor)`` clipped to 255 (PIL's blend with
    black), bit-exact.
  * rotation: ``Image.rotate(angle)``: counter-clockwise for positive angles, about the centre,
    nearest neighbour, corners black, same canvas size; bit-exact (PIL's 16.16 fixed-point
    mapping is reproduced in integers; see ``rotation_source``).
  * random sized crop (``GroupRandomSizedCrop``): up to 10 tries of area ~ U[0.08, 1] of the frame
    and aspect ratio ~ U[3/4, 4/3] (uniform, not log-uniform), w and h rounded half-to-even, swapped
    with probability 1/2; the first try that fits is placed uniformly and resized bilinearly to
    ``size x size``. If none fits: resize the shorter side to ``size`` (the longer to
    ``int(size * long / short)``) and take a uniform ``size x size`` crop.
  * flip with probability 1/2.
  * bilinear resizes, antialiased when shrinking, as PIL's; results match PIL within 1/255.

Speed without changing a pixel: the crop box depends only on the frame size, so brightness (per
pixel) and rotation (a per-pixel source lookup) are computed for the crop window alone, and the
flip mirrors the uint8 result (flipping commutes with rounding).

Randomness: every draw is a stateless function of the clip seed (shape [2] int64), each op with
its own stream of the table in ``seeds``, so a clip's augmentation depends only on (seed,
position in the stream).
"""

from __future__ import annotations

import math

import tensorflow as tf

from dferclip_jax.data import datasets, seeds

KINDS = datasets.AUGMENTATIONS  # dfew, ferv39k, mafw, hesp, none
BRIGHTNESS = 0.5
ROTATION_DEGREES = 4.0
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10


def augment_clip(frames: tf.Tensor, kind: str, size: int, seed) -> tf.Tensor:
  """The training transform of ``kind`` (one of ``KINDS``) -> float32 in [0, 1]."""
  return to_unit(augment_clip_uint8(frames, kind, size, seed))


def resize_clip(frames: tf.Tensor, size: int) -> tf.Tensor:
  """The test transform: bilinear resize to ``size x size`` -> float32 in [0, 1]."""
  return to_unit(resize_clip_uint8(frames, size))


def augment_clip_uint8(frames: tf.Tensor, kind: str, size: int, seed) -> tf.Tensor:
  """``augment_clip`` before the division by 255: uint8 ``[T, size, size, 3]``."""
  if kind not in KINDS:
    raise ValueError(f"augmentation={kind!r}: expected one of {KINDS}")
  if kind == "none":
    return resize_clip_uint8(frames, size)
  seed = tf.cast(seed, tf.int64)
  if kind == "hesp":  # resize first, so the crop is drawn on the size x size frame
    frames = resize_clip_uint8(frames, size)
  angle = rotation_angle(seeds.sub(seed, seeds.Clip.ROTATION)) if kind == "ferv39k" else None
  factor = brightness_factor(seeds.sub(seed, seeds.Clip.BRIGHTNESS)) if kind == "dfew" else None
  video = random_sized_crop(frames, size, seeds.sub(seed, seeds.Clip.CROP), brightness=factor,
                            rotation=angle)
  return random_flip(quantize(video), seeds.sub(seed, seeds.Clip.FLIP))


def resize_clip_uint8(frames: tf.Tensor, size: int) -> tf.Tensor:
  """``resize_clip`` before the division by 255: uint8 ``[T, size, size, 3]``."""
  return quantize(resize_clip_255(frames, size))


def resize_clip_255(frames: tf.Tensor, size: int) -> tf.Tensor:
  """The test resize, float32 in [0, 255] before rounding."""
  shape = tf.shape(frames)
  same = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
  # Frames already at the model's size skip the resize: it would be the identity.
  return tf.cond(same, lambda: tf.cast(frames, tf.float32), lambda: _resize(frames, size, size))


def quantize(video_255: tf.Tensor) -> tf.Tensor:
  """float32 in [0, 255] -> uint8, rounding to nearest (as PIL's resampling rounds)."""
  return tf.cast(tf.clip_by_value(tf.round(video_255), 0.0, 255.0), tf.uint8)


def to_unit(video: tf.Tensor) -> tf.Tensor:
  """uint8 -> float32 in [0, 1] (the official ``ToTorchFormatTensor``)."""
  return tf.cast(video, tf.float32) / 255.0


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
  """PIL's ``Image.rotate(angle)`` on ``[T, H, W, C]``: same size, nearest, black corners."""
  shape = tf.shape(frames)
  return rotated_window(frames, angle_degrees, 0, 0, shape[1], shape[2])


def rotated_window(frames: tf.Tensor, angle_degrees, y, x, h, w) -> tf.Tensor:
  """``rotate(frames, angle)[:, y:y + h, x:x + w]``, computing only that window."""
  shape = tf.shape(frames)
  height, width = shape[1], shape[2]
  source = rotation_source(angle_degrees, height, width, y, x, h, w)
  # One black pixel after the frame's pixels: where the rotation reads from outside the frame.
  flat = tf.reshape(frames, tf.stack([shape[0], height * width, shape[3]]))
  flat = tf.pad(flat, [[0, 0], [0, 1], [0, 0]])
  window = tf.gather(flat, tf.reshape(source, [-1]), axis=1)
  return tf.reshape(window, tf.stack([shape[0], h, w, shape[3]]))


def rotation_source(angle_degrees, height, width, y, x, h, w) -> tf.Tensor:
  """For each pixel of an ``h x w`` window at (y, x) of the rotated frame, the flat index
  (``row * width + column``) of the frame pixel PIL copies there, or ``height * width``: black.

  PIL builds the inverse affine matrix in float64 (cos/sin rounded to 15 decimals), converts it
  to 16.16 fixed point, ``floor(v * 65536 + 0.5)``, and steps through the output in integers:
  source column of output pixel (c, r) = ``(a2 + r * a1 + c * a0) >> 16`` (row: a5, a4, a3).
  The same integers here give the same pixels (PIL takes this path for frames under about
  32,000 pixels a side).
  """
  angle = tf.math.floormod(tf.cast(angle_degrees, tf.float64), 360.0)  # Python's ``%``, as PIL
  theta = -(angle * (math.pi / 180.0))
  cos, sin = _round15(tf.cos(theta)), _round15(tf.sin(theta))
  h_in, w_in = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  cx, cy = tf.cast(w_in, tf.float64) / 2.0, tf.cast(h_in, tf.float64) / 2.0
  # matrix = [cos, sin, c2, -sin, cos, c5]: rotation about the centre, operation order as PIL's.
  c2 = cos * -cx + sin * -cy + 0.0 + cx
  c5 = -sin * -cx + cos * -cy + 0.0 + cy

  def fixed(v):
    return tf.cast(tf.floor(v * 65536.0 + 0.5), tf.int32)

  a0, a1, a3, a4 = fixed(cos), fixed(sin), fixed(-sin), fixed(cos)
  a2 = fixed(c2 + cos * 0.5 + sin * 0.5)
  a5 = fixed(c5 + -sin * 0.5 + cos * 0.5)
  rows = tf.range(h, dtype=tf.int32)[:, None] + tf.cast(y, tf.int32)
  cols = tf.range(w, dtype=tf.int32)[None, :] + tf.cast(x, tf.int32)
  src_x = tf.bitwise.right_shift(a2 + rows * a1 + cols * a0, 16)  # arithmetic: floor
  src_y = tf.bitwise.right_shift(a5 + rows * a4 + cols * a3, 16)
  inside = (src_x >= 0) & (src_x < w_in) & (src_y >= 0) & (src_y < h_in)
  return tf.where(inside, src_y * w_in + src_x, h_in * w_in)


def _round15(v: tf.Tensor) -> tf.Tensor:
  # Python's round(v, 15) to within an ulp; PIL's 16.16 conversion never sees the difference.
  return tf.round(v * 1e15) / 1e15


def random_sized_crop_box(height, width, seed, size: int) -> tuple[tf.Tensor, ...]:
  """The official crop's draw -> (y, x, h, w, found). ``found`` False: use the fallback."""
  del size  # the box does not depend on the output size; kept for the call's symmetry
  seed = tf.cast(seed, tf.int64)
  h_in, w_in = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  area = tf.cast(h_in * w_in, tf.float64)
  target = tf.random.stateless_uniform([CROP_TRIES], seed=seeds.sub(seed, seeds.Crop.AREA),
                                       minval=CROP_AREA[0], maxval=CROP_AREA[1],
                                       dtype=tf.float64) * area
  ratio = tf.random.stateless_uniform([CROP_TRIES], seed=seeds.sub(seed, seeds.Crop.RATIO),
                                      minval=CROP_RATIO[0], maxval=CROP_RATIO[1], dtype=tf.float64)
  swap = tf.random.stateless_uniform([CROP_TRIES], seed=seeds.sub(seed, seeds.Crop.SWAP),
                                     dtype=tf.float64) < 0.5
  # tf.round rounds half to even, as Python's round() does.
  w = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  w, h = tf.where(swap, h, w), tf.where(swap, w, h)
  fits = tf.logical_and(w <= w_in, h <= h_in)
  found = tf.reduce_any(fits)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  # A crop is at least one pixel (the official one would fail on frames of a few pixels).
  w, h = tf.maximum(w[first], 1), tf.maximum(h[first], 1)
  x = _randint(seeds.sub(seed, seeds.Crop.X), w_in - w)
  y = _randint(seeds.sub(seed, seeds.Crop.Y), h_in - h)
  return y, x, h, w, found


def random_sized_crop(frames: tf.Tensor, size: int, seed, *, brightness=None,
                      rotation=None) -> tf.Tensor:
  """``GroupRandomSizedCrop(size)`` on uint8 ``[T, H, W, 3]`` -> float32 ``[T, size, size, 3]``
  in [0, 255] (round with ``quantize``).

  ``brightness`` (a factor) and ``rotation`` (degrees), optional, are the official ops *before*
  the crop; given here, they are computed for the crop window only, with the same result.
  """
  seed = tf.cast(seed, tf.int64)
  shape = tf.shape(frames)
  height, width = shape[1], shape[2]
  y, x, h, w, found = random_sized_crop_box(height, width, seed, size)

  def window(y0, x0, h0, w0):
    if rotation is None:
      pixels = frames[:, y0:y0 + h0, x0:x0 + w0]
    else:
      pixels = rotated_window(frames, rotation, y0, x0, h0, w0)
    return pixels if brightness is None else adjust_brightness(pixels, brightness)

  def crop_then_resize():
    return _resize(window(y, x, h, w), size, size)

  def fallback():
    # torchvision's Resize(size): shorter side to size, longer int(size * long / short).
    short, long = tf.minimum(height, width), tf.maximum(height, width)
    scaled_long = tf.cast(tf.cast(size * long, tf.float64) / tf.cast(short, tf.float64), tf.int32)
    new_h = tf.where(width <= height, scaled_long, size)
    new_w = tf.where(width <= height, size, scaled_long)
    resized = _resize(window(0, 0, height, width), new_h, new_w)
    fy = _randint(seeds.sub(seed, seeds.Crop.FILL_Y), new_h - size)
    fx = _randint(seeds.sub(seed, seeds.Crop.FILL_X), new_w - size)
    return resized[:, fy:fy + size, fx:fx + size]

  out = tf.cond(found, crop_then_resize, fallback)
  return tf.ensure_shape(out, [None, size, size, 3])


def random_flip(video: tf.Tensor, seed) -> tf.Tensor:
  """Mirrors every frame (axis 2 of ``[T, H, W, C]``) with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed=seed, dtype=tf.float32) < 0.5

  def mirror():
    # Reversing the middle axis of [T * H, W, C] is several times faster than axis 2 of the 4-D
    # tensor in TensorFlow's kernel; the result is the same.
    shape = tf.shape(video)
    rows = tf.reshape(video, tf.stack([-1, shape[2], shape[3]]))
    return tf.reshape(tf.reverse(rows, axis=[1]), shape)

  return tf.cond(flip, mirror, lambda: video)


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
