"""Frame sampling against the official formulas, on hand-checked clips (short, exact, long)."""

import numpy as np
import pytest
import tensorflow as tf

from dferclip_jax.data import sampling


def _train(n, seed=0, **kw):
  return sampling.train_indices(n, tf.constant([seed, 7], tf.int64), **kw).numpy().tolist()


def _test(n, **kw):
  return sampling.test_indices(n, **kw).numpy().tolist()


def test_train_long_clip_draws_one_frame_in_each_segment():
  # n=40: average_duration = 40 // 16 = 2, so segment i offers frames 2i and 2i+1.
  seen = set()
  for seed in range(40):
    indices = _train(40, seed)
    assert len(indices) == 16
    for i, frame in enumerate(indices):
      assert frame in (2 * i, 2 * i + 1)
      seen.add((i, frame))
  assert len(seen) == 32  # both frames of every segment get drawn


def test_train_average_one_is_the_first_sixteen_frames():
  # n=16..31: average_duration = 1, randint(1) = 0: frames 0..15 whatever the seed.
  for n in (16, 20, 31):
    for seed in range(3):
      assert _train(n, seed) == list(range(16))


def test_train_long_clip_offsets_for_n_100():
  # n=100: average 6; segment i covers 6i..6i+5 (the last 4 frames are never read, as officially).
  for seed in range(5):
    indices = np.array(_train(100, seed))
    assert ((indices - 6 * np.arange(16) >= 0) & (indices - 6 * np.arange(16) < 6)).all()


@pytest.mark.parametrize("n, expected", [
    (1, [0] * 16),
    (5, [0, 1, 2, 3, 4] + [4] * 11),
    (15, list(range(15)) + [14]),
])
def test_short_clips_repeat_their_last_frame(n, expected):
  assert _train(n) == expected
  assert _test(n) == [expected]


def test_train_sorted_random_branch_needs_duration_above_one():
  # S=4, duration=3, n=5: average = (5 - 3 + 1) // 4 = 0 and n > 4: sorted randint(3) offsets,
  # each followed by two more frames.
  offsets = set()
  for seed in range(30):
    indices = np.array(_train(5, seed, num_segments=4, duration=3)).reshape(4, 3)
    starts = indices[:, 0]
    assert (np.diff(starts) >= 0).all() and starts.min() >= 0 and starts.max() <= 2
    np.testing.assert_array_equal(indices, np.minimum(starts[:, None] + np.arange(3), 4))
    offsets.update(starts.tolist())
  assert offsets == {0, 1, 2}


def test_duration_runs_stop_at_the_last_frame():
  # S=4, duration=3, n=3: padded offsets 0,1,2,2; a run advances only while before the last frame.
  assert _train(3, num_segments=4, duration=3) == [0, 1, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2]
  assert _test(3, num_segments=4, duration=3) == [[0, 1, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2]]


def test_test_takes_the_middle_of_each_segment():
  # tick = 40 / 16 = 2.5: int(1.25 + 2.5 i).
  assert _test(40) == [[1, 3, 6, 8, 11, 13, 16, 18, 21, 23, 26, 28, 31, 33, 36, 38]]
  # tick = 17 / 16 = 1.0625: int(0.53125 + 1.0625 i) skips frame 8.
  assert _test(17) == [[0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]]
  # Exactly 16 frames is not more than 16: the padding branch, which reads 0..15.
  assert _test(16) == [list(range(16))]


def test_test_indices_equal_the_formula_for_every_length():
  for n in range(1, 300):
    if n > 16:
      tick = n / 16.0
      expected = [int(tick / 2.0 + tick * x) for x in range(16)]
    else:
      expected = [min(x, n - 1) for x in range(16)]
    assert _test(n) == [expected], n


def test_several_test_clips_take_evenly_spread_offsets():
  clips = np.array(_test(40, num_clips=2))
  assert clips.shape == (2, 16)
  # fractions 1/4 and 3/4 of each 2.5-frame segment.
  assert clips[0].tolist() == [int(2.5 * 0.25 + 2.5 * x) for x in range(16)]
  assert clips[1].tolist() == [int(2.5 * 0.75 + 2.5 * x) for x in range(16)]
  assert (clips[0] <= clips[1]).all() and (clips[0] != clips[1]).any()
  three = np.array(_test(100, num_clips=3))
  assert three[1].tolist() == _test(100)[0]  # the middle clip is the official one
  assert np.array(_test(7, num_clips=3)).tolist() == [_test(7)[0]] * 3  # too short: same clip


def test_bad_arguments_fail():
  with pytest.raises(ValueError, match="num_clips"):
    sampling.test_indices(10, num_clips=0)
  with pytest.raises(ValueError, match="num_segments"):
    sampling.train_indices(10, [0, 0], num_segments=0)


def test_duration_two_and_a_single_segment_by_hand():
  # S=4, duration=2, n=10 (> S + 2 - 1): tick = 9 / 4 = 2.25, offsets int(1.125 + 2.25 i) = 1, 3, 5, 7.
  assert _test(10, num_segments=4, duration=2) == [[1, 2, 3, 4, 5, 6, 7, 8]]
  # S=4, duration=2, n=4: average = 3 // 4 = 0 and n is not above S: padded offsets 0..3, each a run
  # of two frames that stops at the last one -- whatever the seed.
  for seed in range(5):
    assert _train(4, seed, num_segments=4, duration=2) == [0, 1, 1, 2, 2, 3, 3, 3]
  # One segment: its middle (test) and the only full-length draw (train: average = n).
  assert _test(5, num_segments=1) == [[2]]
  assert 0 <= _train(5, num_segments=1)[0] < 5
