"""The data side's random draws, pinned by value: each equals the official rule (DFER-CLIP's
video_transform.py / video_dataloader.py), reimplemented here in numpy and fed the very uniforms
the module draws (the same stateless streams, drawn here from the seed by hand).

Fed uniforms: a float draw ``stateless_uniform(minval=a, maxval=b)`` is ``a + (b - a) * u`` with
``u`` the stream's [0, 1) draw (Python's ``random.uniform``); an integer draw in ``[0, m)`` is the
stream's raw uint32 bits modulo ``m`` (``random.randint(0, m - 1)``, numpy's ``randint(m)``).
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from dferclip_jax.data import augment, holdout, sampling
from dferclip_jax.data.records import ClipRecord

# The stream numbers, written out (seeds.py's table): clip key + 0 sampling (+ 0 jitter, + 1
# scatter), + 1 brightness, + 2 rotation, + 3 crop (+ 0 area, 1 ratio, 2 swap, 3 x, 4 y, 5 fill y,
# 6 fill x), + 4 flip.
SAMPLING, BRIGHTNESS, ROTATION, CROP, FLIP = 0, 1, 2, 3, 4
JITTER, SCATTER = 0, 1
AREA, RATIO, SWAP, X, Y, FILL_Y, FILL_X = range(7)


def _key(a, b):
  return tf.constant([a, b], tf.int64)


def _fold(key, *streams):
  for stream in streams:
    key = tf.random.experimental.stateless_fold_in(key, stream)
  return key


def _unit(key, shape=(), dtype=tf.float64):
  """The stream's uniform draw in [0, 1)."""
  return tf.random.stateless_uniform(list(shape), seed=key, dtype=dtype).numpy()


def _bits(key, shape=()):
  """The stream's raw uint32 draw, as int64."""
  return tf.random.stateless_uniform(list(shape), seed=key, minval=None, maxval=None,
                                     dtype=tf.uint32).numpy().astype(np.int64)


def _randint(key, high):
  """``random.randint(0, high)`` fed the stream's bits."""
  return int(_bits(key)) % (high + 1)


# ------------------------------------------------------------------------- the random sized crop


def _official_crop_box(height, width, key):
  """GroupRandomSizedCrop's draw (10 tries; area U[0.08, 1], ratio U[3/4, 4/3], round() half to
  even, swap if random() < 0.5, then randint placement) -> (y, x, h, w, found, try, swapped)."""
  area_u = _unit(_fold(key, AREA), [10])
  ratio_u = _unit(_fold(key, RATIO), [10])
  swap_u = _unit(_fold(key, SWAP), [10])
  for attempt in range(10):
    target = (0.08 + (1.0 - 0.08) * area_u[attempt]) * (width * height)
    aspect = 3. / 4 + (4. / 3 - 3. / 4) * ratio_u[attempt]
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    swapped = swap_u[attempt] < 0.5
    if swapped:
      w, h = h, w
    if w <= width and h <= height:
      w, h = max(w, 1), max(h, 1)  # ours: at least a pixel (the official crop would be empty)
      x = _randint(_fold(key, X), width - w)
      y = _randint(_fold(key, Y), height - h)
      return y, x, h, w, True, attempt, swapped
  return None, None, None, None, False, None, None


def _box(height, width, key):
  return tuple(int(v) for v in augment.random_sized_crop_box(height, width, key, 24))


@pytest.mark.parametrize("height, width", [(37, 50), (50, 37), (24, 24), (12, 31)])
def test_crop_box_equals_the_official_draw_fed_the_same_uniforms(height, width):
  """(y, x, h, w, found) equal the official rule's for 60 seeds; the swap branch, a later try and
  a placement off the origin all occur among them (so each is exercised)."""
  tries, swaps, offsets = set(), set(), set()
  for seed in range(60):
    key = _key(seed, 13)
    y, x, h, w, found, attempt, swapped = _official_crop_box(height, width, key)
    got = _box(height, width, key)
    assert bool(got[4]) == found, seed
    if found:
      assert got == (y, x, h, w, 1), seed
      tries.add(attempt > 0)
      swaps.add(swapped)
      offsets.add((x > 0, y > 0))
  assert swaps == {True, False} and (True, True) in offsets
  assert True in tries  # some first tries are too large for the frame


