"""TFDS builder for FERV39k (manual download): splits ``train`` and ``test``.

Build with ``tfds build dferclip_jax/data/tfds_builders/ferv39k --manual_dir=<folder>`` or
``Builder().download_and_prepare(download_config=tfds.download.DownloadConfig(
manual_dir=<folder>))``. See ``frames_builder``.
"""

from __future__ import annotations

from dferclip_jax.data.tfds_builders import frames_builder


class Builder(frames_builder.FramesBuilder):
  """FERV39k clips as encoded frames, labels in DFER-CLIP's order."""

  DATASET = "ferv39k"
  BUILDER_CONFIGS = frames_builder.fold_configs(DATASET)  # none: one train/test split
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request FERV39k from its authors
(https://wangyanckxx.github.io/Proj_CVPR2022_FERV39k.html) and unpack it. The manual folder is
either the dataset root as published:
  2_ClipsforFaceCrop/<Scenario>/<Class>/<id>/*.jpg
  4_setups/All_scenes/train_All.csv, test_All.csv
or a folder of DFER-CLIP annotation lists train.txt, test.txt (at its top or in annotations/)
whose clip paths are relative to it, as written by
  python -m dferclip_jax.cli.prepare --dataset=ferv39k --root=<root> --out=<root>
Lists with another machine's absolute paths: add path_map.txt, one old_prefix=new_prefix a line.
"""
