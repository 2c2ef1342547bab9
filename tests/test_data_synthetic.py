"""The synthetic dataset: official list format, idempotent, class cues that survive augmentation."""

import itertools
import os

import numpy as np
import pytest

from dferclip_jax.data import class_orders, pipeline, synthetic
from dferclip_jax.data.annotations import read_annotation_list


def test_writes_lists_in_the_official_format(tmp_path):
  made = synthetic.make_synthetic_dataset(tmp_path / "s", clips_per_class=5, frames_range=(4, 9),
                                          image_size=20, test_fraction=0.4)
  assert (made.num_train, made.num_test) == (21, 14)
  assert class_orders.read_classes_file(made.classes_file) == class_orders.DFERCLIP_7
  for path, expected in ((made.train_list, 21), (made.test_list, 14)):
    records, skipped = read_annotation_list(path, 7, root=made.root,
                                            class_names=class_orders.DFERCLIP_7)
    assert len(records) == expected and not skipped
    assert all(4 <= r.num_frames <= 9 for r in records)
    assert all(len(os.listdir(r.path)) == r.num_frames for r in records)
  first = open(made.train_list).readline().split()
  assert first[0].startswith("frames/") and not os.path.isabs(first[0])
  assert sorted({r.label for r in records}) == list(range(7))


def test_is_idempotent_and_regenerates_on_new_parameters(tmp_path):
  args = dict(num_classes=3, clips_per_class=2, frames_range=(3, 3), image_size=16)
  synthetic.make_synthetic_dataset(tmp_path, **args)
  frame = tmp_path / "frames" / "c00_0000" / "00000.jpg"
  stamp = os.stat(frame).st_mtime_ns
  synthetic.make_synthetic_dataset(tmp_path, **args)
  assert os.stat(frame).st_mtime_ns == stamp
  again = synthetic.make_synthetic_dataset(tmp_path, **{**args, "frames_range": (5, 5)})
  assert len(os.listdir(frame.parent)) == 5 and again.num_train == 3
  assert synthetic.synthetic_class_names(3) == ("class_0", "class_1", "class_2")
  assert synthetic.synthetic_class_names(11) == class_orders.DFERCLIP_11


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1), "num_classes"), (dict(clips_per_class=1), "clips_per_class"),
    (dict(frames_range=(5, 4)), "frames_range"), (dict(test_fraction=1.0), "test_fraction"),
])
def test_bad_parameters_fail(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.make_synthetic_dataset(tmp_path, **kwargs)


def test_classes_stay_separable_under_training_augmentation(tmp_path):
  """A nearest-centroid rule on colour alone, fitted on DFEW-augmented training clips (crops to
  8%, flips, brightness), must classify the test clips: the cue a small model learns first."""
  made = synthetic.make_synthetic_dataset(tmp_path, clips_per_class=8, frames_range=(6, 10),
                                          image_size=32)
  train, _ = read_annotation_list(made.train_list, 7, root=made.root)
  test, _ = read_annotation_list(made.test_list, 7, root=made.root)

  def chroma(video):  # brightness-free colour of each clip
    mean = video.reshape(len(video), -1, 3).mean(1) + 1e-6
    return mean / mean.sum(1, keepdims=True)

  feats, labels = [], []
  batches = pipeline.train_batches(train, augmentation="dfew", batch_size=14, image_size=24,
                                   num_frames=4, seed=0)
  for batch in itertools.islice(batches, 6):
    feats.append(chroma(batch["video"].astype(np.float32)))
    labels.append(batch["label"])
  feats, labels = np.concatenate(feats), np.concatenate(labels)
  centroids = np.stack([feats[labels == c].mean(0) for c in range(7)])
  correct = total = 0
  for batch in pipeline.eval_batches(test, batch_size=8, image_size=24, num_frames=4):
    f = chroma(batch["video"].astype(np.float32))[batch["mask"]]
    guess = np.argmin(((f[:, None] - centroids[None]) ** 2).sum(-1), 1)
    correct += int((guess == batch["label"][batch["mask"]]).sum())
    total += int(batch["mask"].sum())
  assert total == 14 and correct / total >= 0.85
