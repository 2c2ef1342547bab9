"""The evaluation figures: the confusion matrix (row-normalised, in percent, counts in brackets)
and the reliability diagram (accuracy against confidence per bin)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dferclip_jax import storage


def save_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix") -> Path:
  import matplotlib
  matplotlib.use("Agg")  # headless: no display on servers and CI
  import matplotlib.pyplot as plt

  cm = np.asarray(cm)
  support = cm.sum(axis=1, keepdims=True)
  percent = np.where(support > 0, 100.0 * cm / np.maximum(support, 1), 0.0)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.1 * n + 3, 1.0 * n + 2.5))
  image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("Predicted label")
  ax.set_ylabel("True label")
  ax.set_title(title)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{percent[i, j]:.1f}\n({cm[i, j]})", ha="center", va="center", fontsize=8,
              color="white" if percent[i, j] > 50 else "black")
  fig.tight_layout()
  path = storage.path(path)
  storage.save_figure(fig, path, dpi=100)  # a local file or a bucket object
  plt.close(fig)
  return path


def save_reliability_diagram(reliability: Sequence[dict], path: str | Path,
                             title: str = "Reliability") -> Path:
  """Each confidence bin's accuracy (bars) against the diagonal of perfect calibration; the bins'
  clip counts below (``metrics.calibration_report``'s ``reliability``)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                    gridspec_kw={"height_ratios": [3, 1]})
  lows = [b["bin"][0] * 100 for b in reliability]
  width = (reliability[0]["bin"][1] - reliability[0]["bin"][0]) * 100 if reliability else 100
  accuracy = [b["accuracy"] or 0.0 for b in reliability]
  confidence = [b["confidence"] if b["confidence"] is not None else 0.0 for b in reliability]
  top.bar(lows, accuracy, width=width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
  top.bar(lows, [c - a for c, a in zip(confidence, accuracy)], bottom=accuracy, width=width,
          align="edge", color="tab:red", alpha=0.3, label="gap to the confidence")
  top.plot([0, 100], [0, 100], "k--", lw=1)
  top.set_ylim(0, 100)
  top.set_ylabel("accuracy (%)")
  top.set_title(title)
  top.legend(loc="upper left", fontsize=8)
  bottom.bar(lows, [b["clips"] for b in reliability], width=width, align="edge", color="gray")
  bottom.set_xlabel("confidence: the top class's probability (%)")
  bottom.set_ylabel("clips")
  bottom.set_xlim(0, 100)
  fig.tight_layout()
  path = storage.path(path)
  storage.save_figure(fig, path, dpi=100)
  plt.close(fig)
  return path
