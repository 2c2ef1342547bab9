"""Augmentation: one draw per clip, and each op against PIL as the official transforms call it."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance

from dferclip_jax.data import augment
from dferclip_jax.data import seeds

SEED = tf.constant([3, 11], tf.int64)


def _image(h, w, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth content plus noise: resampling differences show, nothing is flat.
  y, x = np.mgrid[0:h, 0:w]
  base = 127 + 80 * np.sin(x[..., None] / 5.0 + np.array([0, 1, 2])) * np.cos(y[..., None] / 7.0)
  return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", augment.KINDS)
def test_one_random_draw_per_clip(kind):
  frames = np.repeat(_image(37, 50)[None], 6, axis=0)
  for seed in range(4):
    out = augment.augment_clip(frames, kind, 24, tf.constant([seed, 1], tf.int64)).numpy()
    assert out.shape == (6, 24, 24, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    for t in range(1, 6):
      np.testing.assert_array_equal(out[t], out[0])


def test_draws_depend_only_on_the_seed():
  frames = np.stack([_image(40, 40, s) for s in range(3)])
  a = augment.augment_clip(frames, "dfew", 32, SEED).numpy()
  b = augment.augment_clip(frames, "dfew", 32, SEED).numpy()
  c = augment.augment_clip(frames, "dfew", 32, tf.constant([4, 11], tf.int64)).numpy()
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 0.1


def test_brightness_is_bit_exact_with_pil():
  image = _image(20, 30)
  for factor in (0.5, 0.77, 1.0, 1.31, 1.5):
    expected = np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))
    got = augment.adjust_brightness(image[None], factor).numpy()[0]
    np.testing.assert_array_equal(got, expected)


def test_brightness_is_bit_exact_with_pil_over_every_byte():
  """All 256 values, black and white included: 0 stays 0, bright pixels saturate at 255."""
  image = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
  for factor in (0.5, 0.9, 1.0, 1.5):
    expected = np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))
    got = augment.adjust_brightness(image[None], factor).numpy()[0]
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0, 0] == 0


def test_brightness_factor_range():
  factors = [float(augment.brightness_factor(tf.constant([s, 0], tf.int64))) for s in range(200)]
  assert 0.5 <= min(factors) < 0.6 and 1.4 < max(factors) <= 1.5


@pytest.mark.parametrize("height, width", [(37, 52), (40, 40), (31, 24)])
def test_rotation_is_bit_exact_with_pil(height, width):
  image = _image(height, width)
  angles = [3.7, -2.2, -4.0, 0.0, 1e-3, 33.0, -75.5, 180.0, 271.25]
  # float32 draws, as the pipeline makes them; PIL gets the same value as a Python float.
  angles += [float(augment.rotation_angle(tf.constant([s, 2], tf.int64))) for s in range(12)]
  for angle in angles:
    expected = np.asarray(Image.fromarray(image).rotate(angle))  # nearest, black corners
    got = augment.rotate(image[None], np.float32(angle)).numpy()[0]
    np.testing.assert_array_equal(got, expected, err_msg=f"angle {angle}")


def test_rotated_window_is_the_window_of_the_rotation():
  frames = np.stack([_image(37, 52, s) for s in range(3)])
  full = augment.rotate(frames, -3.3).numpy()
  for y, x, h, w in [(0, 0, 37, 52), (5, 9, 20, 31), (36, 51, 1, 1), (12, 0, 3, 52)]:
    window = augment.rotated_window(frames, -3.3, y, x, h, w).numpy()
    np.testing.assert_array_equal(window, full[:, y:y + h, x:x + w])


@pytest.mark.parametrize("kind", ["dfew", "ferv39k", "mafw"])
def test_training_transform_equals_the_official_order_in_pil(kind):
  """The fused transform against the official op order done with PIL, given our draws."""
  frames = np.stack([_image(37, 50, s) for s in range(2)])
  for seed in range(6):
    key = tf.constant([seed, 9], tf.int64)
    got = augment.augment_clip_uint8(frames, kind, 24, key).numpy()
    crop_key = seeds.sub(key, seeds.Clip.CROP)
    y, x, h, w, found = (int(v) for v in augment.random_sized_crop_box(37, 50, crop_key, 24))
    flip = bool(augment.random_flip(tf.constant([[[[0.0], [1.0]]]]),
                                    seeds.sub(key, seeds.Clip.FLIP)).numpy()[0, 0, 0, 0])
    assert found
    for t in range(2):
      image = Image.fromarray(frames[t])
      if kind == "dfew":
        factor = float(augment.brightness_factor(seeds.sub(key, seeds.Clip.BRIGHTNESS)))
        image = ImageEnhance.Brightness(image).enhance(np.float32(factor))
      if kind == "ferv39k":
        image = image.rotate(float(augment.rotation_angle(seeds.sub(key, seeds.Clip.ROTATION))))
      image = image.crop((x, y, x + w, y + h)).resize((24, 24), Image.BILINEAR)
      if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
      assert np.abs(got[t].astype(int) - np.asarray(image).astype(int)).max() <= 1


def test_rotation_angles_stay_within_four_degrees():
  angles = [float(augment.rotation_angle(tf.constant([s, 0], tf.int64))) for s in range(200)]
  assert -4.0 <= min(angles) < -3.5 and 3.5 < max(angles) <= 4.0


def test_random_sized_crop_matches_pil_crop_and_resize():
  frames = np.stack([_image(37, 50, s) for s in range(2)])
  for seed in range(6):
    key = tf.constant([seed, 5], tf.int64)
    y, x, h, w, found = (int(v) for v in augment.random_sized_crop_box(37, 50, key, 32))
    assert found and 1 <= h <= 37 and 1 <= w <= 50 and y + h <= 37 and x + w <= 50
    got = augment.random_sized_crop(frames, 32, key).numpy()
    for t in range(2):
      expected = np.asarray(Image.fromarray(frames[t]).crop((x, y, x + w, y + h))
                            .resize((32, 32), Image.BILINEAR)).astype(np.float32)
      assert np.abs(np.round(got[t]) - expected).max() <= 1.0


def test_crop_box_distribution_follows_the_official_ranges():
  areas, ratios = [], []
  for seed in range(300):
    key = tf.constant([seed, 0], tf.int64)
    y, x, h, w, found = (int(v) for v in augment.random_sized_crop_box(100, 100, key, 32))
    assert found
    areas.append(h * w / 1e4)
    ratios.append(w / h)
  assert 0.07 < min(areas) < 0.2 and max(areas) > 0.9
  # w and h are rounded, so the ratio may pass 3/4..4/3 by a pixel's worth.
  assert min(ratios) >= 0.72 and max(ratios) <= 1.38 and min(ratios) < 0.8 and max(ratios) > 1.25


def test_crop_fallback_resizes_the_short_side_then_crops():
  # A 4x200 strip: no crop of 8-100% area with aspect 3/4..4/3 fits, so the fallback runs.
  frames = _image(4, 200)[None]
  y, x, h, w, found = augment.random_sized_crop_box(4, 200, SEED, 16)
  assert not bool(found)
  got = np.round(augment.random_sized_crop(frames, 16, SEED).numpy()[0])
  scaled = np.asarray(Image.fromarray(frames[0]).resize((800, 16), Image.BILINEAR)).astype(float)
  best = min(np.abs(got - scaled[:, x0:x0 + 16]).max() for x0 in range(800 - 16 + 1))
  assert best <= 1.0


def test_flip_mirrors_every_frame_half_the_time():
  video = tf.constant(np.arange(2 * 2 * 3 * 1, dtype=np.float32).reshape(2, 2, 3, 1))
  flipped = 0
  for seed in range(100):
    out = augment.random_flip(video, tf.constant([seed, 0], tf.int64)).numpy()
    if not np.array_equal(out, video.numpy()):
      np.testing.assert_array_equal(out, video.numpy()[:, :, ::-1])
      flipped += 1
  assert 30 < flipped < 70


def test_test_resize_matches_pil_and_skips_same_size():
  frames = np.stack([_image(37, 50, s) for s in range(2)])
  got = augment.resize_clip(frames, 32).numpy()
  for t in range(2):
    expected = np.asarray(Image.fromarray(frames[t]).resize((32, 32), Image.BILINEAR))
    assert np.abs(np.round(got[t] * 255) - expected).max() <= 1.0
  same = augment.resize_clip(frames[:, :32, :32], 32).numpy()
  np.testing.assert_array_equal(np.round(same * 255), frames[:, :32, :32])


def test_none_is_the_test_transform_and_unknown_kinds_fail():
  frames = np.stack([_image(37, 50, s) for s in range(2)])
  np.testing.assert_array_equal(augment.augment_clip(frames, "none", 24, SEED).numpy(),
                                augment.resize_clip(frames, 24).numpy())
  with pytest.raises(ValueError) as err:
    augment.augment_clip(frames, "afew", 24, SEED)
  assert str(err.value) == ("augmentation='afew': expected one of ('dfew', 'ferv39k', 'mafw', "
                            "'hesp', 'none')")  # the whole message


def test_quantize_rounds_back_to_the_bytes():
  frames = np.stack([_image(24, 24, s) for s in range(2)])
  restored = augment.quantize(augment.resize_clip(frames, 24) * 255).numpy()
  np.testing.assert_array_equal(restored, frames)


@pytest.mark.parametrize("kind", augment.KINDS)
def test_float_output_is_the_uint8_output_over_255(kind):
  # As the official ToTorchFormatTensor: uint8 pixels / 255, what the device computes from ours.
  frames = np.stack([_image(37, 50, s) for s in range(2)])
  as_uint8 = augment.augment_clip_uint8(frames, kind, 24, SEED).numpy()
  assert as_uint8.dtype == np.uint8
  np.testing.assert_array_equal(augment.augment_clip(frames, kind, 24, SEED).numpy(),
                                as_uint8.astype(np.float32) / 255.0)


@pytest.mark.parametrize("height, width, size", [(20, 32, 32), (32, 20, 32), (3, 7, 3), (7, 3, 3)])
def test_test_resize_runs_unless_both_sides_are_the_size(height, width, size):
  """One side at the output size (or the channel count equal to it) is no reason to skip the
  resize: the result is size x size and PIL's bilinear resize, within 1."""
  frames = np.stack([_image(height, width, s) for s in range(2)])
  got = augment.resize_clip_uint8(frames, size).numpy()
  assert got.shape == (2, size, size, 3)
  for t in range(2):
    expected = np.asarray(Image.fromarray(frames[t]).resize((size, size), Image.BILINEAR))
    assert np.abs(got[t].astype(int) - expected).max() <= 1


@pytest.mark.parametrize("height, width", [(60, 12), (12, 60)])
def test_resize_antialiases_when_only_one_side_shrinks(height, width):
  """A 3x shrink on one side and an enlargement on the other still filters like PIL (within 1);
  without antialiasing (the planted error) this noise is 131-140 levels off."""
  frame = np.random.default_rng(1).integers(0, 256, (height, width, 3)).astype(np.uint8)
  got = augment.resize_clip_uint8(frame[None], 20).numpy()[0].astype(int)
  expected = np.asarray(Image.fromarray(frame).resize((20, 20), Image.BILINEAR)).astype(int)
  assert np.abs(got - expected).max() <= 1
