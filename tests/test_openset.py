"""HESP's open-set protocol: losses by hand, split mapping, the visual patch, and end-to-end runs
with held-out classes on the synthetic data."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hesp_demo, hesp_mafw
from dferclip_jax.data.records import ClipRecord
from dferclip_jax.openset import experiment, hesp, losses, splits
from dferclip_jax.train import reporting


# ----------------------------------------------------------------------------- losses


def test_reciprocal_logits_by_hand():
  x = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
  points = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
  # ||x - c||^2 / D - x.c, D = 2
  expected = [[(1 + 0) / 2 - 0, (0 + 1) / 2 - 1], [(0 + 4) / 2 - 0, (1 + 1) / 2 - 2]]
  np.testing.assert_allclose(losses.reciprocal_logits(x, points), expected, rtol=1e-6)


def test_arpl_loss_by_hand():
  x = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
  points = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
  labels = np.array([0, 1])
  logits = losses.reciprocal_logits(x, points)
  lse = lambda row: np.log(np.exp(row).sum())
  ce = np.mean([lse(logits[0] / 2) - logits[0, 0] / 2, lse(logits[1] / 2) - logits[1, 1] / 2])
  d = [np.mean((x[0] - points[0]) ** 2), np.mean((x[1] - points[1]) ** 2)]  # 0.5, 0.5
  margin = np.mean([max(0, di - 0.3 + 1) for di in d])  # radius 0.3
  got = losses.arpl_loss(logits, x, points, labels, 0.3, temperature=2.0, weight_pl=0.1)
  np.testing.assert_allclose(got, ce + 0.1 * margin, rtol=1e-5)


def numpy_conloss(features, labels, t=0.5):
  """HESP's ConLoss, step by step."""
  f = features / np.linalg.norm(features, axis=1, keepdims=True)
  logits = f @ f.T / t
  logits = logits - logits.max(1, keepdims=True)
  n = len(labels)
  total, count = 0.0, 0
  for i in range(n):
    pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
    if not pos:
      continue
    denom = sum(np.exp(logits[i, j]) for j in range(n) if j != i)
    total += -np.mean([logits[i, j] - np.log(denom) for j in pos])
    count += 1
  return t * total / count


def test_supervised_contrastive_loss_by_hand():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((5, 3)).astype(np.float32)
  labels = np.array([0, 1, 0, 0, 2])  # classes 1 and 2 have no positives: left out
  np.testing.assert_allclose(losses.supervised_contrastive_loss(features, labels),
                             numpy_conloss(features.astype(np.float64), labels), rtol=1e-5)


# ----------------------------------------------------------------------------- splits


def test_hesp_split_indices_map_to_our_class_names():
  assert len(splits.load_splits("MAFW")) == len(splits.load_splits("DFEW")) == 20
  # HESP order: 0 anger 1 disgust 2 fear 3 happiness 4 neutral 5 sadness 6 surprise 7 contempt
  # 8 anxiety 9 helplessness 10 disappointment; known labels follow the sorted indices.
  assert splits.known_class_names("MAFW", 4) == ("fear", "anxiety", "helplessness")  # [2, 8, 9]
  assert splits.known_class_names("MAFW", 0) == ("sadness", "surprise", "disappointment")  # [10, 5, 6]
  assert splits.known_class_names("DFEW", 0) == ("disgust", "surprise")  # [6, 1]
  with pytest.raises(ValueError, match="splits 0..19"):
    splits.known_class_names("DFEW", 20)


def test_split_records_relabels_known_and_keeps_unknown():
  names = ("happiness", "sadness", "fear")
  records = [ClipRecord(f"c{i}", 8, i % 3) for i in range(9)]
  data = splits.split_records(records, records, names, ("fear", "happiness"))
  assert {(r.path, r.label) for r in data.train} == {("c2", 0), ("c5", 0), ("c8", 0), ("c0", 1),
                                                     ("c3", 1), ("c6", 1)}
  assert [r.path for r in data.test_unknown] == ["c1", "c4", "c7"]
  with pytest.raises(ValueError, match=r"known classes \['anger'\] are not among"):
    splits.split_records(records, records, names, ("anger",))


# ----------------------------------------------------------------------------- visual prompt


