"""One input path: each frame folder is listed once, when its list is read, and the sources built
then serve training, validation and every evaluation; the random streams' table."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from configs import demo
from dferclip_jax.data import annotations, frames, pipeline, seeds, synthetic
from dferclip_jax.data.sources import FolderSource, open_annotation_list
from dferclip_jax.openset import splits
from dferclip_jax.train import config_checks, data_setup


@pytest.fixture
def listings(monkeypatch):
  """Counts how often each folder is listed (``frames.list_many`` goes through ``list_frames``)."""
  counts = {}
  real = frames.list_frames

  def counting(folder):
    counts[str(folder)] = counts.get(str(folder), 0) + 1
    return real(folder)

  monkeypatch.setattr(frames, "list_frames", counting)
  return counts


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  return synthetic.make_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_classes=7,
                                          clips_per_class=3, frames_range=(4, 6), image_size=12,
                                          test_fraction=0.4)


def _lines(path):
  return [line.split()[0] for line in open(path).read().splitlines() if line.strip()]


def test_open_data_lists_each_folder_once_and_holds_sources(made, tmp_path, listings):
  config = demo.get_config()
  config.data.update(dict(train_list=made.train_list, test_list=made.test_list,
                          root=str(made.root), val_fraction=0.3, num_frames=4))
  data = data_setup.open_data(config, tmp_path)
  train_lines, test_lines = _lines(made.train_list), _lines(made.test_list)
  assert len(listings) == len(train_lines) + len(test_lines)  # every folder, once
  assert set(listings.values()) == {1}
  for source in (data.train_source, data.val_source, data.test_source):
    assert isinstance(source, FolderSource)
  assert (data.num_train, data.num_val, data.num_test) == (len(data.train_source),
                                                           len(data.val_source), len(test_lines))
  assert data.num_val == 7 and data.num_train == len(train_lines) - 7  # round(0.3 * 2) per class
  held = {r.path for r in data.val_source.records}
  assert not held & {r.path for r in data.train_source.records}

  listings.clear()
  next(data.train_batches(4, 8, 0))
  for _ in range(2):  # evaluation runs every epoch on the same sources
    for split in ("val", "test"):
      list(data.eval_batches(4, 8, split=split))
  assert listings == {}


def test_open_annotation_list_lists_once_and_subsets_list_nothing(made, listings):
  source, skipped = open_annotation_list(made.train_list, 7, root=made.root)
  assert skipped == [] and len(source) == len(_lines(made.train_list)) == 14
  assert set(listings.values()) == {1}
  listings.clear()
  half = source.subset(source.records[::2])
  assert listings == {} and len(half) == 7
  first = next(pipeline.eval_batches(half, batch_size=7, image_size=8, num_frames=4))
  again = next(pipeline.eval_batches(FolderSource(source.records[::2]), batch_size=7, image_size=8,
                                     num_frames=4))
  np.testing.assert_array_equal(first["video"], again["video"])
  np.testing.assert_array_equal(first["label"], [r.label for r in source.records[::2]])


def test_open_set_splits_are_sources_built_without_listing(made, listings):
  train, _ = open_annotation_list(made.train_list, 7, root=made.root)
  test, _ = open_annotation_list(made.test_list, 7, root=made.root)
  listings.clear()
  names = synthetic.synthetic_class_names(7)
  data = splits.split_sources(train, test, names, names[1:3])
  assert listings == {}
  # 2 training and 1 test clip per class (3 clips, test_fraction 0.4)
  assert (len(data.train), len(data.test_known), len(data.test_unknown)) == (4, 2, 5)
  assert set(data.train.labels.tolist()) == {0, 1}  # relabelled to the known classes' order


def _config(made, train_list, test_list=None, **data):
  config = demo.get_config()
  config.data.update(dict(train_list=str(train_list), test_list=str(test_list or made.test_list),
                          root=str(made.root), num_frames=4, **data))
  return config


def test_a_symlink_loop_stops_the_run_or_is_skipped_and_reported(made, tmp_path):
  loop = tmp_path / "loop"
  loop.symlink_to(loop.name)
  train_list = tmp_path / "train.txt"
  train_list.write_text(open(made.train_list).read() + f"{loop} 4 0\n")
  line = len(_lines(made.train_list)) + 1
  reason = (f"{train_list}:{line}: field frames_dir: folder {loop} cannot be listed: a symlink loop "
            f"(Too many levels of symbolic links) (listed as '{loop}')")
  with pytest.raises(annotations.AnnotationError) as err:
    data_setup.open_data(_config(made, train_list), tmp_path)
  assert str(err.value) == reason
  data = data_setup.open_data(_config(made, train_list, on_bad_clip="skip"), tmp_path)
  assert data.num_train == line - 1 and data.skipped_report() == [reason]  # results.json's list


def test_a_folder_listed_twice_stops_the_run_or_with_warn_is_logged_and_read(made, tmp_path, caplog):
  train_lines = open(made.train_list).read().splitlines()
  first = train_lines[0].split()
  train_list = tmp_path / "train.txt"  # line 1 again, with another label
  train_list.write_text("\n".join(train_lines + [f"{first[0]} {first[1]} {(int(first[2]) + 1) % 7}"]))
  folder = Path(made.root) / first[0]
  again = len(train_lines) + 1
  both = (f"{train_list}:{again}: folder {folder} is already listed at {train_list}:1, with label "
          f"{first[2]} there and {(int(first[2]) + 1) % 7} here")
  with pytest.raises(annotations.AnnotationError) as err:
    data_setup.open_data(_config(made, train_list, on_bad_clip="skip"), tmp_path)
  assert str(err.value).startswith(both + ": a clip listed twice is weighted twice in training")
  caplog.set_level("WARNING")
  config = _config(made, train_list, duplicate_clips="warn")
  config_checks.check_config(config)
  data = data_setup.open_data(config, tmp_path)
  assert data.num_train == again and data.skipped_report() == []
  assert f"duplicate clip (data.duplicate_clips='warn': both lines kept): {both}" in caplog.text
  batch = next(data.train_batches(4, 8, 0))  # the run proceeds
  assert batch["video"].shape == (4, 4, 8, 8, 3)


def test_a_bad_duplicate_clips_value_is_a_config_error(made, tmp_path):
  with pytest.raises(config_checks.ConfigError) as err:
    config_checks.check_config(_config(made, made.train_list, duplicate_clips="skip"))
  assert str(err.value) == ("config.data.duplicate_clips='skip': expected one of ('error', 'warn') "
                            "(a folder listed twice in one list)")


def test_test_clips_that_are_training_clips_are_a_warning_naming_both_lines(made, tmp_path, caplog):
  caplog.set_level("WARNING")
  data = data_setup.open_data(_config(made, made.train_list, made.train_list), tmp_path)
  n = data.num_test
  assert n == len(_lines(made.train_list))
  folder = Path(made.root) / _lines(made.train_list)[0]
  assert (f"{n} of {n} test clips are also training clips: the test metrics are inflated by clips "
          f"the model was trained on\n  test {made.train_list}:1 is train {made.train_list}:1: "
          f"{folder}\n") in caplog.text
  caplog.clear()
  data_setup.open_data(_config(made, made.train_list), tmp_path)  # disjoint lists: no warning
  assert "training clips" not in caplog.text


def test_the_stream_table_keeps_the_numbers_every_run_used():
  # Written out by hand: changing any of them changes every batch and breaks exact resume.
  assert [(s.name, s.value) for s in seeds.Root] == [("PERMUTATION", 1), ("CLIP", 2)]
  assert [s.value for s in seeds.Clip] == [0, 1, 2, 3, 4]
  assert [s.name for s in seeds.Clip] == ["SAMPLING", "BRIGHTNESS", "ROTATION", "CROP", "FLIP"]
  assert [(s.name, s.value) for s in seeds.Sampling] == [("JITTER", 0), ("SCATTER", 1)]
  assert [s.name for s in seeds.Crop] == ["AREA", "RATIO", "SWAP", "X", "Y", "FILL_Y", "FILL_X"]
  assert [s.value for s in seeds.Crop] == list(range(7))


def test_every_stream_of_a_clip_has_its_own_key():
  clip = pipeline.clip_seed(5, seed=3)
  keys = [tuple(seeds.sub(clip, s).numpy()) for s in seeds.Clip]
  keys += [tuple(seeds.sub(seeds.sub(clip, seeds.Clip.CROP), s).numpy()) for s in seeds.Crop]
  sampler = seeds.sub(clip, seeds.Clip.SAMPLING)
  keys += [tuple(seeds.sub(sampler, s).numpy()) for s in seeds.Sampling]
  keys += [tuple(pipeline.clip_seed(p, 3).numpy()) for p in (4, 6)]
  keys.append(tuple(seeds.sub(seeds.key(3, seeds.Root.PERMUTATION), 5).numpy()))
  assert len(set(keys)) == len(keys)
  # The clip key is the user's seed, the CLIP row, then the position: fold_in by hand.
  expected = tf.random.experimental.stateless_fold_in(tf.constant([3, 2], tf.int64),
                                                      tf.constant(5, tf.int64))
  np.testing.assert_array_equal(clip, expected)
