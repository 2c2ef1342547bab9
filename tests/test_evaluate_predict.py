"""Evaluate, predict and cross-validate: converted official checkpoints, frame folders, video files,
unreadable inputs, and a 2-fold cross-validation of the demo."""

import json

import numpy as np
import pytest

import videos
from configs import demo
from dferclip_jax import crossval, evaluation, predict
from dferclip_jax.cli import convert_official
from dferclip_jax.data import class_orders
from dferclip_jax.export import load_model
from dferclip_jax.train import trainer


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def converted(official_fixture_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("converted") / "model"
  convert_official.convert(str(official_fixture_dir / "official.pth"), str(out),
                           class_names=list(class_orders.DFERCLIP_7))
  return out


def fixture_config(official_fixture_dir, tmp_path):
  """A config whose test list is the fixture's two frame folders (labels 0 and 1)."""
  listing = tmp_path / "test.txt"
  listing.write_text("".join(f"{official_fixture_dir / 'frames' / f'clip{i}'} 16 {i}\n" for i in (0, 1)))
  config = demo.get_config()
  config.dataset = "dfew"
  config.fold = 1
  config.data.test_list = str(listing)
  config.data.train_list = str(listing)
  config.data.num_frames = 16
  config.eval_batch_size = 8
  config.progress_bars = False
  return config


def test_official_checkpoint_evaluates_directly_and_converted(official_fixture_dir, converted, tmp_path):
  config = fixture_config(official_fixture_dir, tmp_path)
  expected = np.load(official_fixture_dir / "logits.npy").argmax(-1)
  for checkpoint in (str(official_fixture_dir / "official.pth"), str(converted)):
    report = evaluation.run_evaluation(config, tmp_path, checkpoint)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 2
    assert cm[0, expected[0]] == 1 and cm[1, expected[1]] == 1  # the official predictions
  assert (tmp_path / "evaluation" / "model" / "report.json").is_file()


def test_class_order_mismatch_is_refused(official_fixture_dir, converted, tmp_path):
  config = fixture_config(official_fixture_dir, tmp_path)
  config.class_names = class_orders.HESP_7
  with pytest.raises(ValueError, match="a permuted or different order would mislabel"):
    evaluation.run_evaluation(config, tmp_path, str(converted))


def write_video(path, frames):
  videos.write_video(path, frames)


def test_predict_folders_video_and_a_bad_input(official_fixture_dir, converted, tmp_path):
  model, variables, card = load_model(converted)
  video = np.load(official_fixture_dir / "video.npy")
  write_video(tmp_path / "clip.mp4", video[0])
  (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
  inputs = [str(official_fixture_dir / "frames" / "clip0"), str(tmp_path / "broken.mp4"),
            str(official_fixture_dir / "frames" / "clip1"), str(tmp_path / "clip.mp4"),
            str(tmp_path / "missing_folder")]
  results = list(predict.predict(model, variables, inputs, card["class_names"], batch_size=4, top_k=2))
  assert [r["input"] for r in results] == inputs
  assert "not a readable video" in results[1]["error"] and "no such file" in results[4]["error"]
  official = softmax(np.load(official_fixture_dir / "logits.npy"))
  for row, result in zip(official, (results[0], results[2])):
    probs = np.array([result["probs"][n] for n in card["class_names"]])
    np.testing.assert_allclose(probs, row, atol=1e-4)  # PNG frames are lossless: official numbers
    assert result["label"] == card["class_names"][row.argmax()] and len(result["top_k"]) == 2
  # The mp4 is lossy: same frames, close probabilities.
  mp4 = np.array([results[3]["probs"][n] for n in card["class_names"]])
  assert np.abs(mp4 - official[0]).max() < 0.1
  done, failed = predict.write_jsonl(results, str(tmp_path / "out.jsonl"))
  assert (done, failed) == (3, 2)
  lines = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert len(lines) == 5


def test_two_fold_crossval_of_the_demo(tmp_path):
  def train(config, workdir):
    config.data.num_frames = 4
    config.batch_size = 8
    config.eval_batch_size = 8
    config.max_steps = 4
    config.progress_bars = False
    return trainer.train_and_evaluate(config, workdir)

  results = crossval.run_crossval("configs/demo.py:clips_per_class=6,epochs=1", {"data.synthetic.frames_range": (6, 8)},
                                  tmp_path, [1, 2], train)
  assert [f["fold"] for f in results["folds"]] == [1, 2]
  s = results["summary"]["best/uar"]
  assert s["mean"] == pytest.approx(np.mean(s["values"])) and s["std"] == pytest.approx(np.std(s["values"]))
  assert (tmp_path / "fold_1" / "results.json").is_file() and (tmp_path / "fold_2" / "results.json").is_file()
  saved = json.loads((tmp_path / crossval.RESULTS_FILE).read_text())
  assert saved["summary"]["best/war"]["values"] == results["summary"]["best/war"]["values"]
  # Finished folds are not trained again.
  again = crossval.run_crossval("configs/demo.py:clips_per_class=6,epochs=1", {}, tmp_path, [1, 2],
                                lambda *_: pytest.fail("retrained a finished fold"))
  assert again["summary"] == results["summary"]


def test_zeroshot_clip_baseline(tmp_path, clip_tokenizer_dir):
  """Zero-shot: a (random, real-vocabulary) HF CLIP directory, class-name prompts, no training;
  the logits are CLIP's cosine similarities x 100 of frame-averaged image features."""
  import shutil
  import jax
  from dferclip_jax.models import clip_config
  from dferclip_jax.models.clip import CLIP, init_clip_params, normalize_pixels
  from dferclip_jax.models.clip_checkpoint import save_clip
  from dferclip_jax.tokenizer import load_tokenizer, tokenize
  arch = clip_config.tiny(image_size=32, patch_size=16, width=32, layers=1, projection_dim=16)
  params = jax.tree.map(np.asarray, init_clip_params(CLIP(arch), jax.random.PRNGKey(0)))
  clip_dir = save_clip(tmp_path / "clip", arch, params, formats=("msgpack",))
  for name in ("vocab.json", "merges.txt"):  # a checkpoint directory carries its tokenizer
    shutil.copy(clip_tokenizer_dir / name, clip_dir / name)
  config = demo.get_config("clips_per_class=3")
  config.model.clip = str(clip_dir)
  config.data.num_frames = 4
  config.eval_batch_size = 8
  config.progress_bars = False
  config.zeroshot_template = "a photo of a face showing {}"
  report = evaluation.run_zeroshot(config, tmp_path / "run")
  assert report["num_clips"] == 7 and (tmp_path / "run" / "evaluation" / "zeroshot" / "report.json").is_file()

  from dferclip_jax.models.zeroshot import build_zeroshot
  texts = [f"a photo of a face showing {t}" for t in ("happiness.", "sadness.")]
  model, variables = build_zeroshot(arch, params, ["happiness.", "sadness."], load_tokenizer(clip_dir),
                                    template="a photo of a face showing {}", num_frames=2)
  video = np.random.default_rng(0).random((1, 2, 32, 32, 3)).astype(np.float32)
  clip = CLIP(arch)
  frames = clip.apply({"params": params}, normalize_pixels(video[0]), method=CLIP.encode_image)
  frames = frames / np.linalg.norm(frames, axis=-1, keepdims=True)
  v = frames.mean(0) / np.linalg.norm(frames.mean(0))
  ids, _ = tokenize(load_tokenizer(clip_dir), texts)
  t = clip.apply({"params": params}, ids, method=CLIP.encode_text)
  t = t / np.linalg.norm(t, axis=-1, keepdims=True)
  np.testing.assert_allclose(model.apply(variables, video)[0], 100 * t @ v, rtol=1e-5, atol=1e-4)


def test_crossval_trains_each_fold_on_its_own_lists(tmp_path):
  """Each fold's training run gets that fold's lists (and the command line's overrides), by name."""
  seen = {}

  def train(config, workdir):
    seen[config.fold] = (config.data.train_list, config.data.test_list, config.data.root, str(workdir))
    return {"best": {"uar": 10.0 * config.fold, "war": 1.0, "step": 1},
            "final": {"uar": 1.0, "war": 1.0, "step": 1}}

  results = crossval.run_crossval("configs/dfew.py:fold=1", {"data.root": "/data/DFEW"}, tmp_path, [],
                                  train)
  assert seen == {k: (f"annotations/dfew/set_{k}_train.txt", f"annotations/dfew/set_{k}_test.txt",
                      "/data/DFEW", str(tmp_path / f"fold_{k}")) for k in (1, 2, 3, 4, 5)}
  assert results["summary"]["best/uar"]["values"] == [10.0, 20.0, 30.0, 40.0, 50.0]
  # The synthetic demo: each fold draws its own dataset.
  seeds = []
  crossval.run_crossval("configs/demo.py", {}, tmp_path / "demo", [2, 3],
                        lambda c, w: seeds.append((c.fold, c.data.synthetic.seed)) or
                        {"best": {"uar": 1, "war": 1, "step": 1}, "final": {"uar": 1, "war": 1, "step": 1}})
  assert seeds == [(2, 2), (3, 3)]
