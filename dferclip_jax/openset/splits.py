"""HESP's open-set splits, as data (``data/openset/hesp_splits.json``), mapped to our class names.

A split lists the known classes by index into HESP's class order (anger, disgust, fear,
happiness, neutral, sadness, surprise, contempt, anxiety, helplessness, disappointment). Known
labels are 0..K-1 in the order of the sorted HESP indices (as HESP's loaders number them), and the
prompts use the same order (HESP sorts its prompt names alphabetically instead, which disagrees
with its own labels on some MAFW splits; see docs/openset.md).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dferclip_jax.data import class_orders
from dferclip_jax.data.records import ClipRecord

if TYPE_CHECKING:  # only a type here: the split tables need no TensorFlow
  from dferclip_jax.data.sources import FolderSource

# local: the package's own files
SPLITS_FILE = Path(__file__).resolve().parents[2] / "data" / "openset" / "hesp_splits.json"


def load_splits(dataset: str) -> list[list[int]]:
  """The 20 known-class index lists of ``dataset`` (AFEW, MAFW or DFEW), in HESP's order."""
  table = json.loads(SPLITS_FILE.read_text())["splits"]
  key = dataset.upper()
  if key not in table:
    raise ValueError(f"no HESP splits for {dataset!r}; there are {sorted(table)}")
  return table[key]


def known_class_names(dataset: str, split: int) -> tuple[str, ...]:
  """Our names of split ``split``'s known classes, in label order."""
  splits = load_splits(dataset)
  if not 0 <= split < len(splits):
    raise ValueError(f"split {split}: {dataset} has splits 0..{len(splits) - 1}")
  order = class_orders.HESP_11
  return tuple(order[i] for i in sorted(splits[split]))


@dataclasses.dataclass(frozen=True)
class OpenSetData:
  """One split's clips: record lists (``split_records``) or built sources (``split_sources``)."""
  known_names: tuple[str, ...]
  train: list[ClipRecord] | FolderSource         # known classes only, labels 0..K-1
  test_known: list[ClipRecord] | FolderSource    # labels 0..K-1
  test_unknown: list[ClipRecord] | FolderSource  # labels: their class in the full order (unscored)


def split_records(train: Sequence[ClipRecord], test: Sequence[ClipRecord], class_names: Sequence[str],
                  known_names: Sequence[str]) -> OpenSetData:
  """Keeps known-class clips for training (relabelled 0..K-1); splits the test clips."""
  missing = [n for n in known_names if n not in class_names]
  if missing:
    raise ValueError(f"known classes {missing} are not among the dataset's classes {list(class_names)}")
  relabel = {class_names.index(n): k for k, n in enumerate(known_names)}
  pick = lambda records: [dataclasses.replace(r, label=relabel[r.label]) for r in records
                          if r.label in relabel]
  unknown = [r for r in test if r.label not in relabel]
  data = OpenSetData(tuple(known_names), pick(train), pick(test), unknown)
  for name, records in (("training", data.train), ("known test", data.test_known),
                        ("unknown test", data.test_unknown)):
    if not records:
      raise ValueError(f"the split with known classes {list(known_names)} has no {name} clips")
  return data


def string_frame_order(data: OpenSetData) -> OpenSetData:
  """``data`` with each clip's frames in plain string order, as the official loader lists them
  (``glob(folder/*)`` then ``sort()``: ``10.jpg`` before ``2.jpg``), in place of our natural
  order (``frames.sort_frames``). The same files (our frame rule: ``.jpg``/``.jpeg``/``.png``,
  no hidden files; the official glob would also list any other file in the folder), from the
  sources' listing (no folder is read again); a clip's first ``num_frames`` of that order are
  the ones it samples, as there."""
  def reordered(source):
    names = {path: None if listed is None else tuple(sorted(listed))
             for path, listed in source.frame_names.items()}
    return type(source)(source.records, names)
  return dataclasses.replace(data, train=reordered(data.train),
                             test_known=reordered(data.test_known),
                             test_unknown=reordered(data.test_unknown))


def split_sources(train: FolderSource, test: FolderSource, class_names: Sequence[str],
                  known_names: Sequence[str]) -> OpenSetData:
  """``split_records`` on two built sources -> the split's clips as sources, built from their
  listing (no folder is listed again, whichever split runs)."""
  data = split_records(train.records, test.records, class_names, known_names)
  return dataclasses.replace(data, train=train.subset(data.train),
                             test_known=test.subset(data.test_known),
                             test_unknown=test.subset(data.test_unknown))
