"""config.init_checkpoint: training starts from an official .pth, a model directory or a workdir
checkpoint — the first logged loss is the loaded model's loss on the first batch, a new class set
keeps what does not depend on it, and six steps through main.py follow the official training code.
"""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO
from configs import demo, dfew, mafw
from dferclip_jax import export, official
from dferclip_jax.data import class_orders
from dferclip_jax.models import clip_config as clip_config_lib, param_tree
from dferclip_jax.models.clip import CLIP, init_clip_params
from dferclip_jax.models.dferclip import build_dferclip, model_from_kwargs, model_kwargs, prompt_tokens
from dferclip_jax.tokenizer import load_tokenizer
from dferclip_jax.train import checkpointing, config_checks, data_setup, init_checkpoint, reporting, trainer
import test_train

OFFICIAL_RTOL = 1e-4  # the bar against the official training code
SAME_RTOL = 1e-5      # the same float32 computation, jitted and sharded differently


def tiny_config(**overrides):
  """test_train's tiny demo recipe on one device (8 simulated ones only slow these runs down)."""
  return test_train.tiny_config(**{"num_devices": 1, "mesh.data": 1, "data.synthetic.clips_per_class": 4,
                                   **overrides})


def logged_losses(workdir) -> list[float]:
  return [r["train/loss"] for r in reporting.read_metrics(workdir) if "train/loss" in r]


def first_batch_loss(config, workdir, model, variables) -> float:
  """Cross-entropy of ``model.apply`` on the run's first training batch, computed in float64 numpy
  (not by the train step under test)."""
  data = data_setup.open_data(config, workdir)
  batch = next(data.train_batches(config.batch_size, model.clip_config.vision_config.image_size, 0))
  logits = np.asarray(model.apply(variables, batch["video"]), np.float64)
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return float(-log_probs[np.arange(len(batch["label"])), batch["label"]].mean())


def flat(tree, prefix=""):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()
          if k.startswith(prefix)}


# ----------------------------------------------------------------------------- own checkpoints


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, data_dir):
  """A tiny trained run: the workdir the other runs start from."""
  workdir = tmp_path_factory.mktemp("source")
  trainer.train_and_evaluate(tiny_config(**{"data.synthetic.dir": data_dir, "max_steps": 2}), workdir)
  return workdir


def test_start_from_workdir_checkpoint_then_resume(tmp_path, data_dir, source_run):
  config = tiny_config(**{"data.synthetic.dir": data_dir, "max_steps": 1, "seed": 5,
                          "init_checkpoint": f"{source_run}:latest", "model.clip": "not/read",
                          "model.n_ctx": 3, "model.temporal_layers": 4})  # ignored: the checkpoint's
  trainer.train_and_evaluate(config, tmp_path)
  manager = checkpointing.Checkpointer(source_run / "checkpoints", "eval/uar", asynchronous=False)
  variables = manager.restore_variables(2)
  manager.close()
  model = model_from_kwargs(export.read_model_card_file(source_run / "model.json")["model"])
  card = export.read_model_card_file(tmp_path / "model.json")
  assert card["model"] == model_kwargs(model)  # the checkpoint's architecture, not config.model's
  expected = first_batch_loss(config, tmp_path, model, variables)
  assert logged_losses(tmp_path) == [pytest.approx(expected, rel=SAME_RTOL)]
  # An own checkpoint in the workdir wins: the same command with more steps resumes from step 1.
  config.max_steps = 2
  summary = trainer.train_and_evaluate(config, tmp_path)
  assert summary["steps"] == 2
  assert [r["step"] for r in reporting.read_metrics(tmp_path) if "train/loss" in r] == [1, 2]


def test_start_from_model_directory(tmp_path, data_dir, source_run):
  from dferclip_jax import evaluation
  model, variables, names, _ = evaluation.load_model_for_eval("best", source_run, None, 0)
  export.save_model(tmp_path / "exported", model, variables, class_names=names)
  config = tiny_config(**{"data.synthetic.dir": data_dir, "max_steps": 1,
                          "init_checkpoint": str(tmp_path / "exported")})
  trainer.train_and_evaluate(config, tmp_path / "run")
  expected = first_batch_loss(config, tmp_path / "run", model, variables)
  assert logged_losses(tmp_path / "run") == [pytest.approx(expected, rel=SAME_RTOL)]
  card = json.loads((tmp_path / "run" / "model.json").read_text())
  assert card["model"]["n_ctx"] == model.n_ctx and card["class_names"] == list(names)


def test_dropped_and_reordered_classes_by_name(data_dir, source_run):
  names = ("fear", "happiness", "anger", "neutral", "surprise", "sadness")  # no disgust, reordered
  config = tiny_config(**{"data.synthetic.dir": data_dir, "init_checkpoint": f"{source_run}:2",
                          "class_names": names})
  source = init_checkpoint.load_source(config)
  bundle = init_checkpoint.build_model(config, jax.random.PRNGKey(0))
  plan = init_checkpoint.plan_classes(source, names)
  assert plan.new == [] and plan.dropped_classes == ["disgust"]
  assert bundle.model.num_classes == 6
  old = list(class_orders.DFERCLIP_7)
  rows = [old.index(n) for n in names]
  np.testing.assert_array_equal(bundle.variables["params"]["prompt_learner"]["ctx"],
                                source.variables["params"]["prompt_learner"]["ctx"][rows])
  np.testing.assert_array_equal(bundle.variables["prompts"]["ids"], source.variables["prompts"]["ids"][rows])
  assert bundle.class_texts == [f"{name}." for name in names]  # the demo's texts: "happiness." ...