def test_crop_box_swaps_width_and_height_on_the_swap_coin():
  """On a square frame the swap coin of the try taken decides which of the two rounded sides is
  the width: w > h exactly when (aspect > 1) differs from the coin; all four cases occur."""
  seen = set()
  for seed in range(80):
    key = _key(seed, 21)
    attempt = _official_crop_box(100, 100, key)[5]
    ratio = 3. / 4 + (4. / 3 - 3. / 4) * _unit(_fold(key, RATIO), [10])[attempt]
    swapped = _unit(_fold(key, SWAP), [10])[attempt] < 0.5
    y, x, h, w, found = _box(100, 100, key)
    assert found
    if w != h:
      assert (w > h) == ((ratio > 1.0) != swapped), seed
      seen.add((w > h, swapped))
  assert seen == {(True, True), (True, False), (False, True), (False, False)}


def test_crop_box_on_tiny_frames_is_at_least_one_pixel():
  """1x1 and 2x2 frames: the official draws give w or h = 0 often; ours keeps one pixel and
  otherwise the official box."""
  zero = 0
  for height, width in [(1, 1), (2, 2), (1, 3)]:
    for seed in range(30):
      key = _key(seed, 5)
      y, x, h, w, found, _, _ = _official_crop_box(height, width, key)
      if found:
        assert _box(height, width, key) == (y, x, h, w, 1)
        zero += 1
  assert _box(1, 1, _key(0, 5)) == (0, 0, 1, 1, 1)
  assert zero > 30


def test_crop_box_finds_a_late_try_or_falls_back():
  """A 6x40 strip: most draws fail all ten tries (fallback, found False); those that fit do so at
  the official try, with the official box."""
  outcomes = set()
  for seed in range(120):
    key = _key(seed, 3)
    y, x, h, w, found, attempt, _ = _official_crop_box(6, 40, key)
    got = _box(6, 40, key)
    assert bool(got[4]) == found, seed
    if found:
      assert got == (y, x, h, w, 1)
      outcomes.add(attempt > 0)
    else:
      outcomes.add("fallback")
  assert outcomes == {True, False, "fallback"}


def _noise(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("height, width, new_h, new_w", [
    (4, 200, 16, 800),  # wide: height to 16, width int(16 * 200 / 4)
    (200, 4, 800, 16),  # tall
    (5, 203, 16, 649),  # int(649.6): truncated, not rounded
])
def test_crop_fallback_offsets_are_the_official_random_crop(height, width, new_h, new_w):
  """No try fits: Resize(16) (shorter side 16, longer int(16 * long / short)), then the window at
  randint(0, new_w - 16), randint(0, new_h - 16) from the fill streams."""
  from PIL import Image
  frame = _noise(height, width)
  scaled = np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR)).astype(int)
  for seed in range(3):
    key = _key(seed, 17)
    assert not _official_crop_box(height, width, key)[4]
    fy = _randint(_fold(key, FILL_Y), new_h - 16)
    fx = _randint(_fold(key, FILL_X), new_w - 16)
    got = np.round(augment.random_sized_crop(frame[None], 16, key).numpy()[0]).astype(int)
    # PIL within 1; a window one pixel off differs by tens on noise (checked below).
    assert np.abs(got - scaled[fy:fy + 16, fx:fx + 16]).max() <= 1, seed
    for dy, dx in [(0, 1), (0, -1), (1, 0), (-1, 0)]:
      if 0 <= fy + dy <= new_h - 16 and 0 <= fx + dx <= new_w - 16:
        assert np.abs(got - scaled[fy + dy:fy + dy + 16, fx + dx:fx + dx + 16]).max() > 10


