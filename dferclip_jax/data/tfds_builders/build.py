"""Builds one of our TFDS datasets from a manual folder (``tfds build`` needs apache_beam to start).

  python -m dferclip_jax.data.tfds_builders.build --dataset=dfew --config=fold1 \
      --manual_dir=/data/DFEW --data_dir=/data/tfds

Then train with ``--config.data.source=tfds --config.data.tfds_name=dfew/fold1
--config.data.tfds_data_dir=/data/tfds``. Prints the splits and their sizes.
"""

from __future__ import annotations

import os
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from dferclip_jax.data import datasets  # noqa: E402


def _define_flags() -> None:
  # Only when run as a command: importing ``build`` must not claim flag names other tools use.
  flags.DEFINE_enum("dataset", None, datasets.NATIVE, "Which dataset.")
  flags.DEFINE_string("config", None, "Datasets with folds: 'all' (default) or one fold 'fold<k>'.")
  flags.DEFINE_string("manual_dir", None, "The dataset root as published, or a folder of lists.")
  flags.DEFINE_string("data_dir", None, "Where TFDS datasets go (default: ~/tensorflow_datasets).")
  flags.mark_flags_as_required(["dataset", "manual_dir"])


def build(dataset: str, manual_dir: str, *, config: str | None = None,
          data_dir: str | None = None):
  """Builds (or finds already built) the dataset; returns the builder."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from dferclip_jax.data.tfds_builders import dfew, ferv39k, mafw

  tf.config.set_visible_devices([], "GPU")
  builders = {b.DATASET: b for b in (dfew.Builder, ferv39k.Builder, mafw.Builder)}
  if dataset not in builders:
    raise ValueError(f"--dataset={dataset}: no TFDS builder; expected one of {sorted(builders)}")
  cls = builders[dataset]
  if not datasets.get(dataset).num_folds and config not in (None, ""):
    raise ValueError(f"--config={config}: {dataset} has one train/test split and no configs")
  builder = cls(config=config or None, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.abspath(manual_dir)))
  return builder


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  builder = build(f.dataset, f.manual_dir, config=f.config, data_dir=f.data_dir)
  name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
  print(f"{name} at {builder.data_dir}")
  for split, info in sorted(builder.info.splits.items()):
    print(f"  {split}: {info.num_examples} clips")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
