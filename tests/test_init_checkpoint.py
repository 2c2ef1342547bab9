"""config.init_checkpoint: training starts from an official .pth, a model directory or a workdir
checkpoint — the first logged loss is the loaded model's loss on the first batch, a new class set
keeps what does not depend on it, and six steps through main.py follow the official training code.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO
from configs import dfew, mafw
from dferclip_jax import export, official
from dferclip_jax.data import class_orders
from dferclip_jax.models.dferclip import model_from_kwargs, model_kwargs, prompt_tokens
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