def test_crop_box_placement_reaches_both_ends():
  """x and y are randint(0, W - w) inclusive: over many draws on a frame where the box is small,
  0 and the far end W - w both occur for a box of a given size."""
  ends = set()
  for seed in range(400):
    key = _key(seed, 29)
    y, x, h, w, found = _box(3, 3, key)
    assert found and 0 <= x <= 3 - w and 0 <= y <= 3 - h
    if w == 1:
      ends.add(("x", x))
    if h == 1:
      ends.add(("y", y))
  assert {("x", 0), ("x", 2), ("y", 0), ("y", 2)} <= ends


# ------------------------------------------------------------ brightness, rotation and the flip


def test_brightness_and_rotation_draws_equal_the_official_uniforms():
  """factor = uniform(max(0, 1 - 0.5), 1 + 0.5), angle = uniform(-4, 4), float32, each from its
  own stream of the clip key; used as such by augment_clip."""
  for seed in range(20):
    clip = _key(seed, 8)
    u_b = _unit(_fold(clip, BRIGHTNESS), dtype=tf.float32)
    u_r = _unit(_fold(clip, ROTATION), dtype=tf.float32)
    assert float(augment.brightness_factor(_fold(clip, BRIGHTNESS))) == np.float32(
        u_b * np.float32(1.0) + np.float32(0.5))
    assert float(augment.rotation_angle(_fold(clip, ROTATION))) == np.float32(
        u_r * np.float32(8.0) + np.float32(-4.0))
  # Other strengths: the lower end is clipped at 0 (max(0, 1 - 1.5)).
  key = _key(1, 1)
  u = _unit(key, dtype=tf.float32)
  assert float(augment.brightness_factor(key, 1.5)) == np.float32(u * np.float32(2.5))
  assert float(augment.brightness_factor(key, 0.2)) == np.float32(u * np.float32(0.4) +
                                                                  np.float32(0.8))
  assert float(augment.rotation_angle(key, 10.0)) == np.float32(u * np.float32(20.0) - 10.0)


def test_flip_follows_the_coin_below_one_half():
  """Flip exactly when the stream's random() < 0.5, both outcomes occurring."""
  video = tf.constant(np.arange(12, dtype=np.float32).reshape(2, 1, 3, 2))
  outcomes = set()
  for seed in range(40):
    key = _key(seed, 4)
    coin = _unit(key, dtype=tf.float32) < 0.5
    got = augment.random_flip(video, key).numpy()
    expected = video.numpy()[:, :, ::-1] if coin else video.numpy()
    np.testing.assert_array_equal(got, expected)
    outcomes.add(bool(coin))
  assert outcomes == {True, False}


def _official_transform(frames, kind, size, clip):
  """The official op order in PIL, with the draws computed here from the clip key's streams."""
  from PIL import Image, ImageEnhance
  # hesp: HESP's flip -> resize -> crop, with the flip moved last (as the module documents: the
  # same law, since the crop's position is uniform).
  height, width = (size, size) if kind == "hesp" else frames.shape[1:3]
  y, x, h, w, found, _, _ = _official_crop_box(height, width, _fold(clip, CROP))
  assert found
  out = []
  for frame in frames:
    image = Image.fromarray(frame)
    if kind == "hesp":
      image = image.resize((size, size), Image.BILINEAR)
    if kind == "dfew":
      factor = np.float32(_unit(_fold(clip, BRIGHTNESS), dtype=tf.float32) + np.float32(0.5))
      image = ImageEnhance.Brightness(image).enhance(factor)
    if kind == "ferv39k":
      angle = np.float32(_unit(_fold(clip, ROTATION), dtype=tf.float32) * np.float32(8.0) - 4.0)
      image = image.rotate(float(angle))
    image = image.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)
    if _unit(_fold(clip, FLIP), dtype=tf.float32) < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    out.append(np.asarray(image))
  return np.stack(out).astype(int)


