"""Closed-set (WAR/UAR) and open-set (AUROC/OSCR) metrics on hand-computed cases and definitions."""

import numpy as np
import pytest

from dferclip_jax import metrics


def test_war_uar_by_hand():
  # class 0: 3 clips, 2 right; class 1: 1 clip, right; class 2: 2 clips, 0 right.
  labels = [0, 0, 0, 1, 2, 2]
  preds = [0, 0, 1, 1, 0, 1]
  cm = metrics.confusion_matrix(labels, preds, 3)
  assert cm.tolist() == [[2, 1, 0], [0, 1, 0], [1, 1, 0]]
  assert metrics.war(cm) == pytest.approx(100 * 3 / 6)
  assert metrics.uar(cm) == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
  report = metrics.classification_report(cm, ["a", "b", "c"])
  assert report["recall"] == {"a": pytest.approx(200 / 3), "b": 100.0, "c": 0.0}
  assert report["num_clips"] == 6


def test_mask_and_absent_class():
  cm = metrics.confusion_matrix([0, 1, 1, 0], [0, 1, 0, 1], 3, mask=[True, True, True, False])
  assert cm.sum() == 3
  # Class 2 has no test clip: it is not scored (NaN recall), UAR averages the others.
  assert np.isnan(metrics.per_class_recall(cm)[2])
  assert metrics.uar(cm) == pytest.approx((100 + 50) / 2)
  with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
    metrics.confusion_matrix([0, 3], [0, 0], 3)


def brute_force_rate(pos, neg, weights=None):
  weights = np.ones(len(pos)) if weights is None else np.asarray(weights, float)
  total = 0.0
  for p, w in zip(pos, weights):
    for n in neg:
      total += w * (1.0 if p > n else 0.5 if p == n else 0.0)
  return 100 * total / (len(pos) * len(neg))


def test_auroc_hand_cases():
  assert metrics.auroc([0.9, 0.8], [0.1, 0.2, 0.3]) == 100.0  # perfect separation
  assert metrics.auroc([0.1, 0.2], [0.8, 0.9]) == 0.0         # reversed
  assert metrics.auroc([0.5, 0.5], [0.5, 0.5, 0.5]) == 50.0    # all tied
  assert metrics.auroc([0.5, 0.9], [0.5]) == pytest.approx(75.0)  # one tie counts half


def test_oscr_hand_cases():
  known = np.array([[5.0, 1.0], [0.0, 4.0]])
  unknown = np.array([[1.0, 0.5], [0.2, 0.1]])
  assert metrics.oscr(known, unknown, [0, 1]) == 100.0  # all correct, all above unknowns
  # One wrong known clip: it can never count as correctly classified.
  assert metrics.oscr(known, unknown, [0, 0]) == pytest.approx(50.0)
  # Everything tied and correct: half.
  tied = np.array([[1.0, 0.0], [1.0, 0.0]])
  assert metrics.oscr(tied, tied, [0, 0]) == pytest.approx(50.0)
  with pytest.raises(ValueError, match="same C"):
    metrics.oscr(known, unknown[:, :1], [0, 1])


def test_against_definitions_on_random_data():
  rng = np.random.default_rng(0)
  for _ in range(5):
    nk, nu, c = rng.integers(5, 40), rng.integers(5, 40), 4
    # Rounded scores make ties frequent, which is where threshold loops go wrong.
    known = np.round(rng.normal(1.0, 1.0, (nk, c)), 1)
    unknown = np.round(rng.normal(0.0, 1.0, (nu, c)), 1)
    labels = rng.integers(0, c, nk)
    sk, su = known.max(1), unknown.max(1)
    assert metrics.auroc(sk, su) == pytest.approx(brute_force_rate(sk, su))
    correct = known.argmax(1) == labels
    assert metrics.oscr(known, unknown, labels) == pytest.approx(brute_force_rate(sk, su, correct))
    # OSCR is AUROC restricted to correctly classified knowns: never above it.
    assert metrics.oscr(known, unknown, labels) <= metrics.auroc(sk, su) + 1e-9


def test_open_set_input_errors():
  with pytest.raises(ValueError, match="at least one known and one unknown"):
    metrics.auroc([], [0.1])
  with pytest.raises(ValueError, match="finite"):
    metrics.auroc([np.nan], [0.1])


def test_max_softmax():
  probs = metrics.max_softmax(np.array([[0.0, 0.0], [10.0, 0.0]]))
  np.testing.assert_allclose(probs, [0.5, 1 / (1 + np.exp(-10))])


# ----------------------------------------------------------------------------- edges (mutation-tested)


def test_report_keys_and_empty_matrices():
  cm = np.array([[1, 1], [0, 2]])
  report = metrics.classification_report(cm, ["a", "b"])
  assert report["war"] == pytest.approx(75.0) and report["uar"] == pytest.approx(75.0)
  assert report["confusion_matrix"] == [[1, 1], [0, 2]]
  empty = np.zeros((2, 2), np.int64)
  assert np.isnan(metrics.war(empty)) and np.isnan(metrics.uar(empty))
  with pytest.raises(ValueError, match="3 class names for a 2-class confusion matrix"):
    metrics.classification_report(cm, ["a", "b", "c"])


