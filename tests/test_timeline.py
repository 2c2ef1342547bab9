"""``--mode=predict --timeline=true``: windows by hand, frames read once in order and dropped when
done, a video of class A then class B labelled A then B by the README demo's trained model
(tests/fixtures/demo_model, scripts/make_demo_model_fixture.py), the CSV and PNG beside the
JSON lines, and a 10-minute 720p video under the stated memory bound."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import videos
from conftest import FIXTURES, REPO
from dferclip_jax import predict, timeline

pytest.importorskip("av", reason="video files need requirements-video.txt (PyAV)")

MODEL = FIXTURES / "demo_model"
# The bound README "Try it on your own video" states for a timeline over a video of any length (the process,
# TensorFlow and JAX included; a 10-minute 720p video decoded whole would be 3.3 GB of frames).
PEAK_RSS_BOUND_MIB = 1536


def test_windows_by_hand():
  W = timeline.Window
  assert timeline.make_windows(10, 1.0, 4, 3) == [W(0, 4), W(3, 7), W(6, 10)]
  assert timeline.make_windows(11, 1.0, 4, 3) == [W(0, 4), W(3, 7), W(6, 10), W(7, 11)]  # the tail
  assert timeline.make_windows(3, 1.0, 4, 3) == [W(0, 3)]  # shorter than a window: one
  assert timeline.make_windows(4, 1.0, 4, 3) == [W(0, 4)]
  assert timeline.make_windows(100, 8.0, 2.0, 1.0)[:2] == [W(0, 16), W(8, 24)]  # seconds x fps
  with pytest.raises(ValueError, match="must be > 0"):
    timeline.make_windows(10, 1.0, 0, 1)


def test_window_indices_are_evaluation_sampling_shifted():
  # 16 segments over 24 frames: tick 1.5, int(1.5 k + 0.75) (the official test sampler), + start.
  got = timeline.window_indices(timeline.Window(8, 32), 16)
  want = 8 + np.array([int(1.5 * k + 0.75) for k in range(16)])
  np.testing.assert_array_equal(got, want[None])


def test_window_clips_reads_each_frame_once_and_lets_it_go():
  windows = timeline.make_windows(40, 1.0, 8, 4)
  indices = [timeline.window_indices(w, 4) for w in windows]
  resized, alive = [], []

  def frames():
    for i in range(40):
      yield i, np.full((2, 2, 3), i, np.uint8)

  def resize(index, frame):
    assert index == int(frame[0, 0, 0])
    resized.append(int(frame[0, 0, 0]))
    return frame[:1, :1]

  out = []
  for w, clip in timeline.window_clips(frames(), indices, resize):
    out.append(w)
    np.testing.assert_array_equal(clip[..., 0, 0, 0], indices[w])  # the frames it names, in order
    # kept now: every frame resized so far, but those whose last window came before this one
    freed = ({int(f) for done in indices[:w] for f in np.unique(done)}
             - {int(f) for later in indices[w:] for f in np.unique(later)})
    alive.append(len(set(resized) - freed))
  assert out == list(range(len(windows)))
  needed = sorted({int(f) for idx in indices for f in np.unique(idx)})
  assert resized == needed  # each sampled frame resized once, in order; no other frame
  assert max(alive) <= 2 * 4  # never more than two windows' frames kept (8 s window, 4 s stride)


def write_video(path, frames, fps):
  # ffv1, lossless: the very frames the demo model was evaluated on
  videos.write_video(path, frames, fps=fps, codec="ffv1", pix_fmt="bgr0")


@pytest.fixture(scope="module")
def demo_clips(tmp_path_factory):
  """The README demo's test clips (the same recipe, regenerated), 16 frames each as evaluation
  samples them: {label: [uint8 [16, 40, 40, 3], ...]}."""
  from PIL import Image
  from configs import demo
  from dferclip_jax.data import sampling
  from dferclip_jax.train import data_setup
  config = demo.get_config()
  with config.unlocked():
    config.data.synthetic.dir = str(tmp_path_factory.mktemp("demo_data"))
  _, test_list, root = data_setup.synthetic_lists(config, None)
  clips = {}
  for line in Path(test_list).read_text().splitlines():
    folder, _, label = line.split()
    names = sorted((Path(root) / folder).iterdir())
    idx = sampling.test_indices(len(names), num_segments=16).numpy()[0]
    clips.setdefault(int(label), []).append(np.stack([np.asarray(Image.open(names[i]).convert("RGB"))
                                                      for i in idx]))
  return clips


def run_main(*args):
  result = subprocess.run([sys.executable, str(REPO / "main.py"), "--mode=predict", "--config=configs/demo.py",
                           f"--checkpoint={MODEL}", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_class_a_then_class_b_over_time(demo_clips, tmp_path):
  """4 clips of neutral then 4 of anger, 16 frames each at 8 fps: 2 s windows every 2 s lie on the
  clips, the top class is neutral before the cut and anger after it; the CSV and the PNG agree."""
  a, b = 2, 3  # neutral, anger: classes the demo model tells apart (test recall 100 % each)
  frames = np.concatenate(demo_clips[a][:4] + demo_clips[b][:4])
  video = tmp_path / "a_then_b.mkv"
  write_video(video, frames, fps=8)
  out = tmp_path / "out" / "timeline.jsonl"
  run_main(f"--inputs={video}", "--timeline=true", "--window_s=2", "--stride_s=2", f"--output={out}")
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(r["start_s"], r["end_s"]) for r in rows] == [(2.0 * k, 2.0 * k + 2) for k in range(8)]
  names = json.loads((MODEL / "model.json").read_text())["class_names"]
  assert [r["label"] for r in rows] == [names[a]] * 4 + [names[b]] * 4
  for r in rows:
    assert r["input"] == str(video) and r["label"] == r["top_k"][0][0]
    assert sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-4)
  table = list(csv.DictReader(open(out.parent / f"{timeline.slug(str(video))}.csv")))
  assert [t["label"] for t in table] == [r["label"] for r in rows]
  assert float(table[5][names[b]]) == pytest.approx(rows[5]["probs"][names[b]], abs=1e-6)
  png = (out.parent / f"{timeline.slug(str(video))}.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_frame_folder_gives_the_video_s_timeline(demo_clips, tmp_path):
  """The same frames as PNG files (lossless, like the ffv1 video) at --frames_fps=8: the same
  windows and probabilities as the video file."""
  from PIL import Image
  frames = np.concatenate(demo_clips[2][:2] + demo_clips[3][:2])
  folder = tmp_path / "frames"
  folder.mkdir()
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"{t:05d}.png")
  video = tmp_path / "same.mkv"
  write_video(video, frames, fps=8)
  plots = tmp_path / "plots"
  run_main(f"--inputs={folder},{video}", "--timeline=true", "--frames_fps=8",
           f"--output={tmp_path / 'both.jsonl'}", f"--timeline_dir={plots}")
  rows = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
  # --timeline_dir: a CSV and a PNG per input there, none beside --output.
  assert sorted(p.name for p in plots.iterdir()) == sorted(
      f"{timeline.slug(str(x))}.{ext}" for x in (folder, video) for ext in ("csv", "png"))
  assert not list(tmp_path.glob("*.csv"))
  from_folder = [r for r in rows if r["input"] == str(folder)]
  from_video = [r for r in rows if r["input"] == str(video)]
  assert len(from_folder) == len(from_video) == 6  # 64 frames, 8 s: 3 s windows at 0, 1, ..., 5 s
  for a, b in zip(from_folder, from_video):
    assert (a["start_s"], a["end_s"]) == (b["start_s"], b["end_s"])
    for name, p in b["probs"].items():
      assert a["probs"][name] == pytest.approx(p, abs=1e-6)


def test_a_clip_shorter_than_a_window_is_one_window_equal_to_predict(demo_clips, tmp_path):
  video = tmp_path / "short.mkv"
  write_video(video, demo_clips[3][0], fps=8)  # 2 s, under the default 3 s window
  run_main(f"--inputs={video}", "--timeline=true", f"--output={tmp_path / 't.jsonl'}")
  run_main(f"--inputs={video}", f"--output={tmp_path / 'p.jsonl'}")
  (window,) = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
  (whole,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
  assert (window["start_s"], window["end_s"]) == (0.0, 2.0)
  for name, p in whole["probs"].items():
    assert window["probs"][name] == pytest.approx(p, abs=1e-6)  # the same frames, the same answer


def test_ten_minutes_of_720p_in_bounded_memory(tmp_path):
  """1200 frames of 1280 x 720 (2 fps): 3.3 GB decoded whole; the timeline's process peaks under
  PEAK_RSS_BOUND_MIB, measured by a parent that runs nothing else."""
  video = tmp_path / "long.mp4"

  def frames():
    frame = np.zeros((720, 1280, 3), np.uint8)
    for i in range(1200):
      frame[:] = (i * 7) % 256
      frame[:, (i * 13) % 1280:, 1] = 200
      yield frame
  videos.write_video(video, frames(), fps=2)
  out = tmp_path / "long.jsonl"
  command = [sys.executable, str(REPO / "main.py"), "--mode=predict", "--config=configs/demo.py",
             f"--checkpoint={MODEL}", f"--inputs={video}", "--timeline=true", f"--output={out}"]
  measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)")
  result = subprocess.run([sys.executable, "-c", measure, *command], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  code, peak_mib = map(int, result.stdout.split())
  assert code == 0, result.stderr[-3000:]
  print(f"10 min of 720p: peak RSS {peak_mib} MiB")
  assert peak_mib < PEAK_RSS_BOUND_MIB
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == 598 and rows[-1]["end_s"] == 600.0  # 3 s windows every 1 s over 600 s


def test_a_frame_folder_shorter_than_a_window_is_one_window(tmp_path):
  """20 frames at the default 30 fps (0.67 s, under the 3 s window): one window over all of them,
  its times plain floats (a folder's frame count once came back as a tensor and broke the times)."""
  from PIL import Image
  from dferclip_jax.cli import demo
  folder = tmp_path / "short"
  folder.mkdir()
  for t, frame in enumerate(np.random.default_rng(1).integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)):
    Image.fromarray(frame).save(folder / f"{t:05d}.png")
  model, variables, names, _, _ = demo.load(str(MODEL))
  (row,) = predict.predict_timeline(model, variables, [str(folder)], names, batch_size=2)
  assert (row["start_s"], row["end_s"]) == (0.0, 20 / 30) and type(row["end_s"]) is float
  (whole,) = predict.predict(model, variables, [str(folder)], names, batch_size=1)
  for name, p in whole["probs"].items():
    assert row["probs"][name] == pytest.approx(p, abs=1e-6)