def test_patch_is_added_at_the_clamped_position():
  frames = jnp.zeros((2, 16, 16, 3))
  patch = jnp.ones((4, 4, 3))
  centre = hesp.add_patch(frames, patch, [8, 9])
  assert float(centre[0, 6:10, 7:11].min()) == 1.0 and float(centre.sum()) == 2 * 48
  corner = hesp.add_patch(frames, patch, [0, 15])  # clamped to rows 2, cols 13: inside the frame
  assert float(corner[1, 0:4, 11:15].min()) == 1.0 and float(corner.sum()) == 2 * 48
  np.testing.assert_array_equal(hesp.clamp_position([0, 200], 224, 56), [28, 195])  # official bounds


def test_largest_component_and_attention_peak():
  mask = np.zeros((6, 6), bool)
  mask[0, 0] = True
  mask[3:6, 2:5] = True
  mask[2, 1] = True  # touches the block diagonally: 8-connected
  region = hesp._largest_component(mask)
  assert region.sum() == 10 and not region[0, 0]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("synthetic"))


def demo_config(data_dir, method):
  config = hesp_demo.get_config(f"method={method},splits=0+5,epochs=2")
  config.data.synthetic.dir = data_dir
  config.data.synthetic.clips_per_class = 10
  config.progress_bars = False
  return config


