"""The face step's pure parts, against hand computations: following one face, interpolation,
smoothing, square boxes, crops past the frame's edge, labels and splits, output names."""

import numpy as np
import pytest

from dferclip_jax.cli import faces as faces_cli
from dferclip_jax.data import class_orders, frames
from dferclip_jax.faces import extract, labels, tracking


def det(*boxes):
  return np.array(boxes, float).reshape(-1, 5)


SMALL, BIG = [0, 0, 10, 10, 0.99], [100, 100, 140, 140, 0.95]


def plan(detections, margin=0.0, smooth=1, min_confidence=0.9, max_jump=0.5):
  return tracking.plan_crops(detections, margin=margin, smooth=smooth, min_confidence=min_confidence,
                             max_jump=max_jump)


def test_follows_the_largest_face_then_the_nearest():
  detections = [det(SMALL, BIG),
                det([2, 0, 12, 10, 0.99], [104, 100, 144, 140, 0.99]),
                det([4, 0, 14, 10, 0.99]),           # only the other face: 124 px away, allowed 20
                det([110, 100, 150, 140, 0.99])]     # 6 px from the last sighting, 2 frames ago
  track = plan(detections)
  # Centres x 120, 124, (interpolated) 127, 130; side 40; no margin, no smoothing.
  np.testing.assert_array_equal(track.boxes, [[100, 100, 140, 140], [104, 100, 144, 140],
                                              [107, 100, 147, 140], [110, 100, 150, 140]])
  np.testing.assert_array_equal(track.seen, [True, True, False, True])
  assert track.face_frames == 3


def test_frames_between_examined_ones_are_interpolated_and_seen():
  track = plan([det(BIG), None, None, det([110, 100, 150, 140, 0.99])])
  np.testing.assert_array_equal(track.boxes[:, 0], [100, 103, 107, 110])  # 120 + 10 t / 3 - 20
  assert track.face_frames == 4


def test_smoothing_margin_and_square_boxes():
  centres = [det([100 + d, 100, 140 + d, 140, 0.99]) for d in (0, 4, 7, 10)]
  smoothed = plan(centres, smooth=3)
  # Edge-padded centred mean of 120, 124, 127, 130: 121.33, 123.67, 127, 129.
  np.testing.assert_array_equal(smoothed.boxes[:, 0], [101, 104, 107, 109])
  tall = plan([det([100, 100, 120, 140, 0.99])], margin=0.25)
  # Centre (110, 120), longer side 40, plus a quarter of it on each side: a 60-pixel square.
  np.testing.assert_array_equal(tall.boxes, [[80, 90, 140, 150]])


def test_before_the_first_sighting_the_box_is_held_and_weak_detections_are_ignored():
  track = plan([det([0, 0, 50, 50, 0.5]), det(BIG)])
  np.testing.assert_array_equal(track.boxes, [[100, 100, 140, 140]] * 2)
  np.testing.assert_array_equal(track.seen, [False, True])
  assert plan([det([0, 0, 50, 50, 0.5]), None, det()]) is None


def test_crop_past_the_edge_is_black():
  frame = np.full((10, 10, 3), 200, np.uint8)
  out = extract.crop(frame, [-5, -5, 5, 5], 10)
  assert out.shape == (10, 10, 3)
  assert (out[:5, :5] == 0).all() and (out[5:, 5:] == 200).all()


def test_frame_names_are_zero_padded():
  assert frames.frame_file_name(7, 16) == "00007.jpg"
  assert frames.frame_file_name(7, 123456) == "000007.jpg"


def test_settings_are_checked():
  with pytest.raises(ValueError, match="detect_every=0: must be at least 1"):
    extract.FaceSettings(detect_every=0).check()


def test_output_names_below_the_common_folder(tmp_path):
  names = faces_cli.output_names([str(tmp_path / "happy" / "a.mp4"), str(tmp_path / "sad" / "a.mp4"),
                                  str(tmp_path / "sad" / "my clip")])
  assert sorted(names.values()) == ["happy/a", "sad/a", "sad/my_clip"]
  assert faces_cli.output_names([str(tmp_path / "x" / "frames")]) == {str(tmp_path / "x" / "frames"): "frames"}
  with pytest.raises(ValueError, match="would both be written to a/"):
    faces_cli.output_names([str(tmp_path / "a.mp4"), str(tmp_path / "a.avi")])


def test_labels_file_and_splits(tmp_path):
  spec = tmp_path / "labels.txt"
  spec.write_text("# my videos\nclips/one.mp4 Happiness\nclips/two.mp4 3 test\n\n" +
                  "".join(f"clips/s{i}.mp4 sadness\n" for i in range(10)))
  items = labels.assign_splits(labels.read_labels(str(spec), class_orders.DFERCLIP_7), 0.2)
  by_name = {i.path.rsplit("/", 1)[1]: i for i in items}
  assert (by_name["one.mp4"].label, by_name["two.mp4"].label, by_name["two.mp4"].split) == (0, 3, "test")
  assert by_name["one.mp4"].split == "train"  # one clip of its class: floor(0.2) = 0 to test
  assert by_name["one.mp4"].path == str(tmp_path / "clips" / "one.mp4")
  assert sorted(n for n, i in by_name.items() if i.split == "test" and i.label == 1) == ["s4.mp4", "s9.mp4"]
  spec.write_text("a.mp4 happiness\nb.mp4 joy\n")
  with pytest.raises(labels.LabelError, match=r"labels.txt:2: label 'joy' is neither"):
    labels.read_labels(str(spec), class_orders.DFERCLIP_7)


def test_labels_folder_per_class(tmp_path):
  for split, label, name in (("train", "happiness", "a.mp4"), ("train", "6", "frames_b"), ("test", "sadness", "c.avi")):
    path = tmp_path / "videos" / split / label / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if "." not in name else path.write_bytes(b"")
  (tmp_path / "videos" / "train" / "happiness" / "notes.txt").write_text("not a clip")
  items = labels.read_labels(str(tmp_path / "videos"), class_orders.DFERCLIP_7)
  assert [(i.path.split("videos/")[1], i.label, i.split) for i in items] == [
      ("test/sadness/c.avi", 1, "test"), ("train/6/frames_b", 6, "train"), ("train/happiness/a.mp4", 0, "train")]
  (tmp_path / "videos" / "train" / "calm").mkdir()
  with pytest.raises(labels.LabelError, match="calm/ \\(a class folder\\): label 'calm'"):
    labels.read_labels(str(tmp_path / "videos"), class_orders.DFERCLIP_7)
