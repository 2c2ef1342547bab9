"""``python -m dferclip_jax.cli.demo``'s model argument: a model directory, an official .pth, and
no --model without the README demo's run (a usage error saying what to run)."""

import subprocess
import sys

from conftest import FIXTURES, REPO
from dferclip_jax.cli import demo


def test_a_model_directory_gives_its_names_and_texts():
  model, _, names, texts, source = demo.load(str(FIXTURES / "demo_model"))
  assert names == ["happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"]
  assert texts == [f"{n}." for n in names] and model.num_classes == 7
  assert source == str(FIXTURES / "demo_model")


def test_an_official_pth(official_fixture_dir):
  model, _, names, texts, source = demo.load(str(official_fixture_dir / "official.pth"))
  assert source.startswith("official ") and len(names) == model.num_classes == len(texts)


def test_no_model_and_no_demo_run_says_what_to_run(tmp_path):
  result = subprocess.run([sys.executable, "-m", "dferclip_jax.cli.demo"], cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "python main.py --config=configs/demo.py --workdir=workdirs/demo" in result.stderr


def test_a_job_reads_the_clip_once_and_shows_what_the_model_saw(tmp_path, monkeypatch):
  """The whole-clip answer and the crops come from one read (one face detection where asked);
  the timeline's plot is rendered in memory, nothing left in the upload folder."""
  import base64
  import io
  import numpy as np
  from PIL import Image
  from dferclip_jax import predict
  from dferclip_jax.demo import server
  model, variables, names, texts, source = demo.load(str(FIXTURES / "demo_model"))
  folder = tmp_path / "clip"
  folder.mkdir()
  frames = np.random.default_rng(0).integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"{t:05d}.png")
  reads = []
  real = predict.read_video_clip
  monkeypatch.setattr(predict, "read_video_clip", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
  app = server.Demo(model, variables, names, texts, source)
  result = app._compute(server.Job(), str(folder), faces=False)
  assert reads == [str(folder)]
  size = model.clip_config.vision_config.image_size
  expected = real(str(folder), size, model.num_frames)
  crops = [np.asarray(Image.open(io.BytesIO(base64.b64decode(c)))) for c in result["crops"]]
  np.testing.assert_array_equal(np.stack(crops), expected)
  assert base64.b64decode(result["timeline_png"])[:8] == b"\x89PNG\r\n\x1a\n"
  assert list(app.uploads.iterdir()) == []
  assert "clip" not in result and result["label"] in names