@pytest.mark.parametrize("kind", ["dfew", "ferv39k", "mafw", "hesp"])
def test_training_transform_equals_the_official_one_with_independent_draws(kind):
  """The whole clip against PIL with every draw taken from the seed here (not from the module):
  within 1 of PIL's resampling (hesp: 2, two resizes); a wrong draw (another box, a missed flip,
  another factor or angle) differs by tens on these noise frames."""
  frames = np.stack([_noise(30, 41, s) for s in range(2)])
  for seed in range(4):
    clip = _key(seed, 31)
    got = augment.augment_clip_uint8(frames, kind, 20, clip).numpy().astype(int)
    expected = _official_transform(frames, kind, 20, clip)
    tolerance = 2 if kind == "hesp" else 1
    assert np.abs(got - expected).max() <= tolerance, (kind, seed)
    # The planted error, a flip the other way: over 50 off, 25x the tolerance.
    assert np.abs(got - expected[:, :, ::-1]).max() > 50


# ------------------------------------------------------------------------------ frame sampling


def _official_train_offsets(n, key, segments, duration):
  """_get_train_indices, with randint fed the sampler key's streams."""
  average = (n - duration + 1) // segments
  if average > 0:
    return np.arange(segments) * average + _bits(_fold(key, JITTER), [segments]) % average
  if n > segments:
    return np.sort(_bits(_fold(key, SCATTER), [segments]) % (n - duration + 1))
  return np.pad(np.arange(n), (0, segments - n), "edge")


def _official_get(offsets, n, duration):
  """The official ``get``: each offset starts a run of ``duration`` frames that advances while
  before the last frame."""
  frames = []
  for start in offsets:
    p = int(start)
    for _ in range(duration):
      frames.append(p)
      if p < n - 1:
        p += 1
  return frames


@pytest.mark.parametrize("segments, duration", [(16, 1), (4, 3), (3, 2), (2, 3), (1, 1)])
def test_train_indices_equal_the_official_sampler_fed_the_same_draws(segments, duration):
  """Every length from 1 to 3 * segments + duration (so n = S - 1, S, S + 1, S + duration - 1
  and multiples of S included), four seeds each."""
  for n in range(duration, 3 * segments + duration + 2):
    for seed in range(4):
      key = _key(seed, 7)
      expected = _official_get(_official_train_offsets(n, key, segments, duration), n, duration)
      got = sampling.train_indices(n, key, num_segments=segments, duration=duration).numpy()
      assert got.tolist() == expected, (n, seed)


def test_train_indices_jitter_reaches_every_frame_of_every_segment():
  """n = 16 * 3 + 2: average 3, so segment i offers 3i, 3i + 1, 3i + 2 (the last segment ends at
  frame 47; 48 and 49 are never read), all drawn over 30 seeds."""
  seen = np.zeros((16, 3), bool)
  for seed in range(30):
    got = sampling.train_indices(50, _key(seed, 2)).numpy() - 3 * np.arange(16)
    assert ((got >= 0) & (got < 3)).all()
    seen[np.arange(16), got] = True
  assert seen.all()


@pytest.mark.parametrize("n, segments, duration, expected", [
    (15, 16, 1, list(range(15)) + [14]),  # n = S - 1: padded
    (16, 16, 1, list(range(16))),  # n = S: average 1, randint(1) = 0
    (17, 16, 1, list(range(16))),  # n = S + 1: average 1 still
    (3, 2, 3, [0, 1, 2, 0, 1, 2]),  # n = duration > S: average 0, sorted randint(1) = 0
    (4, 4, 3, [0, 1, 2, 1, 2, 3, 2, 3, 3, 3, 3, 3]),  # n = S: not above S, padded
])
def test_train_indices_at_the_branch_boundaries(n, segments, duration, expected):
  """Whatever the seed, at the lengths where the branches change."""
  for seed in range(6):
    got = sampling.train_indices(n, _key(seed, 1), num_segments=segments, duration=duration)
    assert got.numpy().tolist() == expected


