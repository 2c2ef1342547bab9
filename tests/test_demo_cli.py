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
