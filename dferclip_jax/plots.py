"""The confusion-matrix figure (row-normalised, in percent, counts in brackets)."""

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
