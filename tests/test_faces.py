"""The face step on real photographs (scikit-image's astronaut portrait moved and scaled over a
canvas, written as videos at test time), a face-free video (its coffee cup), tracking by hand,
labels to DFER-CLIP lists, and predict --faces=true end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import videos
from dferclip_jax.faces import extract, labels

pytest.importorskip("mtcnn")
skimage_data = pytest.importorskip("skimage.data")
av = pytest.importorskip("av")

# Eyes-to-mouth of the astronaut in data.astronaut() (512 x 512), marked by eye on the picture:
# every crop must contain it.
FACE_CORE = np.array([195, 90, 255, 150])
CANVAS = (240, 320)  # H, W
SIZE = 64


def portrait_frames(positions):
  """Frames of the portrait scaled to ``side`` pixels with its top-left at (x, y); -> frames, cores."""
  from PIL import Image
  photo = Image.fromarray(skimage_data.astronaut())
  frames, cores = [], []
  for x, y, side in positions:
    canvas = np.full(CANVAS + (3,), 90, np.uint8)
    canvas[y:y + side, x:x + side] = np.asarray(photo.resize((side, side), Image.BILINEAR))
    frames.append(canvas)
    cores.append(FACE_CORE * side / 512 + np.array([x, y, x, y]))
  return np.stack(frames), np.stack(cores)


def write_video(path, frames):
  videos.write_video(path, frames, options={"qscale": "2"})


# Seven frames: the portrait slides right and down while it grows from 150 to 186 pixels.
MOVING = [(10 + 10 * t, 5 + 3 * t, 150 + 6 * t) for t in range(7)]
STILL = [(60, 20, 200)] * 3


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  from PIL import Image
  root = tmp_path_factory.mktemp("media")
  moving, moving_cores = portrait_frames(MOVING)
  write_video(root / "moving.mp4", moving)
  still, still_cores = portrait_frames(STILL)
  os.makedirs(root / "still_frames")
  for t, frame in enumerate(still):
    Image.fromarray(frame).save(root / "still_frames" / f"{t:03d}.png")
  coffee = np.asarray(Image.fromarray(skimage_data.coffee()).resize(CANVAS[::-1]))
  write_video(root / "coffee.avi", np.stack([coffee] * 3))
  return {"root": root, "moving": str(root / "moving.mp4"), "moving_cores": moving_cores,
          "still": str(root / "still_frames"), "still_cores": still_cores,
          "coffee": str(root / "coffee.avi")}


def assert_boxes_cover(boxes, cores):
  boxes = np.asarray(boxes)
  assert boxes.shape == cores.shape
  assert (boxes[:, :2] <= cores[:, :2]).all() and (boxes[:, 2:] >= cores[:, 2:]).all(), (boxes, cores)
  sides, core_sides = boxes[:, 2] - boxes[:, 0], cores[:, 2] - cores[:, 0]
  assert (boxes[:, 3] - boxes[:, 1] == sides).all()  # square
  assert (sides < 4 * core_sides).all(), (sides, core_sides)  # the face, not the whole frame


def test_faces_command_crops_the_face_in_every_frame(media, tmp_path):
  from dferclip_jax.cli import faces
  from PIL import Image
  out = tmp_path / "crops"
  inputs = [media["moving"], media["coffee"], media["still"]]
  settings = extract.FaceSettings(size=SIZE)
  records = faces.run(inputs, str(out), settings, workers=2, progress=False)
  assert [r["input"] for r in records] == inputs
  moving, coffee, still = records
  assert "no face found in 3 examined frame(s)" in coffee["error"] and "output" not in coffee
  for record, cores, name in ((moving, media["moving_cores"], "moving"), (still, media["still_cores"], "still_frames")):
    assert record["output"] == str(out / name)
    assert record["frames"] == record["face_frames"] == len(cores)
    assert_boxes_cover(record["boxes"], cores)
    files = sorted(os.listdir(out / name))
    assert files == [f"{t:05d}.jpg" for t in range(len(cores))]
    for f in files:
      assert Image.open(out / name / f).size == (SIZE, SIZE)
  assert not os.path.exists(out / "coffee")
  assert [json.loads(l) for l in (out / "faces.jsonl").read_text().splitlines()] == records

  # A rerun keeps finished inputs (their frames are not rewritten) and retries the failed one.
  stamp = os.stat(out / "moving" / "00000.jpg").st_mtime_ns
  again = faces.run(inputs, str(out), settings, workers=1, progress=False)
  assert again == records and os.stat(out / "moving" / "00000.jpg").st_mtime_ns == stamp


def test_detecting_every_third_frame_interpolates_between(media, tmp_path):
  from dferclip_jax.cli import faces
  settings = extract.FaceSettings(size=SIZE, detect_every=3)
  record, = faces.run([media["moving"]], str(tmp_path), settings, progress=False)
  assert record["frames"] == record["face_frames"] == 7  # examined 0, 3, 6: seen all along
  assert_boxes_cover(record["boxes"], media["moving_cores"])


def test_labels_become_lists_the_trainer_reads(media, tmp_path):
  from dferclip_jax.cli import faces
  from dferclip_jax.data import annotations, class_orders
  spec = tmp_path / "labels.txt"
  spec.write_text(f"{media['moving']} happiness train\n{media['still']} 1 test\n{media['coffee']} fear\n")
  items = labels.assign_splits(labels.read_labels(str(spec), class_orders.DFERCLIP_7), 0.2)
  out = tmp_path / "dataset"
  records = faces.run([i.path for i in items], str(out), extract.FaceSettings(size=SIZE), progress=False)
  assert faces.write_lists(str(out), items, records, class_orders.DFERCLIP_7) == {"train": 1, "test": 1}
  for split, name, count, label in (("train", "moving", 7, 0), ("test", "still_frames", 3, 1)):
    clips, skipped = annotations.read_annotation_list(out / f"{split}.txt", 7, root=out,
                                                      class_names=class_orders.DFERCLIP_7)
    assert not skipped and len(clips) == 1
    assert (clips[0].path, clips[0].num_frames, clips[0].label) == (str(out / name), count, label)


@pytest.mark.slow  # a main.py process (about 30 s on 2 cores)
def test_predict_with_faces_end_to_end(media, official_fixture_dir, tmp_path):
  from dferclip_jax.cli import convert_official
  from dferclip_jax.data import class_orders
  model_dir = tmp_path / "model"
  convert_official.convert(str(official_fixture_dir / "official.pth"), str(model_dir),
                           class_names=list(class_orders.DFERCLIP_7))
  out = tmp_path / "pred.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  subprocess.run([sys.executable, "main.py", "--mode=predict", "--config=configs/demo.py",
                  f"--checkpoint={model_dir}", "--faces=true", f"--output={out}", "--top_k=2",
                  f"--inputs={media['moving']},{media['coffee']},{media['still']}",
                  "--config.eval_batch_size=2"], check=True, env=env,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
  moving, coffee, still = [json.loads(l) for l in out.read_text().splitlines()]
  assert "no face found" in coffee["error"]
  for result, cores in ((moving, media["moving_cores"]), (still, media["still_cores"])):
    assert result["label"] in class_orders.DFERCLIP_7 and len(result["top_k"]) == 2
    summary = result["faces"]
    assert summary["frame_indices"] == list(range(len(cores)))  # 16 samples of a short clip: each frame
    assert summary["face_frames"] == summary["frames"] == len(cores)
    assert_boxes_cover(summary["boxes"], cores)


def test_missing_detector_says_how_to_install(monkeypatch):
  from dferclip_jax.faces import detector
  monkeypatch.setitem(sys.modules, "mtcnn", None)  # import mtcnn now raises ImportError
  with pytest.raises(detector.MissingDetectorError, match="requirements-video.txt"):
    detector.Detector()


def test_predict_loads_the_face_crop_of_each_sampled_frame(media):
  from PIL import Image
  from dferclip_jax import predict
  clip, summary = predict.read_video_clip(media["still"], 32, 4, faces=extract.FaceStep())
  # 4 segments over 3 frames sample frames 0, 1, 2, 2 (the test loader repeats the last).
  assert clip.shape == (4, 32, 32, 3) and summary["frame_indices"] == [0, 1, 2]
  frame = np.asarray(Image.open(os.path.join(media["still"], "000.png")))
  x0, y0, x1, y1 = summary["boxes"][0]
  assert 0 <= x0 and 0 <= y0 and x1 <= frame.shape[1] and y1 <= frame.shape[0]
  by_hand = np.asarray(Image.fromarray(frame[y0:y1, x0:x1]).resize((32, 32), Image.BOX), float)
  assert np.abs(clip[0].astype(float) - by_hand).mean() < 8  # the face, not the whole frame
  whole = np.asarray(Image.fromarray(frame).resize((32, 32), Image.BOX), float)
  assert np.abs(clip[0].astype(float) - whole).mean() > 30


def test_timeline_follows_the_face_once_over_the_video(media, tmp_path):
  """--timeline with --faces: one face track over the whole video; each window's line carries
  the crop box at its middle frame (covering the face there), a faceless video is one error line."""
  model = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                       "fixtures", "demo_model")
  out = tmp_path / "timeline.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  subprocess.run([sys.executable, "main.py", "--mode=predict", "--config=configs/demo.py",
                  f"--checkpoint={model}", "--faces=true", "--timeline=true", "--window_s=0.5",
                  "--stride_s=0.25", f"--output={out}", f"--inputs={media['moving']},{media['coffee']}"],
                 check=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 timeout=600)
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  windows, (error,) = lines[:-1], lines[-1:]
  # 7 frames at 8 fps, windows of 4 frames every 2, and the tail's window ending at the last frame
  assert [(w["start_s"], w["end_s"]) for w in windows] == [(0.0, 0.5), (0.25, 0.75), (0.375, 0.875)]
  names = json.loads(open(os.path.join(model, "model.json")).read())["class_names"]
  for w, middle in zip(windows, (1, 3, 4)):
    assert w["label"] in names and w["input"] == media["moving"]
    assert_boxes_cover([w["face_box"]], media["moving_cores"][middle:middle + 1])
  assert error["input"] == media["coffee"] and "no face found" in error["error"]
