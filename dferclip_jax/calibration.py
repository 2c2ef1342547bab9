"""Temperature scaling (Guo et al., 2017): one T > 0 dividing every logit, fitted on the validation
split to minimise its NLL, then applied to the test split. It changes no prediction (the argmax
is kept) and so no UAR/WAR: only how far the probabilities can be trusted. With K clips per video
the probabilities are each clip's softmax(logits / T), averaged, as evaluation averages them.
"""

from __future__ import annotations

import numpy as np

from dferclip_jax import metrics

LOG_T_RANGE = (-4.0, 4.0)  # T in [0.018, 55]: far past any useful calibration either way


def probabilities(logits, temperature: float = 1.0) -> np.ndarray:
  """[N, C] or [N, K, C] logits -> [N, C] probabilities (K clips' softmaxes averaged)."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(-1, keepdims=True)
  return p.mean(1) if p.ndim == 3 else p


def nll(probs, labels) -> float:
  picked = np.asarray(probs)[np.arange(len(labels)), np.asarray(labels)]
  return float(-np.mean(np.log(np.clip(picked, 1e-300, None))))


def figures(probs, labels) -> dict:
  """ECE (%), NLL and Brier of [N, C] probabilities, as the evaluation reports them."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  one_hot = np.eye(probs.shape[-1])[labels]
  bins = metrics.calibration_bins(probs, labels)
  report = metrics.calibration_report(bins, nll(probs, labels), float(np.sum((probs - one_hot) ** 2)))
  return {k: report[k] for k in ("ece", "nll", "brier")}


def fit_temperature(logits, labels, iterations: int = 100) -> float:
  """The T minimising the NLL of ``probabilities(logits, T)`` (golden-section search over log T;
  the NLL of temperature-scaled softmax is unimodal in T)."""
  if len(labels) == 0:
    raise ValueError("temperature scaling needs at least one validation clip")
  loss = lambda log_t: nll(probabilities(logits, float(np.exp(log_t))), labels)
  lo, hi = LOG_T_RANGE
  ratio = (np.sqrt(5.0) - 1.0) / 2.0
  a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
  fa, fb = loss(a), loss(b)
  for _ in range(iterations):
    if fa <= fb:
      hi, b, fb = b, a, fa
      a = hi - ratio * (hi - lo)
      fa = loss(a)
    else:
      lo, a, fa = a, b, fb
      b = lo + ratio * (hi - lo)
      fb = loss(b)
  return float(np.exp((lo + hi) / 2.0))


def temperature_scaling(val_logits, val_labels, test_logits, test_labels) -> dict:
  """T fitted on the validation split; each split's figures raw and scaled, side by side."""
  t = fit_temperature(val_logits, val_labels)
  out = {"temperature": t, "fitted_on": "val"}
  for split, logits, labels in (("val", val_logits, val_labels), ("test", test_logits, test_labels)):
    out[split] = {"raw": figures(probabilities(logits), labels),
                  "scaled": figures(probabilities(logits, t), labels)}
  return out
