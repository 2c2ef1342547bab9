"""What a user does right after the demo must work (issue 12): evaluate and predict with the
default ``--checkpoint=best`` after tied evaluations, explicit lists on the demo config, a clip
of truncated JPEGs, predict equal to evaluate, and model selection on a held-out validation set."""

import json
import pathlib

import jax
import numpy as np
import pytest

from configs import demo
from dferclip_jax import evaluation, predict
from dferclip_jax.data import annotations, pipeline, synthetic
from dferclip_jax.data.sources import ClipDataError
from dferclip_jax.train import checkpointing, config_checks, data_setup, model_setup, reporting, trainer
from dferclip_jax.train import sharding as sharding_lib
from dferclip_jax.inference import clip_probabilities


def tiny_config(arg="epochs=3,clips_per_class=4", **overrides):
  """The demo recipe at test size: 21 training and 7 test clips of 4-6 frames, 2 steps an epoch."""
  config = demo.get_config(arg)
  config.data.synthetic.frames_range = (4, 6)
  config.data.num_frames = 4
  config.batch_size = 8
  config.eval_batch_size = 8
  config.log_every = 1
  config.checkpoint_every = 100
  config.progress_bars = False
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """The synthetic data tiny_config generates, made once for the module."""
  s = tiny_config().data.synthetic
  return synthetic.make_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_classes=7,
                                          clips_per_class=4, frames_range=(4, 6),
                                          image_size=s.image_size, seed=s.seed)


def folders(dataset, list_file):
  """The clip folders of a synthetic list (its paths are relative to the dataset's root)."""
  return [str(pathlib.Path(dataset.root) / line.split()[0])
          for line in pathlib.Path(list_file).read_text().splitlines()]


def earliest_best(records, key):
  """The step of the highest ``key``, the earliest among ties: the documented rule."""
  evals = [(r[key], -r["step"]) for r in records if key in r]
  return -max(evals)[1]


# ------------------------------------------------------------------ best checkpoint, ties


def test_tied_evaluations_best_is_on_disk_and_evaluate_predict_defaults_work(tmp_path, dataset):
  # Learning rate 0: every evaluation gives the same UAR, a tie at every epoch.
  config = tiny_config(**{"data.synthetic.dir": dataset.root, "optim.lr.temporal": 0.0,
                          "optim.lr.image_encoder": 0.0, "optim.lr.prompt_learner": 0.0})
  workdir = tmp_path / "run"
  summary = trainer.train_and_evaluate(config, workdir)
  results = json.loads((workdir / "results.json").read_text())
  evals = [r for r in reporting.read_metrics(workdir) if "eval/uar" in r]
  assert [r["step"] for r in evals] == [2, 4, 6] and len({r["eval/uar"] for r in evals}) == 1
  assert results["best"]["step"] == 2 and results["test_selected"]["step"] == 2  # earliest of a tie
  assert results["best"]["selected_on"] == "test"  # no validation set: the official selection
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 6]

  report = evaluation.run_evaluation(config, workdir)  # the default, --checkpoint=best
  assert report["uar"] == pytest.approx(results["best"]["uar"])
  assert "step 2 (best)" in report["checkpoint"]

  mesh = sharding_lib.make_mesh(config.mesh)
  model, variables, names, _ = evaluation.load_model_for_eval("best", workdir, mesh, config.shard_min_size)
  out = list(predict.predict(model, variables, folders(dataset, dataset.test_list), names, batch_size=8))
  assert len(out) == 7 and all("probs" in r for r in out)

  # References that name nothing: clear errors listing what exists.
  with pytest.raises(checkpointing.CheckpointNotFoundError, match=r"no step 4 .*steps \[2, 6\]"):
    evaluation.run_evaluation(config, workdir, "4")
  with pytest.raises(checkpointing.CheckpointNotFoundError, match="no such file or folder"):
    evaluation.run_evaluation(config, workdir, str(tmp_path / "nothing_here"))
  with pytest.raises(checkpointing.CheckpointNotFoundError, match="holds no checkpoints/ folder"):
    evaluation.run_evaluation(config, tmp_path / "not_a_run")
  assert summary["best"] == results["best"]


