"""The data a config describes: the synthetic dataset (generated on first use), annotation lists of
frame folders, or TFDS splits — all fed through the same tf.data pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from absl import logging

from dferclip_jax import distributed
from dferclip_jax.data import annotations, pipeline


@dataclasses.dataclass
class DataBundle:
  train_source: Any
  test_source: Any
  num_train: int
  num_test: int
  augmentation: str
  num_frames: int
  seed: int
  skipped: list = dataclasses.field(default_factory=list)

  def train_batches(self, local_batch: int, image_size: int, start_step: int):
    return pipeline.train_batches(
        self.train_source, augmentation=self.augmentation, batch_size=local_batch,
        image_size=image_size, num_frames=self.num_frames, seed=self.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())

  def eval_batches(self, local_batch: int, image_size: int, num_clips: int = 1):
    return pipeline.eval_batches(
        self.test_source, batch_size=local_batch, image_size=image_size, num_frames=self.num_frames,
        process_index=jax.process_index(), process_count=jax.process_count(), num_clips=num_clips)

  def skipped_report(self) -> list[str]:
    return [str(s) for s in self.skipped]


def synthetic_lists(config, workdir: Path) -> tuple[str, str, str]:
  """Generates (once) the synthetic dataset the config asks for -> (train list, test list, root)."""
  from dferclip_jax.data import synthetic
  s = config.data.synthetic
  out = Path(s.get("dir") or (Path(workdir) / "synthetic_data"))
  if jax.process_index() == 0:
    synthetic.make_synthetic_dataset(
        out, num_classes=len(config.class_names), clips_per_class=s.clips_per_class,
        frames_range=tuple(s.frames_range), image_size=s.image_size, seed=s.seed)
  distributed.barrier(f"synthetic data in {out}")  # complete before any other host reads it
  return str(out / "train.txt"), str(out / "test.txt"), str(out)


def read_list(config, path: str, root: str | None):
  records, skipped = annotations.read_annotation_list(
      path, len(config.class_names), root=root, path_map=config.data.path_map or None,
      on_bad_clip=config.data.on_bad_clip, class_names=tuple(config.class_names))
  for clip in skipped:
    logging.warning("skipped clip %s", clip)
  return records, skipped


def open_test_data(config, workdir: str | Path) -> DataBundle:
  """Only the test side (evaluation does not need to open, or validate, the training list)."""
  return open_data(config, workdir, train=False)


def open_data(config, workdir: str | Path, train: bool = True) -> DataBundle:
  d = config.data
  if d.source == "tfds":
    train, test = pipeline.tfds_sources(d.tfds_name, d.tfds_train_split if train else None,
                                        d.tfds_test_split, data_dir=d.tfds_data_dir,
                                        class_names=tuple(config.class_names))
    skipped = []
  else:
    if config.dataset == "synthetic":
      train_list, test_list, root = synthetic_lists(config, Path(workdir))
    else:
      train_list, test_list, root = d.train_list, d.test_list, d.root
    train, skipped_train = read_list(config, train_list, root) if train else ([], [])
    test, skipped_test = read_list(config, test_list, root)
    skipped = skipped_train + skipped_test
    if skipped:
      logging.warning("%d clip(s) skipped (config.data.on_bad_clip='skip'); listed in results.json",
                      len(skipped))
  return DataBundle(train, test, len(train), len(test), d.augmentation, d.num_frames, config.seed, skipped)