def test_out_of_range_labels_and_predictions_are_named():
  with pytest.raises(ValueError, match=r"a label is outside \[0, 2\): -1\.\.1"):
    metrics.confusion_matrix([-1, 1], [0, 0], 2)
  with pytest.raises(ValueError, match=r"a prediction is outside \[0, 2\): 0\.\.2"):
    metrics.confusion_matrix([0, 1], [0, 2], 2)
  assert metrics.confusion_matrix([0, 1], [0, 1], 2).tolist() == [[1, 0], [0, 1]]  # 0 is a class


def test_open_set_inputs_are_checked():
  assert metrics.auroc([0.9], [0.1, 0.95]) == pytest.approx(50.0)  # one known clip is enough
  with pytest.raises(ValueError, match=r"need at least one known and one unknown score \(got 0 known, 2 unknown\)"):
    metrics.auroc([], [0.1, 0.2])
  with pytest.raises(ValueError, match=r"must be finite \(found NaN or inf\)"):
    metrics.auroc([np.nan], [0.1])
  with pytest.raises(ValueError, match=r"oscr takes \[N, C\] scores .* got \(2,\) and \(1, 2\)"):
    metrics.oscr(np.zeros(2), np.zeros((1, 2)), [0, 1])
  with pytest.raises(ValueError, match="3 labels for 2 known clips"):
    metrics.oscr(np.zeros((2, 3)), np.zeros((1, 3)), [0, 1, 1])


def test_max_softmax_is_stable_and_works_on_one_clip():
  np.testing.assert_allclose(metrics.max_softmax([[1000.0, 0.0], [0.0, 0.0]]), [1.0, 0.5])
  assert metrics.max_softmax(np.log([1.0, 3.0])) == pytest.approx(0.75)  # a single [C] row


def test_log_softmax_scores_keep_the_order_a_saturated_softmax_loses():
  # Two classes, gaps of 50 and 60 (x100-scaled logits): both softmax maxima round to exactly 1.0,
  # yet the first clip is less sure. By hand: log p_max = -log(1 + e^-gap) = -e^-gap to first order.
  logits = np.array([[50.0, 0.0], [0.0, 60.0]])
  assert metrics.max_softmax(logits)[0] == metrics.max_softmax(logits)[1] == 1.0
  scores = metrics.log_softmax_scores(logits)
  np.testing.assert_allclose(scores.max(1), [-np.exp(-50.0), -np.exp(-60.0)], rtol=1e-12)
  np.testing.assert_allclose(scores[0, 1], -50.0 - np.exp(-50.0), rtol=1e-12)
  assert scores.argmax(1).tolist() == [0, 1]
  # Unsaturated rows are plain log-probabilities: log(1/4), log(3/4).
  np.testing.assert_allclose(metrics.log_softmax_scores(np.log([[1.0, 3.0]])), np.log([[0.25, 0.75]]))
  # Ranked by them, AUROC sees the order (100: the known clip is surer) instead of a tie (50).
  known, unknown = metrics.log_softmax_scores([[0.0, 60.0]]), metrics.log_softmax_scores([[50.0, 0.0]])
  assert metrics.auroc(known.max(1), unknown.max(1)) == 100.0
  assert metrics.auroc(metrics.max_softmax([[0.0, 60.0]]), metrics.max_softmax([[50.0, 0.0]])) == 50.0


# ----------------------------------------------------------------------------- HESP's figures by their definitions


def hesp_auroc_by_pairs(known, unknown):
  """HESP's AUROC by its definition, pair by pair: a known clip scored above an unknown one counts
  1, a tie 0 (HESP's curve passes the known score first on a tie)."""
  pairs = [(k > u) for k in np.ravel(known) for u in np.ravel(unknown)]
  return 100.0 * sum(pairs) / len(pairs)


def hesp_oscr_by_points(known_logits, unknown_logits, labels):
  """HESP's OSCR as docs/openset.md describes it: scores sorted ascending (numpy's default sort, as
  HESP's), one (FPR, CCR) point per cut k < n - 1 with the unknown clips counted from k on and the
  correct known clips above k, the points (0, 0), (0, 0), (1, 1) added, trapezoids over the
  points in descending order."""
  known_logits, unknown_logits = np.asarray(known_logits), np.asarray(unknown_logits)
  scores = np.concatenate([known_logits.max(1), unknown_logits.max(1)])
  correct = list(known_logits.argmax(1) == np.asarray(labels)) + [False] * len(unknown_logits)
  unknown = [False] * len(known_logits) + [True] * len(unknown_logits)
  order = np.argsort(scores)
  correct, unknown = [correct[i] for i in order], [unknown[i] for i in order]
  n, n_known, n_unknown = len(scores), len(known_logits), len(unknown_logits)
  points = [(sum(unknown[k:]) / n_unknown, sum(correct[k + 1:]) / n_known) for k in range(n - 1)]
  points = sorted(points + [(0.0, 0.0), (0.0, 0.0), (1.0, 1.0)], reverse=True)
  return 100.0 * sum((a[0] - b[0]) * (a[1] + b[1]) / 2 for a, b in zip(points, points[1:]))