def test_best_before_any_evaluation_is_a_clear_error(tmp_path):
  manager = checkpointing.Checkpointer(tmp_path / "checkpoints", "eval/uar", asynchronous=False)
  manager.save(3, {"x": jax.numpy.zeros(2)}, {"best": None})
  with pytest.raises(checkpointing.CheckpointNotFoundError,
                     match=r"no best checkpoint yet .*steps \[3\]"):
    manager.resolve("best")
  assert manager.resolve("latest") == 3 and manager.resolve("3") == 3
  manager.close()


def test_selection_rule_prefers_the_higher_metric_then_the_earliest_step():
  assert checkpointing.is_better(50.0, 4, None)
  assert not checkpointing.is_better(50.0, 6, {"value": 50.0, "step": 4})
  assert checkpointing.is_better(50.1, 6, {"value": 50.0, "step": 4})


# ------------------------------------------------------------------ explicit lists, broken clips


def custom_lists(tmp_path, dataset, broken_line):
  """A train list of the synthetic set's first 16 clips (not what the demo config would generate),
  whose line ``broken_line`` holds only truncated JPEGs; the test list as generated."""
  lines = pathlib.Path(dataset.train_list).read_text().splitlines()[:16]
  copies = tmp_path / "clips"
  listing = []
  for i, (line, folder) in enumerate(zip(lines, folders(dataset, dataset.train_list))):
    _, count, label = line.split()
    target = copies / f"clip{i:02d}"
    target.mkdir(parents=True)
    for frame in sorted(pathlib.Path(folder).iterdir()):
      data = frame.read_bytes()
      (target / frame.name).write_bytes(data[:len(data) // 2] if i + 1 == broken_line else data)
    listing.append(f"{target} {count} {label}\n")
  train_list = tmp_path / "my_train.txt"
  train_list.write_text("".join(listing))
  return str(train_list), str(copies / f"clip{broken_line - 1:02d}")


def test_custom_lists_on_the_demo_config_with_a_truncated_clip(tmp_path, dataset):
  train_list, broken = custom_lists(tmp_path, dataset, broken_line=5)
  config = tiny_config("epochs=1,clips_per_class=4", **{
      "data.train_list": train_list, "data.test_list": dataset.test_list, "data.root": dataset.root})
  # --mode=verify finds it before any training.
  [line] = data_setup.verify_data(config, tmp_path / "verify")
  assert line.startswith(f"{train_list}:5 ({broken})") and "cannot decode" in line
  assert (tmp_path / "verify" / "bad_clips.txt").read_text() == line + "\n"
  # on_bad_clip="error" (the default): stops, naming the list line, the folder and the frame.
  with pytest.raises(ClipDataError, match=rf"{train_list}:5 \({broken}\): {broken}/\d+\.jpg: cannot decode"):
    trainer.train_and_evaluate(config, tmp_path / "error_run")

  config.data.on_bad_clip = "skip"
  workdir = tmp_path / "skip_run"
  summary = trainer.train_and_evaluate(config, workdir)
  assert summary["complete"] and summary["steps"] == 2  # 16 clips, batch 8: one epoch
  assert summary["num_clips"] == {"train": 16, "val": 0, "test": 7}  # the lists given, not generated
  assert not (workdir / "synthetic_data").exists()
  [skipped] = summary["skipped_clips"]
  assert f"{train_list}:5" in skipped and broken in skipped and "cannot decode" in skipped
  assert json.loads((workdir / "results.json").read_text())["skipped_clips"] == [skipped]


def test_one_list_alone_on_the_synthetic_config_is_refused(tmp_path, dataset):
  config = tiny_config(**{"data.train_list": dataset.train_list})
  with pytest.raises(config_checks.ConfigError, match="config.data.test_list is not"):
    trainer.train_and_evaluate(config, tmp_path / "run")
  tfds = tiny_config(**{"data.source": "tfds", "data.tfds_name": "dfew"})
  with pytest.raises(config_checks.ConfigError, match="--config.data.train_list is set"):
    config_checks.check_list_overrides(tfds, {"data.train_list": "x.txt"})


# ------------------------------------------------------------------ predict == evaluate


def test_predict_gives_the_probabilities_evaluation_computes(dataset):
  config = tiny_config()
  bundle = model_setup.build_model(config, rng=jax.random.PRNGKey(3))
  model, variables = bundle.model, bundle.variables
  records, _ = annotations.read_annotation_list(dataset.test_list, 7, root=dataset.root)
  mesh = sharding_lib.make_mesh(config.mesh)
  probs_fn = jax.jit(lambda v, x: clip_probabilities(model, v, x))
  image_size = model.clip_config.vision_config.image_size
  evaluated = evaluation.collect_outputs(
      probs_fn, variables, pipeline.eval_batches(records, batch_size=8, image_size=image_size,
                                                 num_frames=4), mesh, len(records))
  predicted = list(predict.predict(model, variables, [r.path for r in records], bundle.class_names,
                                   batch_size=8))
  predicted = np.array([[p["probs"][n] for n in bundle.class_names] for p in predicted])
  np.testing.assert_allclose(predicted, evaluated, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ validation hold-out


def test_val_fraction_selects_on_validation_and_reports_both(tmp_path, dataset):
  config = tiny_config(**{"data.synthetic.dir": dataset.root, "data.val_fraction": 0.25})
  workdir = tmp_path / "run"
  summary = trainer.train_and_evaluate(config, workdir)
  # 3 training clips per class: round(0.25 * 3) = 1 held out per class.
  assert summary["num_clips"] == {"train": 14, "val": 7, "test": 7}
  records = reporting.read_metrics(workdir)
  best = summary["best"]
  assert best["selected_on"] == "val" and best["metric"] == "val/uar"
  assert best["step"] == earliest_best(records, "val/uar")
  at_best = next(r for r in records if r["step"] == best["step"] and "eval/uar" in r)
  assert best["uar"] == pytest.approx(at_best["eval/uar"])  # the test figure of the val choice
  assert summary["test_selected"]["step"] == earliest_best(records, "eval/uar")
  assert summary["test_selected"]["selected_on"] == "test"
  saved = json.loads((workdir / "results.json").read_text())
  assert {"best", "final", "test_selected"} <= set(saved)
  # Calibration beside every evaluation; a temperature fitted on the validation split, its
  # figures beside the raw ones. The raw test figures from the fitted logits (numpy) equal the
  # final evaluation's (accumulated on the devices).
  assert {"eval/nll", "eval/brier"} <= set([r for r in records if "eval/ece" in r][-1])
  assert {"val/nll", "val/brier"} <= set([r for r in records if "val/ece" in r][-1])
  scaling = saved["temperature_scaling"]
  assert scaling["fitted_on"] == "val" and scaling["temperature"] > 0
  assert scaling["val"]["scaled"]["nll"] <= scaling["val"]["raw"]["nll"] + 1e-9
  for key in ("ece", "nll", "brier"):
    assert scaling["test"]["raw"][key] == pytest.approx(saved["final"][key], rel=1e-4, abs=1e-4), key
  assert (workdir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  report = evaluation.run_evaluation(config, workdir)
  assert report["uar"] == pytest.approx(best["uar"])
  assert {"ece", "nll", "brier"} <= set(report) and report["nll"] == pytest.approx(report["loss"])
  assert (pathlib.Path(report["output_dir"]) / "reliability.png").is_file()


def test_crossval_reports_val_selected_final_and_test_selected(tmp_path):
  from dferclip_jax import crossval
  runs = {1: (60.0, 50.0, 70.0), 2: (40.0, 45.0, 50.0)}  # fold -> best (val-selected), final, test-selected UAR

  def train(config, workdir):
    best, final, test_selected = runs[config.fold]
    figure = lambda uar, step: {"uar": uar, "war": uar + 1, "step": step}
    return {"best": figure(best, 2), "final": figure(final, 6), "test_selected": figure(test_selected, 4)}

  results = crossval.run_crossval("configs/demo.py", {}, tmp_path, [1, 2], train)
  s = results["summary"]
  assert s["best/uar"]["values"] == [60.0, 40.0] and s["best/uar"]["mean"] == pytest.approx(50.0)
  assert s["test_selected/uar"]["values"] == [70.0, 50.0] and s["test_selected/uar"]["std"] == pytest.approx(10.0)
  assert s["final/war"]["values"] == [51.0, 46.0]
