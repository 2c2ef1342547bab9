"""Every dataset this project knows, in one table: names, folds, class order, augmentation, lists.

Configs, config checks, the native-layout reader (``native``), ``cli.prepare``, the TFDS builders
and the command-line flags read their dataset facts from here; none repeats a name list, a fold
count or a list-file rule. The class orders themselves live in ``class_orders`` (the table only
says which order each dataset uses). No heavy imports: configs load this.

  name       folds  classes       augmentation  native layout (cli.prepare, TFDS builder)
  dfew       5      DFERCLIP_7    dfew          yes
  ferv39k    -      DFERCLIP_7    ferv39k       yes
  mafw       5      DFERCLIP_11   mafw          yes
  afew       -      HESP_7        none          no  (HESP's open-set protocol; your own lists)
  synthetic  5      DFERCLIP_7    mafw          no  (generated; each fold draws its own data)

"-" is a single train/test split (``num_folds == 0``, config.fold = 0, fold None in ``native``).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

from dferclip_jax.data import class_orders

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The facts of one dataset. Paths with ``{fold}`` are formatted per fold."""
  name: str                       # config.dataset, --dataset flags, annotations/<name>/
  num_folds: int                  # 0: one train/test split, no folds
  class_names: tuple[str, ...]    # our label order (a constant of ``class_orders``)
  augmentation: str               # DFER-CLIP's training transform for it (a ``data.augment`` kind)
  test_list_split: str = "test"   # the default test list's name: "test" (AFEW's own is "val")
  generated: bool = False         # made by ``data.synthetic`` into the workdir: no lists to give
  # The layout its publisher ships, read by ``native`` (empty: no native reader). Candidates
  # preferred first; DFEW's frames folder names its rendering ({dfew_frames}, see native).
  frames_dirs: tuple[str, ...] = ()
  split_files: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):  # frozen all the way down: the table is shared by every importer
    object.__setattr__(self, "split_files", types.MappingProxyType(dict(self.split_files)))

  @property
  def has_native_layout(self) -> bool:
    return bool(self.frames_dirs)

  @property
  def tfds_name(self) -> str | None:
    """The name of its TFDS builder (``data/tfds_builders/<name>``): the native datasets have one."""
    return self.name if self.has_native_layout else None

  def folds(self) -> tuple[int | None, ...]:
    """(1, ..., num_folds), or (None,) for a single split."""
    return tuple(range(1, self.num_folds + 1)) or (None,)

  def has_fold(self, fold: int) -> bool:
    """Whether config.fold = ``fold`` names a fold (0 for a single split)."""
    return 1 <= fold <= self.num_folds if self.num_folds else fold == 0

  def default_list(self, fold: int | None, split: str) -> str:
    """The annotation list a config reads by default: what ``cli.prepare --out=annotations/<name>``
    writes (AFEW's test list is val.txt)."""
    name = self.test_list_split if split == "test" else split
    return f"annotations/{self.name}/{list_file_name(fold, name)}"


def list_file_name(fold: int | None, split: str) -> str:
  """The annotation list ``cli.prepare`` writes for one split: set_<k>_<split>.txt, or <split>.txt."""
  return f"{split}.txt" if fold is None else f"set_{fold}_{split}.txt"


def tfds_split(fold: int | None, split: str) -> str:
  """The TFDS split a builder writes for one fold's split: fold<k>_<split>, or <split>."""
  return split if fold is None else f"fold{fold}_{split}"


_DFEW_SPLIT_DIRS = {  # DFEW's README spells "single_labeled"; copies in use hold "single-labeled"
    split: tuple(f"EmoLabel_DataSplit/{split}({d})/set_{{fold}}.csv"
                 for d in ("single-labeled", "single_labeled"))
    for split in SPLITS}
_MAFW_SPLIT_ROOTS = ("Train & Test Set/single/no_caption", "split/single/no_caption")  # MAE-DFER: split/

DATASETS: Mapping[str, Dataset] = types.MappingProxyType({d.name: d for d in (
    Dataset("dfew", 5, class_orders.DFERCLIP_7, "dfew",
            frames_dirs=("Clip/{dfew_frames}",), split_files=_DFEW_SPLIT_DIRS),
    Dataset("ferv39k", 0, class_orders.DFERCLIP_7, "ferv39k",
            frames_dirs=("2_ClipsforFaceCrop",),
            split_files={s: (f"4_setups/All_scenes/{s}_All.csv",) for s in SPLITS}),
    # MAFW's publisher ships data/frames/ (PNG; HiCMAE's preprocessing checks for its 10,045
    # folders there); data/faces/ is one lab's copies (JPEG). The first that exists is read.
    # (The frame file names inside are an assumption: no public source shows them.)
    Dataset("mafw", 5, class_orders.DFERCLIP_11, "mafw",
            frames_dirs=("data/frames", "data/faces"),
            split_files={s: tuple(f"{r}/set_{{fold}}/{s}.txt" for r in _MAFW_SPLIT_ROOTS)
                         for s in SPLITS}),
    Dataset("afew", 0, class_orders.HESP_7, "none", test_list_split="val"),
    Dataset("synthetic", 5, class_orders.DFERCLIP_7, "mafw", generated=True),
)})

# The datasets published with a layout we read (cli.prepare, the TFDS builders): dfew, ferv39k, mafw.
NATIVE = tuple(name for name, d in DATASETS.items() if d.has_native_layout)
# Every training transform: each native dataset's own, HESP's, and "none" (the test transform).
AUGMENTATIONS = tuple(DATASETS[name].augmentation for name in NATIVE) + ("hesp", "none")


class UnknownDatasetError(ValueError):
  """A dataset name that is not in the table."""


def get(name: str) -> Dataset:
  """The table entry of ``name``; an unknown name is an error that lists the known ones."""
  try:
    return DATASETS[name]
  except (KeyError, TypeError):
    raise UnknownDatasetError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