def test_generic_contexts_are_kept_whole(tmp_path, data_dir):
  from dferclip_jax.train import model_setup
  config = tiny_config(**{"data.synthetic.dir": data_dir, "model.class_specific": False})
  source = model_setup.build_model(config, jax.random.PRNGKey(3))
  export.save_model(tmp_path / "generic", source.model, source.variables, class_names=source.class_names)
  names = ("sadness", "happiness")
  config = tiny_config(**{"init_checkpoint": str(tmp_path / "generic"), "class_names": names})
  bundle = init_checkpoint.build_model(config, jax.random.PRNGKey(0))
  plan = init_checkpoint.plan_classes(init_checkpoint.load_source(config), names)
  assert plan.kept == ["clip", "temporal", "generic contexts", f"prompt tokens of classes {list(names)}"]
  np.testing.assert_array_equal(bundle.variables["params"]["prompt_learner"]["ctx"],
                                source.variables["params"]["prompt_learner"]["ctx"])
  np.testing.assert_array_equal(bundle.variables["prompts"]["ids"], source.variables["prompts"]["ids"][[1, 0]])


def test_bad_init_checkpoints_fail_before_compiling(tmp_path, data_dir, source_run, monkeypatch):
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before checking"))
  (tmp_path / "notes.txt").write_text("x")
  cases = [
      (str(source_run), r"is a training workdir: say which checkpoint, .*:best"),
      (str(tmp_path / "missing.pth"), "no such file or directory"),
      (str(tmp_path / "notes.txt"), "a file that is not an official .pth"),
      (str(tmp_path), "a directory without model.json"),
      (f"{tmp_path}:best", "is not a training workdir"),
  ]
  for spec, message in cases:
    config = tiny_config(**{"data.synthetic.dir": data_dir, "init_checkpoint": spec})
    with pytest.raises(config_checks.ConfigError, match=f"config.init_checkpoint.*{message}"):
      trainer.train_and_evaluate(config, tmp_path / "run")
  config = tiny_config(**{"data.synthetic.dir": data_dir, "init_checkpoint": f"{source_run}:latest",
                          "data.num_frames": 6})
  with pytest.raises(config_checks.ConfigError, match=r"takes 4 frames .* config.data.num_frames=6"):
    trainer.train_and_evaluate(config, tmp_path / "run")
  # (built directly: the trainer would first generate an 11-class synthetic dataset)
  config = tiny_config(**{"data.synthetic.dir": data_dir, "init_checkpoint": f"{source_run}:latest",
                          "class_names": class_orders.DFERCLIP_11})
  with pytest.raises(config_checks.ConfigError, match="new classes need the tokenizer"):
    init_checkpoint.build_model(config, jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------- the official model


@pytest.fixture(scope="module")
def official_lists(official_fixture_dir, tmp_path_factory):
  """8 clips: the fixture's two 16-frame clips, four times each, labelled as train_losses.json says.
  The mean loss and gradient over the copies equal those over the two clips."""
  labels = json.loads((official_fixture_dir / "train_losses.json").read_text())["labels"]
  out = tmp_path_factory.mktemp("official_lists")
  lines = [f"{official_fixture_dir / 'frames' / f'clip{i}'} 16 {label}" for i, label in enumerate(labels)]
  (out / "list.txt").write_text("\n".join(lines * 4) + "\n")
  return out / "list.txt"


@pytest.fixture(scope="module")
def official_run(official_fixture_dir, official_lists, tmp_path_factory):
  """The issue's acceptance command, run as a user would."""
  workdir = tmp_path_factory.mktemp("official_run")
  cmd = [sys.executable, str(REPO / "main.py"), "--config=configs/dfew.py:fold=1", f"--workdir={workdir}",
         f"--config.init_checkpoint={official_fixture_dir / 'official.pth'}",
         f"--config.data.train_list={official_lists}", f"--config.data.test_list={official_lists}",
         "--config.data.duplicate_clips=warn",  # the fixture's clips repeat to fill a batch of 8
         "--config.data.augmentation=none", "--config.batch_size=8", "--config.eval_batch_size=8",
         "--config.max_steps=6", "--config.log_every=1", "--config.progress_bars=false"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stderr


@pytest.mark.slow
def test_six_steps_through_main_follow_the_official_training(official_fixture_dir, official_run):
  workdir, log = official_run
  expected = json.loads((official_fixture_dir / "train_losses.json").read_text())["losses"]
  losses = logged_losses(workdir)
  assert len(losses) == 6 and all(np.isfinite(losses))
  np.testing.assert_allclose(losses[:len(expected)], expected, rtol=OFFICIAL_RTOL)
  assert "config.model's CLIP, architecture and text options are not read" in log


@pytest.mark.slow
def test_start_from_official_pth(official_fixture_dir, official_run, official_lists):
  workdir, _ = official_run
  model, variables = official.load_checkpoint(official_fixture_dir / "official.pth")
  config = dfew.get_config("fold=1")
  config.data.train_list = config.data.test_list = str(official_lists)
  config.data.duplicate_clips = "warn"
  config.data.augmentation = "none"
  config.batch_size = 8
  assert logged_losses(workdir)[0] == pytest.approx(first_batch_loss(config, workdir, model, variables),
                                                    rel=SAME_RTOL)


def test_dfew_model_to_mafw_classes(official_fixture_dir, official_lists, clip_tokenizer_dir, tmp_path,
                                    caplog):
  """7 -> 11 classes: CLIP, temporal model and the 7 known classes' prompts kept exactly; the 4 new
  classes get fresh contexts and the tokenizer's prompts of their MAFW descriptors; training runs."""
  pth = official_fixture_dir / "official.pth"
  _, source = official.load_checkpoint(pth)
  labels = tmp_path / "list.txt"  # one clip of a kept class (anger), one of a new class (anxiety)
  labels.write_text("".join(f"{official_fixture_dir / 'frames' / f'clip{i}'} 16 {label}\n"
                            for i, label in ((0, 3), (1, 8))) * 4)
  config = mafw.get_config("fold=1")
  config.init_checkpoint = str(pth)
  config.model.tokenizer = str(clip_tokenizer_dir)
  config.data.train_list = config.data.test_list = str(labels)
  config.data.duplicate_clips = "warn"  # two clips, repeated to fill a batch of 8
  config.data.augmentation = "none"
  config.batch_size = config.eval_batch_size = 8
  config.max_steps = 2
  config.log_every = 1
  config.progress_bars = False
  config.num_devices, config.mesh.data = 1, 1  # 8 simulated devices only slow this model down

  caplog.set_level("INFO")
  bundle = init_checkpoint.build_model(config, jax.random.PRNGKey(config.seed))
  kept, new = list(class_orders.DFERCLIP_7), list(class_orders.DFERCLIP_11[7:])
  log = caplog.text
  assert (f"kept from the checkpoint: clip, temporal, contexts of classes {kept}, "
          f"prompt tokens of classes {kept}") in log
  assert f"new (initialised from the config's class texts): contexts of classes {new}, " \
         f"prompt tokens of classes {new}" in log

  got = bundle.variables
  for prefix in ("clip/", "temporal/"):
    expected = flat(source["params"], prefix)
    assert flat(got["params"], prefix).keys() == expected.keys()
    for key, value in expected.items():
      np.testing.assert_array_equal(flat(got["params"], prefix)[key], value, err_msg=key)
  ctx = got["params"]["prompt_learner"]["ctx"]
  assert ctx.shape == (11, 8, 64)
  np.testing.assert_array_equal(ctx[:7], source["params"]["prompt_learner"]["ctx"])
  assert 0.01 < ctx[7:].std() < 0.03  # the official init: normal, std 0.02
  np.testing.assert_array_equal(got["prompts"]["ids"][:7], source["prompts"]["ids"])
  texts = [line.strip() for line in (REPO / "data/class_texts/class_descriptor_11.txt").read_text().splitlines()]
  ids, name_lens = prompt_tokens(load_tokenizer(clip_tokenizer_dir), texts[7:], n_ctx=8)
  np.testing.assert_array_equal(got["prompts"]["ids"][7:], ids)
  np.testing.assert_array_equal(got["prompts"]["name_lens"][7:], name_lens)

  summary = trainer.train_and_evaluate(config, tmp_path / "run")
  losses = logged_losses(tmp_path / "run")
  assert summary["steps"] == 2 and len(losses) == 2 and all(np.isfinite(losses))
  assert losses[0] == pytest.approx(first_batch_loss(config, tmp_path / "run", bundle.model, got),
                                    rel=SAME_RTOL)
  card = json.loads((tmp_path / "run" / "model.json").read_text())
  assert card["model"]["num_classes"] == 11 and card["class_names"] == list(class_orders.DFERCLIP_11)


# ----------------------------------------------------------------------------- the pieces, without a run


def test_parse_reads_each_form_and_names_what_each_wrong_one_lacks(tmp_path):
  """parse() -> (checkpoint, workdir) for the three forms; each wrong form fails with its own whole
  sentence. A workdir needs both model.json and checkpoints/: one of them alone is not one."""
  forms = ("an official .pth, a model directory (model.json + variables/), or a training workdir "
           "with :best, :latest or :STEP")
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  (run / "model.json").write_text("{}")
  assert init_checkpoint.parse(f"{run}:best") == ("best", str(run))
  assert init_checkpoint.parse(f"{run}:latest") == ("latest", str(run))
  assert init_checkpoint.parse(f"{run}:120") == (120, str(run))
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  (model_dir / "model.json").write_text("{}")
  assert init_checkpoint.parse(str(model_dir)) == (str(model_dir), None)
  pth = tmp_path / "official.pth"
  pth.write_bytes(b"")
  assert init_checkpoint.parse(str(pth)) == (str(pth), None)
  half = tmp_path / "half"  # checkpoints/ without model.json
  (half / "checkpoints").mkdir(parents=True)
  cases = {
      f"{model_dir}:best": f"{model_dir} is not a training workdir (no model.json and checkpoints/)",
      f"{half}:latest": f"{half} is not a training workdir (no model.json and checkpoints/)",
      str(tmp_path / "missing"): f"no such file or directory (expected {forms})",
      str(run): f"is a training workdir: say which checkpoint, {run}:best, {run}:latest or {run}:STEP",
      str(tmp_path): f"a directory without model.json (expected {forms})",
  }
  (tmp_path / "notes.txt").write_text("x")
  cases[str(tmp_path / "notes.txt")] = f"a file that is not an official .pth (expected {forms})"
  for spec, message in cases.items():
    with pytest.raises(config_checks.ConfigError) as e:
      init_checkpoint.parse(spec)
    sep = " " if message.startswith("is a") else ": "
    assert str(e.value) == f"config.init_checkpoint={spec!r}{sep}{message}", spec
  # ":bestx" names no checkpoint: it is read as a path, which does not exist.
  with pytest.raises(config_checks.ConfigError, match="no such file or directory"):
    init_checkpoint.parse(f"{run}:bestx")


def _source(class_names, class_specific=True):
  from types import SimpleNamespace
  return init_checkpoint.Source(SimpleNamespace(class_specific=class_specific), {}, tuple(class_names),
                                None, "a test checkpoint")


def test_plan_classes_by_hand():
  """Kept: clip, temporal (and generic contexts), then the known classes' contexts and prompt
  tokens, in the config's order; new: the unknown classes'; dropped: the checkpoint's classes the
  config lacks, in the checkpoint's order."""
  plan = init_checkpoint.plan_classes(_source(["a", "b", "c", "d"]), ["c", "x", "a", "y"])
  assert plan == init_checkpoint.ClassPlan(
      kept=["clip", "temporal", "contexts of classes ['c', 'a']", "prompt tokens of classes ['c', 'a']"],
      new=["contexts of classes ['x', 'y']", "prompt tokens of classes ['x', 'y']"],
      dropped_classes=["b", "d"])
  plan = init_checkpoint.plan_classes(_source(["a", "b"], class_specific=False), ["b", "z"])
  assert plan == init_checkpoint.ClassPlan(
      kept=["clip", "temporal", "generic contexts", "prompt tokens of classes ['b']"],
      new=["prompt tokens of classes ['z']"], dropped_classes=["a"])
  plan = init_checkpoint.plan_classes(_source(["a", "b"]), ["b", "a"])
  assert plan.new == [] and plan.dropped_classes == []


def test_unnamed_classes_follow_the_official_orders_or_the_config():
  """7 and 11 classes are DFER-CLIP's orders whatever the config says; another count must equal
  the config's, else a ConfigError says how to convert with names."""
  from types import SimpleNamespace
  config = SimpleNamespace(class_names=("p", "q", "r"))
  assert init_checkpoint._unnamed_classes(7, config, "x.pth") == tuple(class_orders.DFERCLIP_7)
  assert init_checkpoint._unnamed_classes(11, config, "x.pth") == tuple(class_orders.DFERCLIP_11)
  assert init_checkpoint._unnamed_classes(3, config, "x.pth") == ("p", "q", "r")
  with pytest.raises(config_checks.ConfigError) as e:
    init_checkpoint._unnamed_classes(4, config, "x.pth")
  assert str(e.value) == ("config.init_checkpoint='x.pth' records no class names and has 4 classes, the "
                          "config 3: convert it with class names (python -m dferclip_jax.cli.convert_official "
                          "--class_names=...)")


def test_check_fits_compares_frames_both_ways():
  from types import SimpleNamespace
  model = SimpleNamespace(num_frames=8)
  init_checkpoint.check_fits(model, SimpleNamespace(data=SimpleNamespace(num_frames=8)), "m")
  for frames in (7, 9):
    with pytest.raises(config_checks.ConfigError) as e:
      init_checkpoint.check_fits(model, SimpleNamespace(data=SimpleNamespace(num_frames=frames)), "model m")
    assert str(e.value) == (f"config.init_checkpoint: model m takes 8 frames per clip (its temporal position "
                            f"embedding), but config.data.num_frames={frames}: set --config.data.num_frames=8")


# ----------------------------------------------------------------------------- adapting, loading, building a tiny model

# CLIP's BPE ids (shared/clip-tokenizer) of the texts below, looked up by hand in its vocab.json:
# "<|startoftext|>" 49406, "<|endoftext|>" 49407, "X" 343, "." 269.
SOT, EOT, X = 49406, 49407, 343
OLD_NAMES = ("anger", "boredom", "calm", "doubt")
OLD_TEXTS = ["an angry face.", "bored.", "a calm and relaxed face.", "doubt."]
OLD_TOKENS = [[550, 9054, 1710, 269], [8933, 269], [320, 7011, 537, 18999, 1710, 269], [8671, 269]]
WORRY_TEXT = "a worried face with raised eyebrows and a tense open mouth."
WORRY_TOKENS = [320, 11911, 1710, 593, 6027, 19923, 537, 320, 23518, 1488, 4932, 269]  # 12 tokens
YAWN_TEXT, YAWN_TOKENS = "yawning.", [31989, 762, 269]


def prompt_row(tokens, n_ctx=4, length=77):
  """The official prompt "X X X X <text>" of a text's BPE ids, as CLIP tokenizes it."""
  row = [SOT] + [X] * n_ctx + list(tokens) + [EOT]
  return row + [0] * (length - len(row))


def build_tiny(tokenizer_dir, class_specific, seed):
  """A 4-class DFER-CLIP over a 1-layer CLIP with CLIP's whole vocabulary (random weights, no
  training), its variables, and a Source holding them."""
  clip_config = clip_config_lib.tiny(layers=1)
  clip_params = jax.tree.map(np.asarray, init_clip_params(CLIP(clip_config), jax.random.PRNGKey(seed)))
  model, variables = build_dferclip(
      clip_config, clip_params, OLD_TEXTS, load_tokenizer(tokenizer_dir), rng=jax.random.PRNGKey(seed + 1),
      n_ctx=4, class_specific=class_specific, class_token_position="end", temporal_layers=1,
      temporal_heads=2, temporal_dim_head=16, temporal_mlp_dim=64, num_frames=4)
  source = init_checkpoint.Source(model, variables, OLD_NAMES, list(OLD_TEXTS), "a tiny test model")
  return model, variables, source


@pytest.fixture(scope="module")
def tiny(clip_tokenizer_dir):
  """Class-specific, built once for the module."""
  return build_tiny(clip_tokenizer_dir, True, 0)


@pytest.fixture(scope="module")
def tiny_generic(clip_tokenizer_dir):
  return build_tiny(clip_tokenizer_dir, False, 10)


def init_config(tmp_path, names, texts, tokenizer="", clip="", spec=""):
  """The demo config with the given classes, their texts (a texts file) and tokenizer."""
  config = demo.get_config()
  config.class_names = tuple(names)
  texts_file = tmp_path / f"texts_{len(list(tmp_path.iterdir()))}.txt"
  texts_file.write_text("".join(f"{t}\n" for t in texts))
  config.model.class_texts_file = str(texts_file)
  config.model.tokenizer = str(tokenizer)
  config.model.clip = str(clip)
  config.data.num_frames = 4
  config.init_checkpoint = str(spec)
  return config


def assert_same_tree(got, expected):
  """The same keys and every leaf equal (values and dtypes)."""
  got, expected = flat(got), flat(expected)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    assert got[key].dtype == value.dtype, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_adapt_to_classes_moves_known_rows_by_name_and_tokenizes_new_ones(tmp_path, tiny, clip_tokenizer_dir):
  """Checkpoint [anger, boredom, calm, doubt] to config [calm, worry, anger, yawn, doubt]: boredom is
  dropped; calm, anger and doubt keep their contexts, prompt ids and name lengths (rows 2, 0, 3 of the
  checkpoint's) at rows 0, 2, 4; worry and yawn get CLIP's tokens of their texts and fresh contexts
  (normal, std 0.02, drawn from the rng); CLIP and the temporal model are kept whole; the model has 5
  classes and a text length of 24 (worry's prompt: 1 + 4 + 12 + 1 = 18 tokens, up to a multiple of 8)."""
  model, variables, source = tiny
  assert model.text_length == 16  # calm's prompt: 1 + 4 + 6 + 1 = 12 tokens
  names = ["calm", "worry", "anger", "yawn", "doubt"]
  texts = [OLD_TEXTS[2], WORRY_TEXT, OLD_TEXTS[0], YAWN_TEXT, OLD_TEXTS[3]]
  config = init_config(tmp_path, names, texts, tokenizer=clip_tokenizer_dir)
  got_model, got, got_texts = init_checkpoint.adapt_to_classes(source, config, jax.random.PRNGKey(7))

  assert model_kwargs(got_model) == {**model_kwargs(model), "num_classes": 5, "text_length": 24}
  assert got_texts == texts
  old_ctx = variables["params"]["prompt_learner"]["ctx"]
  ctx = got["params"]["prompt_learner"]["ctx"]
  assert ctx.shape == (5, 4, 32) and ctx.dtype == np.float32
  for row, old_row in ((0, 2), (2, 0), (4, 3)):
    np.testing.assert_array_equal(ctx[row], old_ctx[old_row])
  fresh = ctx[[1, 3]]
  assert 0.015 < fresh.std() < 0.025 and abs(fresh.mean()) < 0.005
  assert not any(np.isclose(fresh[i], old_ctx[j]).any() for i in range(2) for j in range(4))
  assert not np.array_equal(fresh[0], fresh[1])
  expected = {
      "params": {"clip": variables["params"]["clip"], "temporal": variables["params"]["temporal"],
                 "prompt_learner": {"ctx": ctx}},
      "prompts": {"ids": np.array([prompt_row(OLD_TOKENS[2]), prompt_row(WORRY_TOKENS), prompt_row(OLD_TOKENS[0]),
                                   prompt_row(YAWN_TOKENS), prompt_row(OLD_TOKENS[3])], np.int32),
                  "name_lens": np.array([6, 12, 4, 3, 2], np.int32)},
  }
  assert_same_tree(got, expected)
  # The fresh contexts come from the rng: the same key draws them again, another draws others.
  _, again, _ = init_checkpoint.adapt_to_classes(source, config, jax.random.PRNGKey(7))
  np.testing.assert_array_equal(again["params"]["prompt_learner"]["ctx"], ctx)
  _, other, _ = init_checkpoint.adapt_to_classes(source, config, jax.random.PRNGKey(8))
  other_ctx = other["params"]["prompt_learner"]["ctx"]
  np.testing.assert_array_equal(other_ctx[[0, 2, 4]], ctx[[0, 2, 4]])
  assert not np.isclose(other_ctx[[1, 3]], fresh).any()


def test_adapt_to_classes_keeps_generic_contexts_whole_and_reorders_prompts(tmp_path, tiny_generic):
  """Generic contexts: config [doubt, boredom] of checkpoint [anger, boredom, calm, doubt] keeps the
  one shared context as it is and takes prompt rows 3, 1; no new class, so no tokenizer is read
  (none is set); the text length shrinks to 8 (1 + 4 + 2 + 1 tokens)."""
  model, variables, source = tiny_generic
  config = init_config(tmp_path, ["doubt", "boredom"], ["unused.", "unused."])
  got_model, got, got_texts = init_checkpoint.adapt_to_classes(source, config, jax.random.PRNGKey(0))
  assert model_kwargs(got_model) == {**model_kwargs(model), "num_classes": 2, "text_length": 8}
  assert got_texts == [OLD_TEXTS[3], OLD_TEXTS[1]]
  expected = {"params": variables["params"],
              "prompts": {"ids": np.array([prompt_row(OLD_TOKENS[3]), prompt_row(OLD_TOKENS[1])], np.int32),
                          "name_lens": np.array([2, 2], np.int32)}}
  assert_same_tree(got, expected)
  assert got["params"]["prompt_learner"]["ctx"].shape == (4, 32)


def test_adapt_to_classes_same_classes_return_the_source_and_unknown_texts_stay_unknown(
    tmp_path, tiny, clip_tokenizer_dir):
  """The checkpoint's own classes in its order: its model, variables and texts, untouched. A
  checkpoint without texts (a .pth) gives texts None once any class comes from it, even beside a
  new class whose text the config gives."""
  model, variables, source = tiny
  config = init_config(tmp_path, OLD_NAMES, ["w.", "x.", "y.", "z."])
  got_model, got, got_texts = init_checkpoint.adapt_to_classes(source, config, jax.random.PRNGKey(0))
  assert got_model is model and got is variables and got_texts is source.class_texts
  textless = dataclasses.replace(source, class_texts=None)
  config = init_config(tmp_path, ["boredom", "yawn"], ["bored.", YAWN_TEXT], tokenizer=clip_tokenizer_dir)
  got_model, got, got_texts = init_checkpoint.adapt_to_classes(textless, config, jax.random.PRNGKey(0))
  assert got_texts is None
  assert model_kwargs(got_model) == {**model_kwargs(model), "num_classes": 2, "text_length": 16}
  np.testing.assert_array_equal(got["prompts"]["ids"], np.array([prompt_row(OLD_TOKENS[1]),
                                                                 prompt_row(YAWN_TOKENS)], np.int32))
  np.testing.assert_array_equal(got["prompts"]["name_lens"], np.array([2, 3], np.int32))
  np.testing.assert_array_equal(got["params"]["prompt_learner"]["ctx"][0],
                                variables["params"]["prompt_learner"]["ctx"][1])
  config = init_config(tmp_path, ["calm", "anger"], ["c.", "a."])
  assert init_checkpoint.adapt_to_classes(textless, config, jax.random.PRNGKey(0))[2] is None


def test_adapt_to_classes_names_the_adapted_tree_that_does_not_fit_the_model(tmp_path, tiny_generic):
  """Variables the checkpoint's model has no place for (here one extra leaf) are a
  CheckpointMismatchError naming the adaptation and the leaf, not a silently larger tree."""
  _, variables, source = tiny_generic
  odd = dataclasses.replace(source, variables={**variables, "params": {**variables["params"],
                                                                        "extra": {"w": np.zeros(3)}}})
  config = init_config(tmp_path, ["doubt", "boredom"], ["d.", "b."])
  with pytest.raises(param_tree.CheckpointMismatchError) as e:
    init_checkpoint.adapt_to_classes(odd, config, jax.random.PRNGKey(0))
  assert str(e.value) == ("config.init_checkpoint adapted to 2 classes: the parameters do not fit the "
                          "architecture\n  unexpected (1): params/extra/w")


def test_tokens_for_new_classes_use_the_tokenizer_else_clip_and_fit_the_vocabulary(tmp_path, tiny,
                                                                                   clip_tokenizer_dir):
  """New classes' prompts are CLIP's tokens of their texts, with config.model.tokenizer, else
  config.model.clip's tokenizer; no tokenizer, one that cannot be read, a text too long for the
  context, or an id outside the checkpoint's vocabulary are each a ConfigError saying so."""
  model, _, _ = tiny
  tokens = init_checkpoint._tokens_for_new_classes
  expected_ids = np.array([prompt_row(WORRY_TOKENS), prompt_row(YAWN_TOKENS)], np.int32)
  for tokenizer, clip in ((clip_tokenizer_dir, "no/such/clip"), ("", clip_tokenizer_dir)):
    config = init_config(tmp_path, ["w"], ["w."], tokenizer=tokenizer, clip=clip)
    ids, name_lens = tokens(model, config, [WORRY_TEXT, YAWN_TEXT])
    assert ids.dtype == np.int32 and name_lens.dtype == np.int32
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(name_lens, [12, 3])

  with pytest.raises(config_checks.ConfigError) as e:
    tokens(model, init_config(tmp_path, ["w"], ["w."]), [YAWN_TEXT])
  assert str(e.value) == ("config.init_checkpoint: new classes need the tokenizer of the checkpoint's CLIP "
                          "for their prompts: set config.model.tokenizer (a directory with vocab.json + "
                          "merges.txt)")
  empty = tmp_path / "empty_tokenizer"
  empty.mkdir()
  with pytest.raises(config_checks.ConfigError) as e:
    tokens(model, init_config(tmp_path, ["w"], ["w."], tokenizer=empty), [YAWN_TEXT])
  assert str(e.value) == (f"config.init_checkpoint: cannot tokenize the new classes' texts with the tokenizer "
                          f"{str(empty)!r} (config.model.tokenizer, else config.model.clip): {empty}: a CLIP "
                          f"tokenizer directory needs vocab.json, merges.txt")
  with pytest.raises(config_checks.ConfigError) as e:
    tokens(model, init_config(tmp_path, ["w"], ["w."], tokenizer=clip_tokenizer_dir), [" ".join(["yes"] * 80)])
  assert str(e.value).startswith(f"config.init_checkpoint: cannot tokenize the new classes' texts with the "
                                 f"tokenizer {str(clip_tokenizer_dir)!r} (config.model.tokenizer, else "
                                 f"config.model.clip): text 0 is 86 tokens long, more than the context of 77")
  # <|endoftext|> (49407) ends every prompt: a vocabulary of 49407 lacks it, one of 49408 holds it.
  config = init_config(tmp_path, ["w"], ["w."], tokenizer=clip_tokenizer_dir)
  small = model.clone(clip_config=clip_config_lib.tiny(layers=1, vocab_size=49407))
  with pytest.raises(config_checks.ConfigError) as e:
    tokens(small, config, [YAWN_TEXT])
  assert str(e.value) == (f"config.init_checkpoint: the tokenizer {str(clip_tokenizer_dir)!r} gives id 49407, "
                          f"outside the checkpoint's vocabulary of 49407: set config.model.tokenizer to the "
                          f"checkpoint's own")
  assert model.clip_config.text_config.vocab_size == 49408
  np.testing.assert_array_equal(tokens(model, config, [YAWN_TEXT])[0], [prompt_row(YAWN_TOKENS)])


def test_load_source_reads_each_form_to_the_variables_written(tmp_path, tiny, official_fixture_dir):
  """A model directory, a workdir's checkpoint and an official .pth each load to the model and
  variables they hold, with the class names and texts their model.json records (none for a .pth:
  DFER-CLIP's 7-class order; texts None), described by where they came from; config.dtype and
  config.remat reach the model."""
  model, variables, _ = tiny
  names, texts = list(OLD_NAMES), list(OLD_TEXTS)
  config = init_config(tmp_path, names, texts)

  export.save_model(tmp_path / "model", model, variables, class_names=names, class_texts=texts)
  config.init_checkpoint = str(tmp_path / "model")
  source = init_checkpoint.load_source(config)
  assert model_kwargs(source.model) == model_kwargs(model)
  assert_same_tree(source.variables, variables)
  assert (source.class_names, source.class_texts, source.description) == (
      OLD_NAMES, texts, str(tmp_path / "model"))
  # Without recorded names and texts: the config's names (4 classes, not an official count), no texts.
  export.save_model(tmp_path / "bare", model, variables)
  config.init_checkpoint = str(tmp_path / "bare")
  config.class_names = ("p", "q", "r", "s")
  config.dtype, config.remat = "bfloat16", True
  source = init_checkpoint.load_source(config)
  assert model_kwargs(source.model) == {**model_kwargs(model), "dtype": "bfloat16", "remat": True}
  assert (source.class_names, source.class_texts) == (("p", "q", "r", "s"), None)
  assert_same_tree(source.variables, variables)

  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "model.json").write_text(json.dumps({
      "format": export.FORMAT, "model": model_kwargs(model), "class_names": names, "class_texts": texts}))
  manager = checkpointing.Checkpointer(workdir / "checkpoints", "eval/uar", asynchronous=False)
  params = variables["params"]
  state = {"params": {"temporal": params["temporal"], "prompt_learner": params["prompt_learner"]},
           "frozen": {"clip": params["clip"]}, "prompts": variables["prompts"], "step": np.int32(3)}
  manager.save(3, state, {"best": None})
  manager.close()
  config = init_config(tmp_path, ["x"], ["x."], spec=f"{workdir}:latest")
  for spec, which in ((f"{workdir}:latest", "latest"), (f"{workdir}:3", "3")):
    config.init_checkpoint = spec
    source = init_checkpoint.load_source(config)
    assert model_kwargs(source.model) == model_kwargs(model)
    assert_same_tree(source.variables, variables)
    assert (source.class_names, source.class_texts, source.description) == (
        OLD_NAMES, texts, f"{workdir} step 3 ({which})")

  pth = official_fixture_dir / "official.pth"
  official_model, official_variables = official.load_checkpoint(pth)
  config.init_checkpoint = str(pth)
  source = init_checkpoint.load_source(config)
  assert model_kwargs(source.model) == model_kwargs(official_model)
  assert_same_tree(source.variables, official_variables)
  assert (source.class_names, source.class_texts, source.description) == (
      tuple(class_orders.DFERCLIP_7), None, f"official {pth}")


def test_build_model_adapts_the_checkpoint_to_the_config_and_logs_what_it_keeps(tmp_path, tiny, tiny_generic,
                                                                                caplog, clip_tokenizer_dir):
  """From a model directory to config [doubt, yawn, anger]: the bundle holds the adapted model and
  variables, the config's class names and the texts (the checkpoint's, the config's for yawn); the
  log states the source and the plan in whole lines (generic contexts named so); a checkpoint
  without texts gives texts []; frames the model does not take fail before anything is adapted."""
  model, variables, _ = tiny
  export.save_model(tmp_path / "model", model, variables, class_names=OLD_NAMES, class_texts=OLD_TEXTS)
  names = ("doubt", "yawn", "anger")
  config = init_config(tmp_path, names, ["d.", YAWN_TEXT, "a."], tokenizer=clip_tokenizer_dir,
                       spec=tmp_path / "model")
  caplog.set_level("INFO")
  bundle = init_checkpoint.build_model(config, jax.random.PRNGKey(1))
  assert bundle.class_names == names and bundle.class_texts == [OLD_TEXTS[3], YAWN_TEXT, OLD_TEXTS[0]]
  assert model_kwargs(bundle.model) == {**model_kwargs(model), "num_classes": 3, "text_length": 16}
  got = bundle.variables
  assert_same_tree(got["params"]["clip"], variables["params"]["clip"])
  assert_same_tree(got["params"]["temporal"], variables["params"]["temporal"])
  ctx, old_ctx = got["params"]["prompt_learner"]["ctx"], variables["params"]["prompt_learner"]["ctx"]
  np.testing.assert_array_equal(ctx[[0, 2]], old_ctx[[3, 0]])
  assert not np.isclose(ctx[1], old_ctx).any() and 0.01 < ctx[1].std() < 0.03
  np.testing.assert_array_equal(got["prompts"]["ids"], np.array(
      [prompt_row(OLD_TOKENS[3]), prompt_row(YAWN_TOKENS), prompt_row(OLD_TOKENS[0])], np.int32))
  np.testing.assert_array_equal(got["prompts"]["name_lens"], np.array([2, 3, 4], np.int32))
  # The same rng draws the same fresh contexts.
  np.testing.assert_array_equal(init_checkpoint.build_model(config, jax.random.PRNGKey(1)).variables[
      "params"]["prompt_learner"]["ctx"], ctx)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("config.init_checkpoint")]
  assert lines[:4] == [
      f"config.init_checkpoint={tmp_path / 'model'}: starting from {tmp_path / 'model'} (4 classes, image 32, "
      f"patch 8, 1 temporal layer(s), n_ctx 4 class-specific, position end); config.model's CLIP, "
      f"architecture and text options are not read",
      "config.init_checkpoint: kept from the checkpoint: clip, temporal, contexts of classes ['doubt', "
      "'anger'], prompt tokens of classes ['doubt', 'anger']",
      "config.init_checkpoint: new (initialised from the config's class texts): contexts of classes "
      "['yawn'], prompt tokens of classes ['yawn']",
      "config.init_checkpoint: classes of the checkpoint not in the config (dropped): ['boredom', 'calm']",
  ]

  # The checkpoint's classes reordered, no texts recorded: nothing new, nothing dropped, texts [].
  export.save_model(tmp_path / "bare", model, variables, class_names=OLD_NAMES)
  names = ("doubt", "calm", "boredom", "anger")
  config = init_config(tmp_path, names, ["d.", "c.", "b.", "a."], spec=tmp_path / "bare")
  caplog.clear()
  bundle = init_checkpoint.build_model(config, jax.random.PRNGKey(1))
  assert bundle.class_names == names and bundle.class_texts == []
  np.testing.assert_array_equal(bundle.variables["params"]["prompt_learner"]["ctx"], old_ctx[[3, 2, 1, 0]])
  np.testing.assert_array_equal(bundle.variables["prompts"]["ids"], variables["prompts"]["ids"][[3, 2, 1, 0]])
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("config.init_checkpoint")]
  assert lines[1:] == [
      "config.init_checkpoint: kept from the checkpoint: clip, temporal, contexts of classes ['doubt', "
      "'calm', 'boredom', 'anger'], prompt tokens of classes ['doubt', 'calm', 'boredom', 'anger']",
      "config.init_checkpoint: new (initialised from the config's class texts): nothing",
  ]

  config.data.num_frames = 8
  with pytest.raises(config_checks.ConfigError, match=r"takes 4 frames per clip .* config.data.num_frames=8"):
    init_checkpoint.build_model(config, jax.random.PRNGKey(1))

  # Generic contexts: the log says so, and they are kept whole.
  generic_model, generic_variables, _ = tiny_generic
  export.save_model(tmp_path / "generic", generic_model, generic_variables, class_names=OLD_NAMES)
  config = init_config(tmp_path, ["calm", "anger"], ["c.", "a."], spec=tmp_path / "generic")
  caplog.clear()
  bundle = init_checkpoint.build_model(config, jax.random.PRNGKey(1))
  assert_same_tree(bundle.variables["params"], generic_variables["params"])
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("config.init_checkpoint")]
  assert lines == [
      f"config.init_checkpoint={tmp_path / 'generic'}: starting from {tmp_path / 'generic'} (4 classes, "
      f"image 32, patch 8, 1 temporal layer(s), n_ctx 4 generic, position end); config.model's CLIP, "
      f"architecture and text options are not read",
      "config.init_checkpoint: kept from the checkpoint: clip, temporal, generic contexts, prompt tokens of "
      "classes ['calm', 'anger']",
      "config.init_checkpoint: new (initialised from the config's class texts): nothing",
      "config.init_checkpoint: classes of the checkpoint not in the config (dropped): ['boredom', 'doubt']",
  ]
