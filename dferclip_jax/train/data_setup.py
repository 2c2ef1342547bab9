"""The data a config describes: the synthetic dataset (generated on first use), annotation lists of
frame folders, or TFDS splits — all fed through the same tf.data pipeline.

Explicit lists win: ``config.data.train_list``/``test_list``, when set, are the data on every
config, the synthetic demo included (which then generates nothing); setting only one of them on
the synthetic config is refused. ``config.data.val_fraction > 0`` holds a stratified part of the
training list out for model selection (``data.holdout``).

With ``config.data.on_bad_clip='skip'``, clips whose frames cannot be read or decoded are skipped
when the pipeline meets them (``pipeline``); ``read_skipped`` keeps them per split with the reason,
and the training ones travel in the checkpoint so that a resumed run skips what the original did.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
from absl import logging

from dferclip_jax import distributed, storage
from dferclip_jax.data import annotations, datasets, holdout, pipeline, sources
from dferclip_jax.data import fingerprint as fingerprint_lib
from dferclip_jax.train import config_checks
from dferclip_jax.train.config_checks import ConfigError


@dataclasses.dataclass
class DataBundle:
  """The built sources of a run (each folder listed once, when its list was read) and how the
  pipeline reads them. ``train_source`` is None where only the test side was opened."""
  train_source: pipeline.Source | None
  test_source: pipeline.Source
  num_train: int
  num_test: int
  augmentation: str
  num_frames: int
  seed: int
  skipped: list = dataclasses.field(default_factory=list)
  val_source: pipeline.Source | None = None
  on_bad_clip: str = "error"
  # split -> {example index: why it was skipped}, filled by the pipeline in "skip" mode.
  read_skipped: dict = dataclasses.field(default_factory=lambda: {"train": {}, "test": {}, "val": {}})
  id_base: str = ""  # what clip ids are relative to (data/fingerprint.py)

  def fingerprint(self) -> dict:
    """Per split (train, val, test): what ``data/fingerprint.py`` records. A TFDS source gives
    its clip count only (its examples are not frame folders)."""
    out = {}
    for split, source in (("train", self.train_source), ("val", self.val_source), ("test", self.test_source)):
      if source is None:
        continue
      if isinstance(source, sources.FolderSource):
        out[split] = fingerprint_lib.split_fingerprint(source.records, source.frame_names, self.id_base)
      else:
        out[split] = {"clips": len(source)}
    return out

  @property
  def num_val(self) -> int:
    return 0 if self.val_source is None else len(self.val_source)

  def _bad(self, split: str):
    return self.read_skipped[split] if self.on_bad_clip == "skip" else None

  def train_batches(self, local_batch: int, image_size: int, start_step: int):
    return pipeline.train_batches(
        self.train_source, augmentation=self.augmentation, batch_size=local_batch,
        image_size=image_size, num_frames=self.num_frames, seed=self.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count(), bad=self._bad("train"))

  def eval_batches(self, local_batch: int, image_size: int, num_clips: int = 1, split: str = "test"):
    return pipeline.eval_batches(
        self.val_source if split == "val" else self.test_source, batch_size=local_batch,
        image_size=image_size, num_frames=self.num_frames, process_index=jax.process_index(),
        process_count=jax.process_count(), num_clips=num_clips, bad=self._bad(split))

  def skipped_report(self) -> list[str]:
    found = [f"{reason} [{split} clip skipped when read]"
             for split, bad in self.read_skipped.items() for _, reason in sorted(bad.items())]
    return [str(s) for s in self.skipped] + found

  def restore_read_skipped(self, saved: dict | None) -> None:
    """The training clips a checkpointed run had skipped (its meta's ``read_skipped``)."""
    for example, reason in (saved or {}).items():
      self.read_skipped["train"][int(example)] = reason


def synthetic_lists(config, workdir: Path) -> tuple[str, str, str]:
  """Generates (once) the synthetic dataset the config asks for -> (train list, test list, root)."""
  out = storage.path(config.data.synthetic.get("dir") or (storage.path(workdir) / "synthetic_data"))
  ready = f"synthetic data in {out}"  # the same barrier name on every process
  if storage.is_remote(out):
    out = _local_synthetic_dir(config, out)
    _make_synthetic(config, out)
  elif distributed.is_writer():
    _make_synthetic(config, out)
  distributed.barrier(ready)  # complete before any other host reads it
  return str(out / "train.txt"), str(out / "test.txt"), str(out)


def _make_synthetic(config, out) -> None:
  from dferclip_jax.data import synthetic
  s = config.data.synthetic
  synthetic.make_synthetic_dataset(
      out, num_classes=len(config.class_names), clips_per_class=s.clips_per_class,
      frames_range=tuple(s.frames_range), image_size=s.image_size, seed=s.seed,
      temporal_pairs=s.temporal_pairs)


def _local_synthetic_dir(config, remote: Path) -> Path:
  """Where the synthetic clips of a run whose workdir is in a bucket go: frames are read from
  local disk (or a FUSE mount), so each process generates its own copy, the same for the same
  recipe, in the local temporary folder (one per process: two on one host must not race)."""
  import hashlib
  import tempfile
  s = config.data.synthetic
  recipe = json.dumps([len(config.class_names), s.clips_per_class, list(s.frames_range),
                       s.image_size, s.seed, s.temporal_pairs])
  digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
  name = f"dferclip-synthetic-{digest}-process{jax.process_index()}"
  out = Path(tempfile.gettempdir()) / name  # local: the temporary folder
  logging.info("%s is in a bucket: the synthetic clips are generated locally in %s", remote, out)
  return out


def read_list(config, path: str, root: str | None) -> tuple[sources.FolderSource, list]:
  """An annotation list as the config reads it -> (its source, the skipped lines)."""
  source, skipped = sources.open_annotation_list(
      path, len(config.class_names), root=root, path_map=config.data.path_map or None,
      on_bad_clip=config.data.on_bad_clip, class_names=tuple(config.class_names),
      duplicate_clips=config.data.duplicate_clips)
  for clip in skipped:
    logging.warning("skipped clip %s", clip)
  return source, skipped


def open_test_data(config, workdir: str | Path) -> DataBundle:
  """Only the test side (evaluation does not need to open, or validate, the training list)."""
  return open_data(config, workdir, train=False)


def open_data(config, workdir: str | Path, train: bool = True) -> DataBundle:
  d = config.data
  if d.source == "tfds":
    train, test = pipeline.tfds_sources(d.tfds_name, d.tfds_train_split if train else None,
                                        d.tfds_test_split, data_dir=d.tfds_data_dir,
                                        class_names=tuple(config.class_names))
    train = train or None
    skipped, val = [], None
  else:
    train_list, test_list, root = list_files(config, workdir)
    train, skipped_train = read_list(config, train_list, root) if train else (None, [])
    test, skipped_test = read_list(config, test_list, root)
    if train:
      annotations.warn_overlap(train.records, test.records)  # leakage: logged, naming both lines
    skipped = skipped_train + skipped_test
    if skipped:
      logging.warning("%d clip(s) skipped (config.data.on_bad_clip='skip'); listed in results.json",
                      len(skipped))
    val = None
    if train and d.val_fraction > 0:
      kept, held = holdout.split_validation(train.records, d.val_fraction, config.seed)
      train, val = train.subset(kept), train.subset(held)
      logging.info("validation: %d clips of %s held out (config.data.val_fraction=%g); best is "
                   "chosen on them", len(val), train_list, d.val_fraction)
  num_train, num_val = len(train or ()), len(val or ())
  logging.info("data: %d training, %d validation, %d test clips", num_train, num_val, len(test))
  base = "" if d.source == "tfds" else fingerprint_lib.id_base(
      [*(train.records if train else ()), *(val.records if val else ()), *test.records], root)
  return DataBundle(train, test, num_train, len(test), d.augmentation, d.num_frames, config.seed,
                    skipped, val_source=val, on_bad_clip=d.on_bad_clip, id_base=base)


def list_files(config, workdir: Path) -> tuple[str, str, str | None]:
  """-> (train list, test list, root). Lists the user set win, on the synthetic config too."""
  d = config.data
  if not datasets.get(config.dataset).generated:
    return d.train_list, d.test_list, d.root
  if config_checks.synthetic_uses_lists(config):
    logging.info("dataset 'synthetic' with explicit lists: training on %s, testing on %s "
                 "(no synthetic data generated)", d.train_list, d.test_list)
    return d.train_list, d.test_list, d.root
  return synthetic_lists(config, workdir)


def verify_data(config, workdir: str | Path) -> list[str]:
  """``--mode=verify``: decodes every frame of the config's lists once and writes the clips that
  fail to ``workdir/bad_clips.txt``; -> those lines."""
  from dferclip_jax.data import verify
  if config.data.source != "lists":
    raise ConfigError(f"--mode=verify checks frame folders: config.data.source={config.data.source!r} "
                      f"is not 'lists'")
  train_list, test_list, root = list_files(config, workdir)
  listed = [(path, read_list(config, path, root)[0]) for path in (train_list, test_list)]
  out = storage.path(workdir) / verify.BAD_CLIPS_FILE
  bad = verify.verify_sources(listed, out)
  logging.info("%d unreadable clip(s) listed in %s", len(bad), out)
  return bad
