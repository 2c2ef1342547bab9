"""TFDS builders: build and load round trips, and the same batches as from the frame folders."""

import itertools
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from dferclip_jax.data import class_orders, pipeline, synthetic
from dferclip_jax.data.annotations import read_annotation_list
from dferclip_jax.data.sources import ClipDataError, TfdsSource
from dferclip_jax.data.tfds_builders import build, dfew, mafw


def _build(builder_cls, manual_dir, data_dir, config=None):
  builder = builder_cls(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


@pytest.fixture(scope="module")
def lists_dir(tmp_path_factory):
  """A manual folder of DFER-CLIP lists (fold 1), paths relative to it, as cli.prepare writes."""
  made = synthetic.make_synthetic_dataset(tmp_path_factory.mktemp("syn"), clips_per_class=2,
                                          frames_range=(3, 18), image_size=24, test_fraction=0.5)
  manual = tmp_path_factory.mktemp("manual")
  shutil.copytree(os.path.join(made.root, "frames"), manual / "frames")
  shutil.copy(made.train_list, manual / "set_1_train.txt")
  shutil.copy(made.test_list, manual / "set_1_test.txt")
  shutil.copy(made.classes_file, manual / "classes.txt")
  return manual


@pytest.fixture(scope="module")
def built(lists_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  _build(dfew.Builder, lists_dir, data_dir, config="fold1")
  return data_dir


def test_round_trip_keeps_the_original_bytes_in_list_order(lists_dir, built):
  builder = tfds.builder("dfew/fold1", data_dir=str(built))
  assert set(builder.info.splits) == {"fold1_train", "fold1_test"}
  assert builder.info.features["label"].names == list(class_orders.DFERCLIP_7)
  records, _ = read_annotation_list(lists_dir / "set_1_train.txt", 7, root=lists_dir)
  source = builder.as_data_source(split="fold1_train")
  assert len(source) == len(records) == 7
  for index, record in enumerate(records):
    example = source[index]
    names = sorted(os.listdir(record.path))[:record.num_frames]
    assert example["label"] == record.label and example["num_frames"] == record.num_frames
    assert [n.decode() if isinstance(n, bytes) else n for n in example["frame_names"]] == names
    assert example["frames"][-1] == open(os.path.join(record.path, names[-1]), "rb").read()
    assert example["origin"].decode() == f"set_1_train.txt:{record.line}"


def test_same_batches_as_the_frame_folders(lists_dir, built):
  train, test = pipeline.tfds_sources("dfew/fold1", "fold1_train", "fold1_test",
                                      data_dir=str(built), class_names=class_orders.DFERCLIP_7)
  folders = [read_annotation_list(lists_dir / f"set_1_{s}.txt", 7, root=lists_dir)[0]
             for s in ("train", "test")]
  args = dict(augmentation="dfew", batch_size=3, image_size=16, num_frames=4, seed=3)
  for a, b in zip(itertools.islice(pipeline.train_batches(train, **args), 4),
                  itertools.islice(pipeline.train_batches(folders[0], **args), 4)):
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Resuming works the same on TFDS.
  resumed = next(pipeline.train_batches(train, **args, start_step=3))
  last = list(itertools.islice(pipeline.train_batches(train, **args), 4))[-1]
  np.testing.assert_array_equal(resumed["video"], last["video"])
  evals = [list(pipeline.eval_batches(s, batch_size=4, image_size=16, num_frames=4))
           for s in (test, folders[1])]
  for a, b in zip(*evals):
    for key in ("video", "label", "mask", "index"):
      np.testing.assert_array_equal(a[key], b[key])


def test_class_order_mismatch_and_unbuilt_data_fail(built, tmp_path):
  with pytest.raises(ValueError, match="different order would permute"):
    pipeline.tfds_sources("dfew/fold1", "fold1_train", "fold1_test", data_dir=str(built),
                          class_names=class_orders.HESP_7)
  with pytest.raises(ValueError, match="not built"):
    TfdsSource("dfew/fold1", "fold1_train", data_dir=str(tmp_path))


def test_corrupt_frame_in_tfds_names_the_record(tmp_path):
  manual = tmp_path / "manual"
  (manual / "c").mkdir(parents=True)
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(manual / "c" / "000.jpg")
  (manual / "c" / "001.jpg").write_bytes(b"\xff\xd8\xff garbage")
  (manual / "train.txt").write_text("c 2 0\n")
  (manual / "test.txt").write_text("c 1 0\n")
  build.build("ferv39k", str(manual), data_dir=str(tmp_path / "tfds"))  # the command's function
  source = TfdsSource("ferv39k", "train", data_dir=str(tmp_path / "tfds"))
  where = r"tfds ferv39k:train\[0\] clip c \(listed at train.txt:1\): frame 001.jpg: cannot decode"
  with pytest.raises(ClipDataError, match=where):
    next(pipeline.train_batches(source, augmentation="ferv39k", batch_size=1, image_size=16,
                                num_frames=4, seed=0))


def test_native_layout_manual_dir(tmp_path):
  """MAFW as published: data/faces/<id>/ and split/single/no_caption/set_<k>/{train,test}.txt."""
  root = tmp_path / "MAFW"
  labels = {"00001": "anger", "00002": "contempt", "00003": "happiness", "00004": "anxiety"}
  for clip in labels:
    folder = root / "data" / "faces" / clip
    folder.mkdir(parents=True)
    for t in range(3):
      Image.fromarray(np.full((12, 12, 3), 40 * t, np.uint8)).save(folder / f"{t}.jpg")
  for k in range(1, 6):
    split = root / "split" / "single" / "no_caption" / f"set_{k}"
    split.mkdir(parents=True)
    train = "".join(f"{c}.mp4 {labels[c]}\n" for c in ("00001", "00002", "00003"))
    (split / "train.txt").write_text(train)
    (split / "test.txt").write_text("00004.mp4 anxiety\n00009.mp4 anger\n")  # 00009: not on disk
  builder = _build(mafw.Builder, root, tmp_path / "tfds", config="fold2")
  assert set(builder.info.splits) == {"fold2_train", "fold2_test"}
  assert builder.info.splits["fold2_test"].num_examples == 1  # the missing clip is left out, logged
  test = builder.as_data_source(split="fold2_test")
  assert test[0]["label"] == class_orders.DFERCLIP_11.index("anxiety")
  assert test[0]["clip"].decode() == "data/faces/00004" and test[0]["num_frames"] == 3


def test_manual_dir_without_data_explains_itself(tmp_path):
  (tmp_path / "manual").mkdir()
  # Not empty: TFDS itself refuses an empty manual folder before our builder looks.
  (tmp_path / "manual" / "README").write_text("the wrong folder\n")
  message = r"neither the native dfew layout nor a folder of annotation lists; missing: set_1_train"
  with pytest.raises(FileNotFoundError, match=message):
    _build(dfew.Builder, tmp_path / "manual", tmp_path / "tfds", config="fold1")
