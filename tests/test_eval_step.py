"""The evaluation step on hand-made predictions: confusion-matrix orientation ([true, predicted]),
the padding mask, the summed loss, and multi-clip averaging of softmax probabilities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dferclip_jax import evaluation, metrics
from dferclip_jax import inference
from dferclip_jax.train import sharding


class LogitsInPixels:
  """A stand-in model whose logits are the first pixel of the first frame: [N, T, H, W, C] -> [N, C]."""
  num_classes = 3

  def apply(self, variables, video, **_):
    del variables
    return video[:, 0, 0, 0, :].astype(jnp.float32)


def video_with_logits(logits):
  """[N, C] logits -> a [N, 2, 1, 1, C] float video whose first pixel carries them."""
  logits = np.asarray(logits, np.float32)
  return np.broadcast_to(logits[:, None, None, None, :], (logits.shape[0], 2, 1, 1, logits.shape[1])).copy()


# Six real clips and two padding rows; padding must count nowhere.
LABELS = np.array([0, 0, 1, 2, 2, 2, 1, 0], np.int32)
PREDICTED = np.array([0, 1, 1, 2, 0, 2, 2, 2])
MASK = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
# By hand, rows = true class, columns = predicted class, padding left out:
EXPECTED_CM = np.array([[1, 1, 0],
                        [0, 1, 0],
                        [1, 0, 2]])


def batch():
  logits = 5.0 * np.eye(3, dtype=np.float32)[PREDICTED]
  return {"video": video_with_logits(logits), "label": LABELS, "mask": MASK}


def test_eval_step_confusion_orientation_mask_and_loss():
  step = jax.jit(inference.make_eval_step(LogitsInPixels(), 3))
  totals = step({}, batch(), inference.empty_eval_totals(3))
  cm = np.rint(np.asarray(totals["confusion"])).astype(int)
  np.testing.assert_array_equal(cm, EXPECTED_CM)
  # Softmax of (5, 0, 0): the true class gets e^5 / (e^5 + 2) when predicted, 1 / (e^5 + 2) when not.
  right, wrong = -math.log(math.exp(5) / (math.exp(5) + 2)), -math.log(1 / (math.exp(5) + 2))
  assert float(totals["loss_sum"]) == pytest.approx(4 * right + 2 * wrong, rel=1e-5)
  # A second batch accumulates.
  totals = step({}, batch(), totals)
  np.testing.assert_array_equal(np.rint(np.asarray(totals["confusion"])).astype(int), 2 * EXPECTED_CM)


def test_evaluate_batches_reports_recall_not_precision():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  step = jax.jit(inference.make_eval_step(LogitsInPixels(), 3))
  cm, loss, _ = evaluation.evaluate_batches(step, {}, [batch()], mesh, 3, progress=False)
  np.testing.assert_array_equal(cm, EXPECTED_CM)
  report = metrics.classification_report(cm, ["a", "b", "c"])
  # Recall by hand: a 1/2, b 1/1, c 2/3 (precision would be a 1/2, b 1/2, c 2/2).
  assert report["recall"] == pytest.approx({"a": 50.0, "b": 100.0, "c": 200.0 / 3})
  assert report["uar"] == pytest.approx((50.0 + 100.0 + 200.0 / 3) / 3)
  assert report["war"] == pytest.approx(100.0 * 4 / 6) and report["num_clips"] == 6
  assert loss == pytest.approx((4 * -math.log(math.exp(5) / (math.exp(5) + 2))
                                + 2 * -math.log(1 / (math.exp(5) + 2))) / 6, rel=1e-5)


def test_k_clips_average_k_separate_softmaxes():
  # Clip 0 alone says class 0, clip 1 says class 1 (confidently): the average of the two softmaxes
  # says class 1 -- and it is not the softmax of the averaged logits either.
  per_clip = np.array([[[1.0, 0.0, 0.0], [0.0, 5.0, 0.0]],
                       [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]], np.float32)   # [N=2, K=2, C=3]
  video = np.stack([video_with_logits(per_clip[:, k]) for k in range(2)], axis=1)  # [N, K, T, 1, 1, C]
  probs = np.asarray(inference.clip_probabilities(LogitsInPixels(), {}, jnp.asarray(video)))

  def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]

  expected = [[(a + b) / 2 for a, b in zip(softmax(n[0]), softmax(n[1]))] for n in per_clip.tolist()]
  np.testing.assert_allclose(probs, expected, rtol=1e-6)
  assert probs[0].argmax() == 1
  # Through the eval step: clip averaging decides the prediction.
  step = jax.jit(inference.make_eval_step(LogitsInPixels(), 3))
  totals = step({}, {"video": video, "label": np.array([1, 2], np.int32), "mask": np.ones(2, bool)},
                inference.empty_eval_totals(3))
  np.testing.assert_array_equal(np.rint(np.asarray(totals["confusion"])), [[0, 0, 0], [0, 1, 0], [0, 0, 1]])


# Calibration: probabilities chosen by hand (logits = their logs), two real clips in one bin
# (0.9 right, 0.92 wrong: bin 13 of 15), two padding rows that would land in bin 14.
CAL_PROBS = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.05, 0.92, 0.03], [0.2, 0.7, 0.1],
                      [0.34, 0.33, 0.33], [0.1, 0.1, 0.8], [0.98, 0.01, 0.01], [0.98, 0.01, 0.01]])
CAL_LABELS = np.array([0, 0, 2, 1, 1, 2, 1, 1], np.int32)


def test_calibration_figures_by_hand():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  step = jax.jit(inference.make_eval_step(LogitsInPixels(), 3))
  calibrated = {"video": video_with_logits(np.log(CAL_PROBS)), "label": CAL_LABELS, "mask": MASK}
  cm, loss, calibration = evaluation.evaluate_batches(step, {}, [calibrated], mesh, 3, progress=False)
  # ECE: bins 7 (0.5, right), 13 (0.9 right and 0.92 wrong: accuracy 1/2, confidence 0.91),
  # 10 (0.7 right), 5 (0.34 wrong), 12 (0.8 right), each weighted by its share of the 6 clips.
  # Per-clip gaps instead of per-bin ones give 0.51 for bin 13 instead of 0.41: ECE 37.67 not 36.
  assert calibration["ece"] == pytest.approx(100 * (0.5 + 2 * 0.41 + 0.3 + 0.34 + 0.2) / 6, abs=1e-4)
  nll = -np.mean(np.log([0.5, 0.9, 0.03, 0.7, 0.33, 0.8]))
  assert calibration["nll"] == pytest.approx(nll, rel=1e-5) and loss == pytest.approx(nll, rel=1e-5)
  # Brier: the squared distances to the one-hot labels, written out row by row.
  brier = [0.25 + 0.09 + 0.04, 0.01 + 0.0025 + 0.0025, 0.0025 + 0.8464 + 0.9409, 0.04 + 0.09 + 0.01,
           0.1156 + 0.4489 + 0.1089, 0.01 + 0.01 + 0.04]
  assert calibration["brier"] == pytest.approx(sum(brier) / 6, rel=1e-5)
  bins = calibration["reliability"]
  assert len(bins) == 15 and [b["clips"] for b in bins] == [0] * 5 + [1, 0, 1, 0, 0, 1, 0, 1, 2, 0]
  assert bins[13]["accuracy"] == pytest.approx(50.0) and bins[13]["confidence"] == pytest.approx(91.0, abs=1e-4)
  assert bins[13]["bin"] == [13 / 15, 14 / 15] and bins[0]["confidence"] is None
