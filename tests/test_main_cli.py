"""``main.py`` as users call it: one subprocess per mode on tiny configs, sharing one tiny trained
run, and a mistyped ``--config.x=y`` that fails before anything is built."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

CONFIG = "--config=configs/demo.py:epochs=2,clips_per_class=3"  # 14 training clips, 7 test clips
TINY = ["--config.data.num_frames=2", "--config.batch_size=8", "--config.eval_batch_size=8",
        "--config.progress_bars=False", "--config.log_every=1"]


def main(*args, check=True, timeout=300):
  result = subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny training run (two epochs of one step, two evaluations) that evaluate and predict reuse."""
  root = tmp_path_factory.mktemp("cli")
  workdir, data = root / "run", root / "data"
  main(CONFIG, f"--workdir={workdir}", f"--config.data.synthetic.dir={data}", *TINY)
  return workdir, data


def test_train(trained):
  workdir, _ = trained
  results = json.loads((workdir / "results.json").read_text())
  assert results["final"]["step"] == 2 and 0.0 <= results["final"]["uar"] <= 100.0
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "train/loss" in l] == [1, 2]
  assert any("eval/uar" in l for l in lines) and (workdir / "checkpoints").is_dir()


def test_evaluate(trained):
  workdir, data = trained
  main("--mode=evaluate", CONFIG, f"--workdir={workdir}",
       f"--config.data.synthetic.dir={data}", "--checkpoint=latest", *TINY)
  report = json.loads((workdir / "evaluation" / "latest" / "report.json").read_text())
  assert report["num_clips"] == 7 and np.array(report["confusion_matrix"]).sum() == 7
  final = json.loads((workdir / "results.json").read_text())["final"]
  assert report["uar"] == pytest.approx(final["uar"]) and report["war"] == pytest.approx(final["war"])


def test_predict_with_a_list_file_top_k_and_output(trained, tmp_path):
  workdir, data = trained
  clips = [str(data / l.split()[0]) for l in (data / "test.txt").read_text().splitlines()[:3]]
  (tmp_path / "inputs.txt").write_text("\n".join(clips[1:]) + "\n")
  out = tmp_path / "pred.jsonl"
  main("--mode=predict", "--config=configs/demo.py", f"--workdir={workdir}", "--checkpoint=latest",
       f"--inputs={clips[0]},@{tmp_path / 'inputs.txt'},{tmp_path / 'nowhere'}", "--top_k=2",
       f"--output={out}", *TINY)
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [l["input"] for l in lines] == clips + [str(tmp_path / "nowhere")]
  names = json.loads((workdir / "model.json").read_text())["class_names"]
  for line in lines[:3]:
    assert len(line["top_k"]) == 2 and line["label"] == line["top_k"][0][0] and set(line["probs"]) == set(names)
    assert sum(line["probs"].values()) == pytest.approx(1.0, abs=1e-4)
  assert "no such file" in lines[3]["error"]


def test_crossval_with_folds(tmp_path):
  main("--mode=crossval", "--config=configs/demo.py:epochs=1,clips_per_class=3", f"--workdir={tmp_path}",
       "--folds=2", *TINY)
  results = json.loads((tmp_path / "crossval_results.json").read_text())
  assert [f["fold"] for f in results["folds"]] == [2] and not (tmp_path / "fold_1").exists()
  assert json.loads((tmp_path / "fold_2" / "results.json").read_text())["final"]["step"] == 1


def test_zeroshot_on_a_tiny_pretrained_format_checkpoint(tmp_path, clip_tokenizer_dir):
  import shutil
  import jax
  from dferclip_jax.models import clip_config
  from dferclip_jax.models.clip import CLIP, init_clip_params
  from dferclip_jax.models.clip_checkpoint import save_clip
  arch = clip_config.tiny(image_size=32, patch_size=16, width=32, layers=1, projection_dim=16)
  params = jax.tree.map(np.asarray, init_clip_params(CLIP(arch), jax.random.PRNGKey(0)))
  clip_dir = save_clip(tmp_path / "clip", arch, params, formats=("safetensors",))
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(clip_tokenizer_dir / name, clip_dir / name)
  main("--mode=zeroshot", "--config=configs/demo.py:clips_per_class=3", f"--workdir={tmp_path / 'zs'}",
       f"--config.model.clip={clip_dir}", *TINY)
  report = json.loads((tmp_path / "zs" / "evaluation" / "zeroshot" / "report.json").read_text())
  assert report["num_clips"] == 7


def test_openset(tmp_path):
  main("--mode=openset", "--config=configs/hesp_demo.py:splits=5,epochs=1", f"--workdir={tmp_path}",
       "--config.data.synthetic.clips_per_class=4", "--config.progress_bars=False")
  results = json.loads((tmp_path / "openset_results.json").read_text())
  assert [s["split"] for s in results["splits"]] == [5]
  assert 0.0 <= results["summary"]["openset/auroc"]["mean"] <= 100.0


def test_mistyped_config_key_fails_before_anything_is_built(tmp_path):
  result = main("--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", "--config.data.num_frame=4",
                check=False, timeout=120)
  assert result.returncode != 0 and "num_frame" in result.stderr
  assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_zeroshot_without_pretrained_clip_is_a_usage_error(tmp_path):
  result = main("--mode=zeroshot", "--config=configs/demo.py", f"--workdir={tmp_path / 'zs'}",
                check=False, timeout=120)
  assert result.returncode != 0 and "--config.model.clip" in result.stderr
  assert "Traceback" not in result.stderr  # one clear line, not a crash
  assert not (tmp_path / "zs").exists()


def test_reproduce_usage_errors_are_one_line(tmp_path):
  result = main("--mode=reproduce", "--config=configs/dfew.py", f"--workdir={tmp_path / 'paper'}",
                "--datasets=dfew", f"--dfew_root={tmp_path}", "--folds=two", check=False, timeout=120)
  assert result.returncode != 0 and "--folds=two: expected fold numbers" in result.stderr
  result = main("--mode=reproduce", "--config=configs/dfew.py", f"--workdir={tmp_path / 'paper'}",
                "--datasets=mafw", "--config.data.root=/data/MAFW", check=False, timeout=120)
  assert result.returncode != 0 and "--mode=reproduce sets --config.data.root itself" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "paper").exists()