def test_train_first_short_clips_read_frame_zero_only_when_short():
  """short_clips='first': a clip shorter than the segments is frame 0 (with its runs); a long one
  is the ordinary draw."""
  key = _key(4, 4)
  assert sampling.train_indices(15, key, short_clips="first").numpy().tolist() == [0] * 16
  got = sampling.train_indices(4, key, num_segments=4, duration=2, short_clips="first").numpy()
  assert got.tolist() == [0, 1] * 4
  np.testing.assert_array_equal(sampling.train_indices(40, key, short_clips="first"),
                                sampling.train_indices(40, key))


def _official_test_offsets(n, segments, duration, fraction=0.5):
  if n > segments + duration - 1:
    tick = (n - duration + 1) / float(segments)
    return [int(tick * fraction + tick * x) for x in range(segments)]
  if n > segments:  # S < n <= S + duration - 1: np.pad gets a negative width and the official
    return list(range(segments))  # loader fails; ours reads the first S offsets (documented)
  return np.pad(np.arange(n), (0, segments - n), "edge").tolist()


@pytest.mark.parametrize("segments, duration", [(16, 1), (4, 3), (5, 2)])
def test_test_indices_equal_the_official_formula_with_runs(segments, duration):
  """_get_test_indices then the official ``get``, for every length up to 4 * S."""
  for n in range(duration, 4 * segments + duration):
    expected = _official_get(_official_test_offsets(n, segments, duration), n, duration)
    got = sampling.test_indices(n, num_segments=segments, duration=duration).numpy()
    assert got.tolist() == [expected], n


def test_several_test_clips_equal_the_fraction_formula_for_every_length():
  """Clip c of K takes int(tick * (c + 0.5) / K + tick * i); too-short clips repeat the padding."""
  for clips in (2, 3):
    for n in range(1, 70):
      got = sampling.test_indices(n, num_clips=clips).numpy().tolist()
      expected = [_official_test_offsets(n, 16, 1, (c + 0.5) / clips) for c in range(clips)]
      assert got == expected, (clips, n)
  got = sampling.test_indices(9, num_segments=4, duration=2, num_clips=2).numpy().tolist()
  # tick = 8 / 4 = 2: offsets int(0.5 + 2i) = 0, 2, 4, 6 and int(1.5 + 2i) = 1, 3, 5, 7.
  assert got == [[0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]]


def test_test_first_short_clips_and_bad_arguments():
  """'first' pads with frame 0, on every clip; unknown short_clips and a zero duration fail."""
  assert sampling.test_indices(5, short_clips="first").numpy().tolist() == [[0] * 16]
  assert sampling.test_indices(16, num_clips=2, short_clips="first").numpy().tolist() == [[0] * 16] * 2
  assert sampling.test_indices(17, short_clips="first").numpy().tolist() == \
      sampling.test_indices(17).numpy().tolist()
  # Whole messages (pytest's match would accept text around them).
  with pytest.raises(ValueError) as err:
    sampling.train_indices(10, _key(0, 0), short_clips="last")
  assert str(err.value) == "short_clips='last': expected one of ('edge', 'first')"
  with pytest.raises(ValueError) as err:
    sampling.test_indices(10, duration=0)
  assert str(err.value) == "num_segments=16, duration=0: both must be at least 1"
  with pytest.raises(ValueError) as err:
    sampling.test_indices(10, num_segments=0)
  assert str(err.value) == "num_segments=0, duration=1: both must be at least 1"
  for clips in (0, -1):
    with pytest.raises(ValueError) as err:
      sampling.test_indices(10, num_clips=clips)
    assert str(err.value) == f"num_clips={clips}: expected at least 1"
  sampling.test_indices(10, num_segments=1, duration=1)  # the smallest valid values pass


# ---------------------------------------------------------------------------- validation hold-out


