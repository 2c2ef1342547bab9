"""A validation set held out of the training list, for model selection that never sees the test set.

The official code picks its best epoch on the test set. With ``config.data.val_fraction = f > 0``
each class keeps ``round(f * n_c)`` of its ``n_c`` training clips aside (half rounds up, at least
one clip of the class stays for training), chosen by a permutation seeded with ``config.seed``:
the same split for the same list and seed, on every host and after every resume.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dferclip_jax.data.records import ClipRecord


def validation_size(count: int, fraction: float) -> int:
  """Clips of a class with ``count`` training clips that go to validation."""
  return min(int(math.floor(fraction * count + 0.5)), max(count - 1, 0))


def split_validation(records: Sequence[ClipRecord], fraction: float, seed: int,
                     where: str = "config.data.val_fraction") -> tuple[list[ClipRecord], list[ClipRecord]]:
  """-> (training records, validation records), both in the list's order, disjoint."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"{where}={fraction}: expected a fraction in (0, 1), or 0 for no validation set")
  by_class: dict[int, list[int]] = {}
  for i, record in enumerate(records):
    by_class.setdefault(record.label, []).append(i)
  held = set()
  for label in sorted(by_class):
    members = np.array(by_class[label])
    rng = np.random.default_rng([seed, label])  # per class: adding a class never moves another's split
    held.update(rng.permutation(members)[:validation_size(len(members), fraction)].tolist())
  if not held:
    raise ValueError(f"{where}={fraction}: holds out no clip of the {len(records)} training clips "
                     f"(each class keeps round(fraction * its clips)); use a larger fraction")
  train = [r for i, r in enumerate(records) if i not in held]
  val = [r for i, r in enumerate(records) if i in held]
  return train, val
