"""The tf.data pipeline: determinism, exact resume, host sharding, eval padding, clear errors."""

import io
import itertools
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dferclip_jax.data import augment, pipeline, sampling, synthetic
from dferclip_jax.data.annotations import read_annotation_list
from dferclip_jax.data.records import ClipRecord
from dferclip_jax.data.sources import ClipDataError, FolderSource

SIZE = 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  made = synthetic.make_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_classes=3,
                                          clips_per_class=5, frames_range=(3, 20), image_size=24,
                                          test_fraction=0.4)
  train, _ = read_annotation_list(made.train_list, 3, root=made.root)
  test, _ = read_annotation_list(made.test_list, 3, root=made.root)
  return FolderSource(train), FolderSource(test)


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _train(source, **kw):
  args = dict(augmentation="dfew", batch_size=3, image_size=SIZE, num_frames=4, seed=7)
  return pipeline.train_batches(source, **{**args, **kw})


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_shapes_and_types(dataset):
  batch = next(_train(dataset[0]))
  assert batch["video"].shape == (3, 4, SIZE, SIZE, 3) and batch["video"].dtype == np.uint8
  assert batch["label"].shape == (3,) and batch["label"].dtype == np.int32


def test_deterministic_for_a_seed(dataset):
  a, b = _take(_train(dataset[0]), 3), _take(_train(dataset[0]), 3)
  _assert_same(a, b)
  c = _take(_train(dataset[0], seed=8), 3)
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))


def test_start_step_resumes_exactly(dataset):
  # 9 clips, 3 per batch: steps 2..5 cross an epoch boundary.
  full = _take(_train(dataset[0]), 6)
  _assert_same(_take(_train(dataset[0], start_step=2), 4), full[2:])
  _assert_same(_take(_train(dataset[0], start_step=5), 1), full[5:])


def test_every_clip_once_per_epoch_in_a_fresh_order(dataset):
  n = len(dataset[0])
  epochs = [pipeline.example_at(np.arange(e * n, (e + 1) * n), n, 7).numpy() for e in range(3)]
  for order in epochs:
    assert sorted(order) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])
  # The labels the pipeline yields are those of the examples these positions name.
  labels = np.concatenate([b["label"] for b in _take(_train(dataset[0]), 3)])
  np.testing.assert_array_equal(labels, dataset[0].labels[epochs[0]])


def test_hosts_split_each_global_batch(dataset):
  single = _take(_train(dataset[0], batch_size=4), 3)
  hosts = [_take(_train(dataset[0], batch_size=2, process_index=h, process_count=2), 3)
           for h in range(2)]
  for step in range(3):
    for key in ("video", "label"):
      joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      np.testing.assert_array_equal(joined, single[step][key])


def test_one_draw_per_clip_in_the_pipeline(tmp_path):
  frame = np.random.default_rng(0).integers(0, 256, (30, 26, 3), dtype=np.uint8)
  folder = tmp_path / "same"
  folder.mkdir()
  for t in range(9):
    Image.fromarray(frame).save(folder / f"{t:03d}.jpg", quality=95)
  source = FolderSource([ClipRecord(str(folder), 9, 0)])
  for kind in augment.KINDS:
    for batch in _take(_train(source, augmentation=kind, batch_size=2), 2):
      for clip in batch["video"]:
        assert (clip == clip[0]).all()


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_eval_counts_every_clip_once(dataset, hosts):
  test = dataset[1]
  n = len(test)  # 6 clips; batch 4: one or more padded batches
  steps = pipeline.num_eval_batches(n, 4, hosts)
  seen = []
  for h in range(hosts):
    batches = list(pipeline.eval_batches(test, batch_size=4, image_size=SIZE, num_frames=4,
                                         process_index=h, process_count=hosts))
    assert len(batches) == steps
    for batch in batches:
      assert batch["video"].shape == (4, 4, SIZE, SIZE, 3) and batch["mask"].dtype == bool
      index = batch["index"][batch["mask"]]
      np.testing.assert_array_equal(batch["label"][batch["mask"]], test.labels[index])
      assert (batch["index"][~batch["mask"]] == -1).all()
      assert (batch["video"][~batch["mask"]] == 0).all()
      seen.extend(index.tolist())
  assert sorted(seen) == list(range(n))


def test_eval_reads_the_middle_frames_resized(dataset):
  test = dataset[1]
  batch = next(pipeline.eval_batches(test, batch_size=2, image_size=SIZE, num_frames=4))
  record = test.records[0]
  names = sorted(p.name for p in pathlib.Path(record.path).glob("*.jpg"))
  for t, frame in enumerate(sampling.test_indices(record.num_frames, num_segments=4).numpy()[0]):
    image = Image.open(f"{record.path}/{names[frame]}").convert("RGB")
    expected = np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR)).astype(int)
    assert np.abs(batch["video"][0, t].astype(int) - expected).max() <= 1


def test_eval_several_clips(dataset):
  batch = next(pipeline.eval_batches(dataset[1], batch_size=2, image_size=SIZE, num_frames=4,
                                     num_clips=3))
  assert batch["video"].shape == (2, 3, 4, SIZE, SIZE, 3)


def _broken_source(tmp_path, data_for_frame_1):
  folder = tmp_path / "clip"
  folder.mkdir()
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "000.jpg")
  (folder / "001.jpg").write_bytes(data_for_frame_1)
  return FolderSource([ClipRecord(str(folder), 2, 0, source="list.txt", line=12)])