@pytest.mark.parametrize("count, fraction, expected", [
    (5, 0.5, 3),  # 2.5 rounds up (Python's round gives 2)
    (10, 0.25, 3),  # 2.5 again
    (9, 0.5, 5),  # 4.5 -> 5 (round: 4)
    (7, 0.5, 4),  # 3.5 -> 4 (round agrees)
    (10, 0.24, 2),  # 2.4 -> 2
    (10, 0.26, 3),  # 2.6 -> 3
    (3, 0.5, 2),  # 1.5 -> 2
    (2, 0.75, 1),  # 1.5 -> 2, capped: one clip stays
    (2, 0.5, 1),  # 1.0
    (4, 0.9, 3),  # 3.6 -> 4, capped at 3
    (1, 0.9, 0),  # 0.9 -> 1, capped at 0: a lone clip stays
    (0, 0.5, 0),  # no clips
    (5, 0.05, 0),  # 0.25 -> 0
    (10, 0.05, 1),  # 0.5 -> 1 (round: 0)
])
def test_validation_size_rounds_half_up_and_keeps_one_clip(count, fraction, expected):
  """floor(f * n + 1/2), at most n - 1."""
  assert holdout.validation_size(count, fraction) == expected


def _records(counts):
  # Classes interleaved in the list, so order and membership are both visible.
  records = []
  for i in range(max(counts.values())):
    for label, n in counts.items():
      if i < n:
        records.append(ClipRecord(f"/c{label}_{i}", 8 + i, label))
  return records


def test_split_validation_equals_the_per_class_seeded_permutation():
  """Per class (sorted labels), numpy's default_rng([seed, label]).permutation of the class's list
  positions, its first validation_size held out; train and validation both in list order."""
  counts = {3: 5, 0: 9, 5: 1, 1: 2, 2: 4}
  records = _records(counts)
  sizes = {3: 3, 0: 5, 5: 0, 1: 1, 2: 2}  # f = 0.5: 2.5 -> 3, 4.5 -> 5, cap 0, 1, 2
  for seed in (0, 1, 7):
    held = set()
    for label in sorted(counts):
      members = [i for i, r in enumerate(records) if r.label == label]
      order = np.random.default_rng([seed, label]).permutation(len(members))
      held.update(members[j] for j in order[:sizes[label]])
    train, val = holdout.split_validation(records, 0.5, seed)
    assert val == [r for i, r in enumerate(records) if i in held]
    assert train == [r for i, r in enumerate(records) if i not in held]
  # Another seed moves the split; the same seed does not.
  assert holdout.split_validation(records, 0.5, 0) == holdout.split_validation(records, 0.5, 0)
  assert holdout.split_validation(records, 0.5, 0)[1] != holdout.split_validation(records, 0.5, 1)[1]


def test_split_validation_of_one_class_does_not_depend_on_the_others():
  """Adding a class (here one drawn first, label 0) leaves every other class's held-out clips
  where they were."""
  records = _records({1: 6, 2: 4})
  more = _records({1: 6, 2: 4, 0: 5})
  val = holdout.split_validation(records, 0.4, 3)[1]
  assert [r for r in holdout.split_validation(more, 0.4, 3)[1] if r.label != 0] == val


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_validation_rejects_fractions_outside_zero_one(fraction):
  """Only 0 < f < 1; the message names the config field and the value."""
  with pytest.raises(ValueError) as err:
    holdout.split_validation(_records({0: 4}), fraction, 0, where="data.val")
  assert str(err.value) == (f"data.val={fraction}: expected a fraction in (0, 1), or 0 for no "
                            "validation set")


def test_split_validation_that_holds_out_nothing_fails_with_the_count():
  """Every class rounds to 0: an error naming the list's size, not an empty validation set."""
  records = _records({0: 2, 1: 1})
  with pytest.raises(ValueError) as err:
    holdout.split_validation(records, 0.2, 0)  # 0.4 -> 0 and 0.2 -> 0
  assert str(err.value) == ("config.data.val_fraction=0.2: holds out no clip of the 3 training "
                            "clips (each class keeps round(fraction * its clips)); use a larger "
                            "fraction")
  train, val = holdout.split_validation(records, 0.25, 0)  # 0.5 -> 1 for class 0
  assert len(val) == 1 and val[0].label == 0 and len(train) == 2
