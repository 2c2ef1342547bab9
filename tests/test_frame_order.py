"""Frames are read in natural (numeric-aware) order by every reader: 2.jpg before 10.jpg.

Each frame is a solid PNG whose pixel value is the number in its name, so the order a reader
delivers is visible in the pixels. Expected orders are written out by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from dferclip_jax.data import frames, pipeline
from dferclip_jax.data.annotations import read_annotation_list
from dferclip_jax.data.sources import FolderSource, TfdsSource
from dferclip_jax.data.tfds_builders import ferv39k

# The official test-time sampling of 16 of 120 frames (tick 7.5: int(3.75 + 7.5 k)), as frame
# numbers 1-based: 3+1, 11+1, 18+1, ...
TEST_16_OF_120 = [4, 12, 19, 27, 34, 42, 49, 57, 64, 72, 79, 87, 94, 102, 109, 117]


def _clip(folder: Path, names: list[str], values: list[int]) -> None:
  folder.mkdir(parents=True)
  for name, value in zip(names, values):
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(folder / name)


def _numbered(root: Path) -> Path:
  """clip16: 1.png ... 16.png; clip120: 1.png ... 120.png; padded: 001.png ... 016.png."""
  _clip(root / "clip16", [f"{i}.png" for i in range(1, 17)], list(range(1, 17)))
  _clip(root / "clip120", [f"{i}.png" for i in range(1, 121)], list(range(1, 121)))
  _clip(root / "padded", [f"{i:03d}.png" for i in range(1, 17)], list(range(1, 17)))
  return root


def test_natural_order_and_string_order_on_padded_names():
  unpadded = [f"{i}.jpg" for i in (10, 2, 1, 16, 9, 11)]
  assert frames.sort_frames(unpadded) == ("1.jpg", "2.jpg", "9.jpg", "10.jpg", "11.jpg", "16.jpg")
  assert frames.string_order_differs(unpadded)
  padded = ["img_010.png", "img_002.png", "img_001.png", "b_001.png", "IMG_003.png"]
  assert frames.sort_frames(padded) == tuple(sorted(padded)) == (
      "IMG_003.png", "b_001.png", "img_001.png", "img_002.png", "img_010.png")
  assert not frames.string_order_differs(padded)
  # Numbers anywhere in the name; equal numbers written differently keep a fixed order.
  assert frames.sort_frames(["c2_f10.jpg", "c2_f9.jpg", "c10_f1.jpg", "01.jpg", "1.jpg"]) == (
      "01.jpg", "1.jpg", "c2_f9.jpg", "c2_f10.jpg", "c10_f1.jpg")


def test_list_frames(tmp_path):
  root = _numbered(tmp_path)
  assert frames.list_frames(root / "clip16") == tuple(f"{i}.png" for i in range(1, 17))
  assert frames.list_frames(root / "padded") == tuple(f"{i:03d}.png" for i in range(1, 17))
  assert frames.list_frames(root / "nothing") is None


def test_pipeline_reads_numbered_frames_in_numeric_order(tmp_path):
  root = _numbered(tmp_path)
  (root / "list.txt").write_text("clip16 16 0\nclip120 120 1\npadded 16 0\n")
  records, _ = read_annotation_list(root / "list.txt", 2, root=root)
  batch = next(pipeline.eval_batches(FolderSource(records), batch_size=3, image_size=4,
                                     num_frames=16))
  seen = batch["video"][:, :, 0, 0, 0].tolist()
  assert seen[0] == list(range(1, 17))
  assert seen[1] == TEST_16_OF_120
  assert seen[2] == list(range(1, 17))


def test_tfds_builder_stores_numbered_frames_in_numeric_order(tmp_path):
  manual = _numbered(tmp_path / "manual")
  (manual / "train.txt").write_text("clip16 16 0\nclip120 120 1\n")
  (manual / "test.txt").write_text("padded 16 0\n")
  builder = ferv39k.Builder(data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  train = builder.as_data_source(split="train")
  names = [n.decode() if isinstance(n, bytes) else n for n in train[1]["frame_names"]]
  assert names[:12] == [f"{i}.png" for i in range(1, 13)] and len(names) == 120
  test = builder.as_data_source(split="test")
  assert [n.decode() if isinstance(n, bytes) else n for n in test[0]["frame_names"]] == [
      f"{i:03d}.png" for i in range(1, 17)]
  source = TfdsSource("ferv39k", "train", data_dir=str(tmp_path / "tfds"))
  batch = next(pipeline.eval_batches(source, batch_size=2, image_size=4, num_frames=16))
  assert batch["video"][:, :, 0, 0, 0].tolist() == [list(range(1, 17)), TEST_16_OF_120]
