"""Temperature scaling (calibration.py) by hand: the optimum of a case with a closed form, an
over-confident model cooled, K clips' softmaxes averaged; the figures against hand numbers."""

import math

import numpy as np
import pytest

from dferclip_jax import calibration


def test_the_fitted_temperature_has_the_closed_form_optimum():
  """Every clip has logits (4, 0); 3 of 4 are class 0. The NLL is least where the predicted
  probability equals the accuracy: sigmoid(4 / T) = 3/4, T = 4 / ln 3."""
  logits = np.tile([[4.0, 0.0]], (8, 1))
  labels = np.array([0, 0, 0, 1, 0, 0, 0, 1])
  assert calibration.fit_temperature(logits, labels) == pytest.approx(4 / math.log(3), rel=1e-6)


def test_an_over_confident_model_is_cooled_and_its_nll_falls():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 400)
  clean = rng.standard_normal((400, 5)) + 1.5 * np.eye(5)[labels]  # about 60% right
  logits = 8.0 * clean  # deliberately over-confident
  t = calibration.fit_temperature(logits, labels)
  raw = calibration.figures(calibration.probabilities(logits), labels)
  scaled = calibration.figures(calibration.probabilities(logits, t), labels)
  assert 4.0 < t < 16.0  # the model was made 8x too sharp
  assert scaled["nll"] < 0.6 * raw["nll"] and scaled["ece"] < raw["ece"] / 2
  # T is the minimum: a little either side is worse.
  for other in (0.9 * t, 1.1 * t):
    assert calibration.nll(calibration.probabilities(logits, other), labels) > scaled["nll"]
  # The predictions, and so UAR/WAR, do not move.
  np.testing.assert_array_equal(calibration.probabilities(logits, t).argmax(1), logits.argmax(1))


def test_k_clips_average_their_scaled_softmaxes():
  logits = np.array([[[2.0, 0.0], [0.0, 2.0]]])  # one video, two clips that disagree
  by_hand = np.array([[0.5 * (1 / (1 + math.exp(-1))) + 0.5 * (1 / (1 + math.exp(1))), 0.5]])
  by_hand[0, 1] = 1 - by_hand[0, 0]
  np.testing.assert_allclose(calibration.probabilities(logits, 2.0), by_hand, rtol=1e-12)


def test_figures_by_hand():
  probs = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.05, 0.92, 0.03]])
  labels = np.array([0, 0, 2])
  got = calibration.figures(probs, labels)
  # Bins 7 (0.5, right) and 13 (0.9 right, 0.92 wrong).
  assert got["ece"] == pytest.approx(100 * (0.5 + 2 * abs(0.5 - 0.91)) / 3)
  assert got["nll"] == pytest.approx(-np.mean(np.log([0.5, 0.9, 0.03])))
  assert got["brier"] == pytest.approx((0.38 + 0.015 + 1.7898) / 3)
  with pytest.raises(ValueError, match="at least one validation clip"):
    calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
