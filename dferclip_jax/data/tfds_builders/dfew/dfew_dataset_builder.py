"""TFDS builder for DFEW (manual download).

Splits ``fold<k>_train`` and ``fold<k>_test`` for k = 1..5; config ``all`` (default) builds every
fold, ``fold<k>`` one. Build with ``tfds build dferclip_jax/data/tfds_builders/dfew
--config=fold1 --manual_dir=<folder>`` or ``Builder(config=...).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=<folder>))``. See ``frames_builder``.
"""

from __future__ import annotations

from dferclip_jax.data.tfds_builders import frames_builder


class Builder(frames_builder.FramesBuilder):
  """DFEW clips as encoded frames, labels in DFER-CLIP's order."""

  DATASET = "dfew"
  BUILDER_CONFIGS = frames_builder.fold_configs(DATASET)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request DFEW from its authors (https://dfew-dataset.github.io/) and unpack it. The manual folder
is either the dataset root as published:
  Clip/clip_224x224/<5-digit id>/*.jpg
  EmoLabel_DataSplit/train(single-labeled)/set_<k>.csv, test(single-labeled)/set_<k>.csv
or a folder of DFER-CLIP annotation lists set_<k>_train.txt, set_<k>_test.txt (each fold k; at its
top or in annotations/) whose clip paths are relative to it, as written by
  python -m dferclip_jax.cli.prepare --dataset=dfew --root=<root> --out=<root>
Lists with another machine's absolute paths: add path_map.txt, one old_prefix=new_prefix a line.
"""