@pytest.mark.parametrize("method", ["hesp", "dferclip_msp"])
def test_open_set_run_with_held_out_classes(tmp_path, data_dir, method):
  config = demo_config(data_dir, method)
  results = experiment.run_openset(config, tmp_path)
  lines = [r for r in reporting.read_metrics(tmp_path) if "split" in r]
  assert [r["split"] for r in lines] == [0, 5]
  for line in lines:
    for key in ("openset/acc", "openset/auroc", "openset/oscr"):
      assert 0.0 <= line[key] <= 100.0
    assert line["openset/oscr"] <= line["openset/auroc"] + 1e-9
  saved = json.loads((tmp_path / experiment.RESULTS_FILE).read_text())
  for key in ("openset/acc", "openset/auroc", "openset/oscr"):
    values = [r[key] for r in results["splits"]]
    assert saved["summary"][key]["mean"] == pytest.approx(np.mean(values))
    assert saved["summary"][key]["std"] == pytest.approx(np.std(values))
  assert results["splits"][0]["known"] == ["disgust", "surprise"]
  # Trained, both methods tell held-out classes from known ones clearly better than chance (50);
  # HESP's scores are its ensemble (about 96 here), DFER-CLIP's max softmax (about 66: its x100
  # logits saturate the softmax on some splits, tying every score).
  mean_auroc = np.mean([r["openset/auroc"] for r in results["splits"]])
  assert mean_auroc > {"hesp": 85.0, "dferclip_msp": 60.0}[method]
  if method == "hesp":
    position = results["splits"][0]["patch_position"]
    assert all(0 <= p < 32 for p in position)
    assert (tmp_path / "split_00" / "checkpoints").is_dir()
    evals = [r for r in reporting.read_metrics(tmp_path / "split_00") if "select" in r]
    best = max(evals, key=lambda r: r["select"])
    assert results["splits"][0]["test_selected"]["openset/auroc"] == best["openset/auroc"]
    assert saved["summary"]["test_selected/openset/oscr"]["values"] == [
        r["test_selected"]["openset/oscr"] for r in results["splits"]]
  # A finished experiment is not run again.
  again = experiment.run_openset(config, tmp_path)
  assert again["summary"] == results["summary"]
  assert len([r for r in reporting.read_metrics(tmp_path) if "split" in r]) == 2
  # A split whose openset.json was cut short (a full disk) is run again, and only that split.
  kept = (tmp_path / "split_00" / "openset.json").stat().st_mtime_ns
  cut = tmp_path / "split_05" / "openset.json"
  whole = cut.read_bytes()
  cut.write_bytes(whole[:len(whole) // 2])
  mended = experiment.run_openset(config, tmp_path)
  assert json.loads(cut.read_bytes()) == json.loads(whole)
  assert mended["summary"] == results["summary"]
  assert (tmp_path / "split_00" / "openset.json").stat().st_mtime_ns == kept


def test_open_set_config_errors(tmp_path, data_dir):
  config = demo_config(data_dir, "hesp")
  config.openset.method = "odin"
  with pytest.raises(ValueError, match="config.openset.method='odin'"):
    experiment.run_openset(config, tmp_path)
  config = demo_config(data_dir, "hesp")
  config.data.source = "tfds"
  with pytest.raises(ValueError, match="config.data.source='tfds'"):
    experiment.run_openset(config, tmp_path)
  config = demo_config(data_dir, "hesp")
  config.init_checkpoint = str(tmp_path / "model.pth")
  with pytest.raises(ValueError, match="config.init_checkpoint is set, but config.openset.method='hesp'"):
    experiment.run_openset(config, tmp_path)
  assert hesp_mafw.get_config().hesp.n_ctx == 16 and hesp_mafw.get_config().hesp.patch_size == 56


@pytest.mark.parametrize("name", ["hesp_afew", "hesp_dfew", "hesp_mafw"])
def test_recipe_configs(name):
  import importlib
  module = importlib.import_module(f"configs.{name}")
  hesp_config = module.get_config("method=hesp")
  assert (hesp_config.hesp.n_ctx, hesp_config.hesp.patch_size, hesp_config.data.num_frames) == (16, 56, 8)
  assert hesp_config.data.augmentation == "mafw"  # random resized crop + flip, as HESP trains
  assert hesp_config.openset.hesp_dataset == name.split("_")[1].upper()
  assert module.get_config("method=zeroshot_clip").model.text_type == "class_names"
  for method in experiment.METHODS:  # every class the splits name exists in the config
    config = module.get_config(f"method={method}")
    for k in range(20):
      assert set(splits.known_class_names(config.openset.hesp_dataset, k)) <= set(config.class_names)


def test_open_set_scores_by_hand():
  known = np.array([[5.0, 0.0], [0.0, 5.0]])
  unknown = np.array([[1.0, 1.0]])
  scores = experiment.open_set_scores(known, unknown, [0, 0], use_softmax=True)
  assert scores["openset/acc"] == 50.0 and scores["openset/auroc"] == 100.0
  assert scores["openset/oscr"] == 50.0  # the wrong known clip never counts


def test_zeroshot_clip_open_set_baseline(tmp_path, data_dir, clip_tokenizer_dir):
  """Zero-shot CLIP on the known classes' prompts: no training, scored by max softmax."""
  import shutil
  from dferclip_jax.models import clip_config
  from dferclip_jax.models.clip import CLIP, init_clip_params
  from dferclip_jax.models.clip_checkpoint import save_clip
  arch = clip_config.tiny(image_size=32, patch_size=16, width=32, layers=1, projection_dim=16)
  params = jax.tree.map(np.asarray, init_clip_params(CLIP(arch), jax.random.PRNGKey(0)))
  clip_dir = save_clip(tmp_path / "clip", arch, params, formats=("msgpack",))
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(clip_tokenizer_dir / name, clip_dir / name)
  config = demo_config(data_dir, "zeroshot_clip")
  with pytest.raises(ValueError, match="needs pretrained CLIP weights"):
    experiment.run_openset(config, tmp_path / "no_clip")
  config.model.clip = str(clip_dir)
  results = experiment.run_openset(config, tmp_path / "run")
  assert [r["known"] for r in results["splits"]] == [["disgust", "surprise"],
                                                      list(splits.known_class_names("DFEW", 5))]
  for r in results["splits"]:
    assert 0.0 <= r["openset/oscr"] <= r["openset/auroc"] + 1e-9 <= 100.0 + 1e-9
  assert not (tmp_path / "run" / "split_00" / "checkpoints").exists()  # nothing was trained


def test_hesp_ensemble_is_the_mean_of_the_clip_and_open_set_heads():
  from dferclip_jax.models import clip_config
  arch = clip_config.tiny(image_size=32, patch_size=16, width=32, layers=1, projection_dim=16)
  model = hesp.HESP(arch, num_classes=3, n_ctx=2, patch_size=8, num_frames=2)
  video = np.random.default_rng(0).random((2, 2, 32, 32, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), video)
  out = jax.tree.map(lambda x: np.asarray(x, np.float64), model.apply(variables, video))
  visual, points = out["visual"], out["points"]
  # The reciprocal-point logits by hand: squared distance / D minus the dot product.
  osr = np.array([[np.sum((v - p) ** 2) / v.size - v @ p for p in points] for v in visual])
  np.testing.assert_allclose(out["osr_logits"], osr, rtol=1e-4, atol=1e-4)
  assert np.abs(osr - out["clip_logits"]).max() > 1.0  # dropping either head would show
  np.testing.assert_allclose(out["logits"], (out["clip_logits"] + osr) / 2, rtol=1e-4, atol=1e-4)
