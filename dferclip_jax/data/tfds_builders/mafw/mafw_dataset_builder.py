"""TFDS builder for MAFW (manual download), single-label, 11 classes.

Splits ``fold<k>_train`` and ``fold<k>_test`` for k = 1..5; config ``all`` (default) builds every
fold, ``fold<k>`` one. Build with ``tfds build dferclip_jax/data/tfds_builders/mafw
--config=fold1 --manual_dir=<folder>`` or ``Builder(config=...).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=<folder>))``. See ``frames_builder``.
"""

from __future__ import annotations

from dferclip_jax.data.tfds_builders import frames_builder


class Builder(frames_builder.FramesBuilder):
  """MAFW clips as encoded frames, labels in DFER-CLIP's order (= MAFW's own numbering's
  classes, reordered: MAFW numbers anger first)."""

  DATASET = "mafw"
  BUILDER_CONFIGS = frames_builder.fold_configs(DATASET)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request MAFW from its authors (https://mafw-database.github.io/MAFW/) and unpack it. The manual
folder is either the dataset root as published:
  data/frames/<5-digit id>/*.png          (data/faces/<id>/*.jpg is accepted too)
  Train & Test Set/single/no_caption/set_<k>/train.txt, test.txt   (or split/single/...)
or a folder of DFER-CLIP annotation lists set_<k>_train.txt, set_<k>_test.txt (each fold k; at its
top or in annotations/) whose clip paths are relative to it, as written by
  python -m dferclip_jax.cli.prepare --dataset=mafw --root=<root> --out=<root>
Lists with another machine's absolute paths: add path_map.txt, one old_prefix=new_prefix a line.
"""