def test_corrupt_jpeg_error_names_the_file(tmp_path):
  source = _broken_source(tmp_path, b"\xff\xd8\xff\xe0 this is not a JPEG")
  with pytest.raises(ClipDataError, match=r"list.txt:12 .*clip/001.jpg: cannot decode the image"):
    next(_train(source))
  with pytest.raises(ClipDataError, match=r"list.txt:12 .*clip/001.jpg: cannot decode"):
    next(pipeline.eval_batches(source, batch_size=2, image_size=SIZE, num_frames=4))


def test_frames_of_different_sizes_error_names_the_frame(tmp_path):
  image = Image.fromarray(np.zeros((21, 20, 3), np.uint8))
  buffer = io.BytesIO()
  image.save(buffer, "JPEG")
  source = _broken_source(tmp_path, buffer.getvalue())
  with pytest.raises(ClipDataError, match=r"clip/001.jpg: frame size \(21, 20\) differs"):
    next(_train(source))


def test_bad_arguments_fail(dataset):
  with pytest.raises(ValueError, match="augmentation='flip'"):
    next(_train(dataset[0], augmentation="flip"))
  with pytest.raises(ValueError, match="process_index=2"):
    next(_train(dataset[0], process_index=2, process_count=2))
  with pytest.raises(ValueError, match="batch_size=0"):
    next(pipeline.eval_batches(dataset[1], batch_size=0, image_size=SIZE))
  with pytest.raises(ValueError, match="empty"):
    FolderSource([])


def test_record_lists_are_accepted_directly(dataset):
  records = list(dataset[0].records)
  _assert_same(_take(_train(records), 2), _take(_train(dataset[0]), 2))


def test_datasets_are_plain_tf_data(dataset):
  ds = pipeline.train_dataset(dataset[0], augmentation="mafw", batch_size=3, image_size=SIZE,
                              num_frames=4, seed=1)
  assert isinstance(ds, tf.data.Dataset)
  assert ds.element_spec["video"].shape.as_list() == [3, 4, SIZE, SIZE, 3]


# ---------------------------------------------------------------------------------------------
# on_bad_clip="skip" at read time: a clip whose frames do not decode.
# ---------------------------------------------------------------------------------------------


def _truncate_frames(folder):
  """Every frame of the clip cut to half its bytes: a truncated JPEG that libjpeg refuses."""
  for frame in sorted(pathlib.Path(folder).iterdir()):
    data = frame.read_bytes()
    frame.write_bytes(data[:len(data) // 2])


@pytest.fixture
def one_broken_clip(tmp_path):
  made = synthetic.make_synthetic_dataset(tmp_path / "syn", num_classes=3, clips_per_class=4,
                                          frames_range=(3, 6), image_size=16)
  train, _ = read_annotation_list(made.train_list, 3, root=made.root)
  test, _ = read_annotation_list(made.test_list, 3, root=made.root)
  _truncate_frames(train[2].path)
  _truncate_frames(test[1].path)
  return FolderSource(train), FolderSource(test)


def test_unreadable_clip_stops_the_run_in_error_mode(one_broken_clip):
  train, test = one_broken_clip
  record = train.records[2]
  with pytest.raises(ClipDataError, match=rf"{record.source}:{record.line} \({record.path}\): "
                                          rf"{record.path}/\d+\.jpg: cannot decode the image"):
    _take(_train(train), 6)
  with pytest.raises(ClipDataError, match=rf"{test.records[1].path}/\d+\.jpg: cannot decode"):
    list(pipeline.eval_batches(test, batch_size=2, image_size=SIZE, num_frames=4))


def test_unreadable_clip_is_skipped_and_resume_stays_exact(one_broken_clip):
  train, _ = one_broken_clip
  bad = {}
  batches = _take(_train(train, bad=bad), 6)  # 18 positions: every clip drawn twice
  assert list(bad) == [2] and train.records[2].path in bad[2] and "cannot decode" in bad[2]
  # The broken clip's positions read the next clip in list order (clip 3): its label is there.
  for step, batch in enumerate(batches):
    drawn = pipeline.example_at(pipeline.host_positions(step, 3), len(train), 7).numpy()
    expected = [train.records[3 if e == 2 else e].label for e in drawn]
    np.testing.assert_array_equal(batch["label"], expected)
  # A run resumed at step 3 with the skipped clips it checkpointed reads the same batches.
  _assert_same(_take(_train(train, start_step=3, bad=dict(bad)), 3), batches[3:])
  _assert_same(_take(_train(train, bad={}), 6), batches)  # and a new run again finds the same


def test_unreadable_or_missing_eval_frames_are_masked_out(one_broken_clip):
  _, test = one_broken_clip
  missing = sorted(pathlib.Path(test.records[0].path).iterdir())[0]  # the test sampler reads frame 0
  missing.unlink()  # deleted after the list was read
  bad = {}
  batches = list(pipeline.eval_batches(test, batch_size=2, image_size=SIZE, num_frames=4, bad=bad))
  assert sorted(bad) == [0, 1] and f"{missing}: cannot read" in bad[0] and "cannot decode" in bad[1]
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert sorted(index[mask].tolist()) == [i for i in range(len(test)) if i not in (0, 1)]