def test_hesp_auroc_and_oscr_equal_their_definitions_on_random_tied_scores():
  """auroc_hesp / oscr_hesp equal their definitions, with ties, wrong predictions and uneven
  known/unknown counts (1 known vs 1 unknown included). Both figures are multiples of
  100 / (2 n_k n_u), >= 0.03 points for n <= 39, so a planted bug (a tie counted 1/2, a cut moved
  by one position) is off by at least that; the tolerance is 1e-9 points."""
  rng = np.random.default_rng(7)
  cases = [(1, 1), (2, 1), (1, 3)] + [tuple(rng.integers(2, 40, 2)) for _ in range(12)]
  for nk, nu in cases:
    c = 3
    known = np.round(rng.normal(0.8, 1.0, (nk, c)), 1)  # rounded: many known/unknown ties
    unknown = np.round(rng.normal(0.0, 1.0, (nu, c)), 1)
    labels = rng.integers(0, c, nk)
    sk, su = known.max(1), unknown.max(1)
    assert metrics.auroc_hesp(sk, su) == pytest.approx(hesp_auroc_by_pairs(sk, su), abs=1e-9)
    assert metrics.oscr_hesp(known, unknown, labels) == pytest.approx(
        hesp_oscr_by_points(known, unknown, labels), abs=1e-9)
  # A 2-D [N, 1] score array is read as N scores, as auroc reads it.
  assert metrics.auroc_hesp([[0.6], [0.7]], [[0.5], [0.65]]) == 75.0


def test_hesp_metrics_check_their_inputs_as_the_exact_ones():
  with pytest.raises(ValueError, match=r"^need at least one known and one unknown score \(got 2 known, 0 unknown\)$"):
    metrics.auroc_hesp([0.1, 0.2], [])
  with pytest.raises(ValueError, match=r"^open-set scores must be finite \(found NaN or inf\)$"):
    metrics.auroc_hesp([0.1], [np.inf])
  with pytest.raises(ValueError, match=r"^3 labels for 2 known clips$"):
    metrics.oscr_hesp(np.zeros((2, 3)), np.zeros((1, 3)), [0, 1, 1])


def test_error_messages_are_whole_sentences():
  """Anchored: the message is exactly the sentence, nothing glued before or after it."""
  with pytest.raises(ValueError, match=r"^a label is outside \[0, 2\): -1\.\.1$"):
    metrics.confusion_matrix([-1, 1], [0, 0], 2)
  with pytest.raises(ValueError, match=r"^3 class names for a 2-class confusion matrix$"):
    metrics.classification_report(np.eye(2, dtype=np.int64), ["a", "b", "c"])
  with pytest.raises(ValueError, match=r"^open-set scores must be finite \(found NaN or inf\)$"):
    metrics.auroc([0.1], [np.nan])
  with pytest.raises(ValueError, match=r"^3 labels for 2 known clips$"):
    metrics.oscr(np.zeros((2, 3)), np.zeros((1, 3)), [0, 1, 1])
  with pytest.raises(ValueError, match=r"^oscr takes \[N, C\] scores for known and unknown clips with the same C; "
                     r"got \(2, 3\) and \(1, 2\)$"):
    metrics.oscr(np.zeros((2, 3)), np.zeros((1, 2)), [0, 1])
  with pytest.raises(ValueError, match=r"^need at least one known and one unknown score \(got 0 known, 2 unknown\)$"):
    metrics.auroc([], [0.1, 0.2])


def test_log_softmax_scores_take_any_leading_shape_with_classes_last():
  """One clip's [C] row and a [B, N, C] stack give the log-probabilities of each row over its last
  axis, by hand: log([1, 3, 4] / 8). (Planted: the class axis read as axis 1, which is the clip
  axis of [B, N, C] and absent in [C].)"""
  row = np.log([1.0, 3.0, 4.0])
  np.testing.assert_allclose(metrics.log_softmax_scores(row), np.log([1 / 8, 3 / 8, 4 / 8]), rtol=1e-12)
  stack = np.stack([np.stack([row, row[::-1]]), np.stack([row[[1, 0, 2]], row + 5.0])])  # [2, 2, 3]
  expected = np.log(np.array([[[1, 3, 4], [4, 3, 1]], [[3, 1, 4], [1, 3, 4]]]) / 8)
  np.testing.assert_allclose(metrics.log_softmax_scores(stack), expected, rtol=1e-12)
