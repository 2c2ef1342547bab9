"""Evaluation metrics, in percent, as the papers report them.

Closed-set (DFER-CLIP): WAR is the plain accuracy; UAR is the mean over classes of the per-class
recall (the diagonal of the row-normalised confusion matrix). The official code computes the
confusion matrix over the labels present in targets or predictions; a class present in neither
cannot be scored, so here the mean runs over classes with at least one test clip (the same
number whenever every class is in the test set, as in DFEW, FERV39k and MAFW).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int, mask=None) -> np.ndarray:
  """Counts [true, predicted]; ``mask`` (bool) drops padding entries."""
  labels = np.asarray(labels).reshape(-1)
  predictions = np.asarray(predictions).reshape(-1)
  if mask is not None:
    keep = np.asarray(mask, dtype=bool).reshape(-1)
    labels, predictions = labels[keep], predictions[keep]
  for name, values in (("label", labels), ("prediction", predictions)):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"a {name} is outside [0, {num_classes}): {values.min()}..{values.max()}")
  cm = np.zeros((num_classes, num_classes), dtype=np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


CALIBRATION_BINS = 15  # ECE's equal-width bins over the top-class probability


def calibration_bins(probs, labels, num_bins: int = CALIBRATION_BINS) -> np.ndarray:
  """[num_bins, 3]: per equal-width bin of the top-class probability ([k/B, (k+1)/B), 1.0 in the
  last), the clips in it, their summed confidence, their correct ones. (The eval step
  accumulates the same on the devices.)"""
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels).reshape(-1)
  confidence = probs.max(-1)
  bins = np.minimum(np.floor(confidence * num_bins), num_bins - 1).astype(int)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  out = np.zeros((num_bins, 3))
  np.add.at(out, bins, np.stack([np.ones_like(confidence), confidence, correct], -1))
  return out


def calibration_report(bins: np.ndarray, nll: float, brier_sum: float) -> dict:
  """ECE (percent, over the bins of ``calibration_bins``), NLL (mean, natural log), the Brier
  score (mean over clips of the squared distance between the probabilities and the one-hot
  label), and the reliability bins (each bin's clips, mean confidence and accuracy in percent)."""
  bins = np.asarray(bins, np.float64)
  count, confidence, correct = bins[:, 0], bins[:, 1], bins[:, 2]
  n = count.sum()
  if n <= 0:
    return {"ece": None, "nll": None, "brier": None, "reliability": []}
  with np.errstate(invalid="ignore", divide="ignore"):
    gap = np.where(count > 0, np.abs(correct - confidence) / np.maximum(count, 1e-12), 0.0)
  num_bins = len(bins)
  reliability = [{"bin": [k / num_bins, (k + 1) / num_bins], "clips": int(round(c)),
                  "confidence": 100.0 * conf / c if c else None, "accuracy": 100.0 * acc / c if c else None}
                 for k, (c, conf, acc) in enumerate(zip(count, confidence, correct))]
  return {"ece": float(100.0 * np.sum(count / n * gap)), "nll": float(nll), "brier": float(brier_sum / n),
          "reliability": reliability}


def per_class_recall(cm: np.ndarray) -> np.ndarray:
  """Recall of each class in percent; NaN for a class with no test clip."""
  support = cm.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(support > 0, 100.0 * np.diag(cm) / np.maximum(support, 1), np.nan)


def war(cm: np.ndarray) -> float:
  total = cm.sum()
  return float(100.0 * np.trace(cm) / total) if total else float("nan")


def uar(cm: np.ndarray) -> float:
  recall = per_class_recall(cm)
  return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")


def classification_report(cm: np.ndarray, class_names: Sequence[str]) -> dict:
  """The numbers a run logs: WAR, UAR, recall per class (by name) and the matrix itself."""
  if len(class_names) != cm.shape[0]:
    raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
  recall = per_class_recall(cm)
  return {
      "war": war(cm),
      "uar": uar(cm),
      "recall": {name: (None if np.isnan(r) else float(r)) for name, r in zip(class_names, recall)},
      "confusion_matrix": cm.tolist(),
      "num_clips": int(cm.sum()),
  }


# ----------------------------------------------------------------------------- open set (HESP)
#
# Both open-set numbers are areas under a curve swept by a threshold on a "known-ness" score, and
# both equal a pairwise probability: AUROC = P(s_known > s_unknown), OSCR = P(s_known > s_unknown
# and the known clip is classified correctly), over all (known, unknown) pairs, a tie counting one
# half. Computed that way (by binary search over the sorted unknown scores) they are exact with
# ties and O(n log n), unlike threshold loops that break ties by sort order.


def _pairwise_rate(positive, negative, weights=None) -> float:
  positive = np.asarray(positive, dtype=np.float64).reshape(-1)
  negative = np.sort(np.asarray(negative, dtype=np.float64).reshape(-1))
  if positive.size == 0 or negative.size == 0:
    raise ValueError(f"need at least one known and one unknown score "
                     f"(got {positive.size} known, {negative.size} unknown)")
  if not (np.isfinite(positive).all() and np.isfinite(negative).all()):
    raise ValueError("open-set scores must be finite (found NaN or inf)")
  below = np.searchsorted(negative, positive, side="left")
  tied = np.searchsorted(negative, positive, side="right") - below
  wins = below + 0.5 * tied
  if weights is not None:
    wins = wins * np.asarray(weights, dtype=np.float64).reshape(-1)
  return float(wins.sum() / (positive.size * negative.size))


def auroc(known_scores, unknown_scores) -> float:
  """AUROC (percent) of telling known from unknown clips by a score (higher = more known)."""
  return 100.0 * _pairwise_rate(known_scores, unknown_scores)


def oscr(known_logits, unknown_logits, known_labels) -> float:
  """Open-set classification rate (percent): the area under correct-classification rate vs
  false-positive rate. Takes per-class scores (logits or probabilities) [N, C]; the max over
  classes is the known-ness score and the argmax the prediction."""
  known_logits = np.asarray(known_logits)
  unknown_logits = np.asarray(unknown_logits)
  known_labels = np.asarray(known_labels).reshape(-1)
  if known_logits.ndim != 2 or unknown_logits.ndim != 2 or known_logits.shape[1] != unknown_logits.shape[1]:
    raise ValueError(f"oscr takes [N, C] scores for known and unknown clips with the same C; got "
                     f"{known_logits.shape} and {unknown_logits.shape}")
  if known_labels.shape[0] != known_logits.shape[0]:
    raise ValueError(f"{known_labels.shape[0]} labels for {known_logits.shape[0]} known clips")
  correct = np.argmax(known_logits, axis=1) == known_labels
  return 100.0 * _pairwise_rate(known_logits.max(axis=1), unknown_logits.max(axis=1), weights=correct)


def max_softmax(logits) -> np.ndarray:
  """The default known-ness score: the largest softmax probability of each clip."""
  logits = np.asarray(logits, dtype=np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  probs = np.exp(shifted)
  return (probs / probs.sum(axis=-1, keepdims=True)).max(axis=-1)


def log_softmax_scores(logits) -> np.ndarray:
  """Per-class log-probabilities [N, C] in float64, with each row's largest one exact for
  saturated rows: ``-log1p(sum of the others' exp)``, not ``log(1 + tiny) = 0``.

  The max-softmax known-ness score ranks clips by their largest probability; with logits scaled
  by 100 a float32 (or even float64) softmax rounds it to exactly 1.0 for most clips, so AUROC
  and OSCR would see ties where the order is known. Its logarithm keeps the same order without
  rounding it away."""
  logits = np.asarray(logits, dtype=np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  top = np.argmax(shifted, axis=-1)[..., None]
  np.put_along_axis(exp, top, 0.0, axis=-1)
  others = exp.sum(axis=-1, keepdims=True)
  scores = shifted - np.log1p(others)
  np.put_along_axis(scores, top, -np.log1p(others), axis=-1)
  return scores


# ----------------------------------------------------------------------------- HESP's own figures
#
# What HESP's code computes (github cosinehuang/HESP, core/evaluation.py), for comparison with its
# published numbers (config.hesp.official=True reports them beside the exact ones above).


def auroc_hesp(known_scores, unknown_scores) -> float:
  """AUROC (percent) as HESP's ``metric_ood`` computes it: a known/unknown tie counts 0, not 1/2.

  Its ``get_curve_online`` (core/evaluation.py:5-39) walks both sorted score lists and, on a
  tie, passes the known score first (``if novel[n] < known[k]`` ... ``else``), so a tied pair is
  ranked unknown-above-known; the trapezoid area of that curve is P(s_known > s_unknown).
  """
  known = np.asarray(known_scores, dtype=np.float64).reshape(-1)
  unknown = np.sort(np.asarray(unknown_scores, dtype=np.float64).reshape(-1))
  _pairwise_rate(known, unknown)  # the same input checks
  below = np.searchsorted(unknown, known, side="left")
  return float(100.0 * below.sum() / (known.size * unknown.size))


def oscr_hesp(known_logits, unknown_logits, known_labels) -> float:
  """OSCR (percent) as HESP's ``compute_oscr`` computes it (core/evaluation.py:102-148).

  All scores sorted ascending (``argsort``, numpy's default kind); for each cut ``k < n - 1``
  the correct-classification rate counts the correct known clips strictly above position ``k``
  but the false-positive rate counts the unknown clips from ``k`` on: one position apart. Points
  (0, 0), (0, 0) and (1, 1) are added and the curve integrated by trapezoids over the points
  sorted in descending order. Each unknown clip's step thereby averages two neighbouring rates,
  which loses half of a correct known clip's credit where one ranks just above an unknown: at
  most 50 / (number of known clips) points (<= 0.43 on HESP's MAFW splits, K >= 117).
  """
  known_logits = np.asarray(known_logits)
  unknown_logits = np.asarray(unknown_logits)
  oscr(known_logits, unknown_logits, known_labels)  # the same input checks
  known_scores, unknown_scores = known_logits.max(axis=1), unknown_logits.max(axis=1)
  correct = (np.argmax(known_logits, axis=1) == np.asarray(known_labels).reshape(-1)).astype(float)
  scores = np.concatenate([known_scores, unknown_scores])
  is_correct = np.concatenate([correct, np.zeros(unknown_scores.size)])
  is_unknown = np.concatenate([np.zeros(known_scores.size), np.ones(unknown_scores.size)])
  order = scores.argsort()
  is_correct, is_unknown = is_correct[order], is_unknown[order]
  n = scores.size
  # Suffix sums: correct known at positions > k, unknown at positions >= k.
  correct_above = np.concatenate([np.cumsum(is_correct[::-1])[::-1][1:], [0.0]])
  unknown_from = np.cumsum(is_unknown[::-1])[::-1]
  ccr = np.zeros(n + 2)
  fpr = np.zeros(n + 2)
  ccr[:n - 1] = correct_above[:n - 1] / known_scores.size
  fpr[:n - 1] = unknown_from[:n - 1] / unknown_scores.size
  ccr[n + 1] = fpr[n + 1] = 1.0
  points = sorted(zip(fpr, ccr), reverse=True)
  area = sum((a[0] - b[0]) * (a[1] + b[1]) / 2.0 for a, b in zip(points, points[1:]))
  return float(100.0 * area)
