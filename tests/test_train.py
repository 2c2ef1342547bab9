"""The training job end to end on the synthetic data: learning, outputs, sharding, bad configs.

One tiny run is shared by the module (compiled once); the sharding comparison runs a few steps on
1 and on 8 simulated devices.
"""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import demo
from dferclip_jax import evaluation
from dferclip_jax.train import config_checks, reporting, trainer
from dferclip_jax.train import state as state_lib


def tiny_config(**overrides):
  """The demo recipe, shrunk to CI size (84 clips of 8-12 frames, 4 frames per clip)."""
  config = demo.get_config("epochs=8,clips_per_class=12")
  config.data.synthetic.frames_range = (6, 12)
  config.data.num_frames = 4
  # Classes told apart by their look (no time-only pairs) at the demo's former rates: learnt
  # within this run's 64 steps (the demo's pairs need hundreds; tests/test_demo_temporal.py).
  config.data.synthetic.temporal_pairs = 0
  config.optim.lr.temporal = 1e-3
  config.batch_size = 8
  config.eval_batch_size = 8
  config.log_every = 1
  config.checkpoint_every = 10
  config.progress_bars = False
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
  """One synthetic dataset for every run of the module (generation is the slow part)."""
  return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(**{"data.synthetic.dir": shared_data, "mesh.data": 4, "mesh.fsdp": 2,
                          "shard_min_size": 1024})
  summary = trainer.train_and_evaluate(config, workdir)
  return config, workdir, summary


def test_learns_well_above_chance(trained):
  _, _, summary = trained
  chance = 100 / 7
  assert summary["complete"]
  assert summary["best"]["uar"] > 2.5 * chance, summary
  assert summary["final"]["uar"] > 2 * chance, summary


def test_writes_metrics_events_plots_and_checkpoints(trained):
  config, workdir, summary = trained
  records = reporting.read_metrics(workdir)
  train = [r for r in records if "train/loss" in r]
  evals = [r for r in records if "eval/uar" in r]
  assert [r["step"] for r in train] == list(range(1, summary["steps"] + 1))  # log_every=1
  assert len(evals) == config.num_epochs and evals[-1]["step"] == summary["steps"]
  assert {"eval/war", "eval/loss", "eval/recall/happiness", "epoch"} <= set(evals[0])
  assert train[-1]["train/loss"] < train[0]["train/loss"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  for name in ("confusion_matrix.png", "confusion_matrix_best.png", "results.json", "model.json"):
    assert (workdir / name).is_file(), name
  assert (workdir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert summary["steps"] in steps and summary["best"]["step"] in steps


def test_results_record_the_data_fingerprint(trained):
  """results.json's data fingerprint: the clip and frame counts and the list hash by hand from
  the synthetic lists (ids relative to their root), the commit, the config's hash."""
  import hashlib
  import os
  import re
  from conftest import REPO
  config, workdir, summary = trained
  recorded = json.loads((workdir / "results.json").read_text())["data_fingerprint"]
  root = config.data.synthetic.dir
  for split in ("train", "test"):
    rows = []
    for line in open(os.path.join(root, f"{split}.txt")).read().splitlines():
      path, count, label = line.split()
      rows.append((os.path.relpath(os.path.join(root, path), root), int(count), int(label)))
    lines = "".join(f"{c}\t{n}\t{k}\n" for c, n, k in sorted(rows))
    got = recorded["splits"][split]
    assert (got["clips"], got["frames"]) == (summary["num_clips"][split], sum(r[1] for r in rows))
    assert got["list_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
  assert set(recorded["splits"]) == {"train", "test"}
  assert re.fullmatch(r"[0-9a-f]{64}", recorded["config_sha256"])
  if (REPO / ".git").exists():
    assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?", recorded["commit"])


def test_params_really_shard_over_fsdp(trained):
  config, workdir, _ = trained
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  from dferclip_jax.train import checkpointing, sharding
  manager = checkpointing.Checkpointer(workdir / "checkpoints", "eval/uar", asynchronous=False)
  variables = manager.restore_variables(manager.latest_step(),
                                        lambda t: sharding.tree_shardings(t, mesh, config.shard_min_size))
  manager.close()
  specs = sharding.describe_sharding(variables["params"])
  fc1 = "clip/vision_model/encoder/layers/0/mlp/fc1/kernel"  # 32 x 128: sharded
  assert fc1 in specs and "fsdp" in specs[fc1]
  assert "temporal/cls_token" not in specs  # small: replicated
  leaf = traverse_util.flatten_dict(variables["params"], sep="/")[fc1]
  assert {s.data.shape for s in leaf.addressable_shards} == {(32, 64)}  # the larger axis, halved


def test_best_checkpoint_reproduces_the_logged_metrics(trained):
  config, workdir, summary = trained
  report = evaluation.run_evaluation(config, workdir, "best")
  assert report["uar"] == pytest.approx(summary["best"]["uar"], abs=1e-6)
  assert report["war"] == pytest.approx(summary["best"]["war"], abs=1e-6)
  assert (workdir / "evaluation" / "best" / "confusion_matrix.png").is_file()
  saved = json.loads((workdir / "evaluation" / "best" / "report.json").read_text())
  assert saved["num_clips"] == sum(map(sum, saved["confusion_matrix"]))


def test_one_device_and_eight_devices_give_the_same_losses(tmp_path, shared_data):
  """data=4 x fsdp=2 on 8 simulated devices vs 1 device: same losses within float32 reduction-
  order noise (relative 1e-4 after 6 SGD steps)."""
  losses = {}
  for name, overrides in (("one", {"num_devices": 1, "mesh.data": 1}),
                          ("eight", {"mesh.data": 4, "mesh.fsdp": 2, "shard_min_size": 1024})):
    config = tiny_config(**{"data.synthetic.dir": shared_data, "max_steps": 6, **overrides})
    trainer.train_and_evaluate(config, tmp_path / name)
    losses[name] = np.array([r["train/loss"] for r in reporting.read_metrics(tmp_path / name)
                             if "train/loss" in r])
  assert len(losses["one"]) == 6
  np.testing.assert_allclose(losses["eight"], losses["one"], rtol=1e-4)


@pytest.mark.parametrize("override, message", [
    ({"dataset": "affectnet"}, "config.dataset='affectnet': unknown dataset"),
    ({"fold": 6}, "config.fold=6: synthetic has folds 1..5"),
    ({"batch_size": 12, "mesh.data": 8}, "config.batch_size=12 is not divisible by the data-parallel size 8"),
    ({"data.augmentation": "vflip"}, "config.data.augmentation='vflip'"),
    ({"dtype": "float16"}, "config.dtype='float16'"),
    ({"mesh.data": 3}, r"config.mesh=.* needs 3 devices, but 8 are available"),
])
def test_bad_config_values_fail_before_compiling(tmp_path, override, message, monkeypatch):
  compiled = []
  monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(tiny_config(**override), tmp_path)
  assert not compiled


def test_missing_annotation_file_is_named(tmp_path, monkeypatch):
  from configs import dfew
  config = dfew.get_config("fold=2")
  config.data.train_list = str(tmp_path / "nope.txt")
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before checking the config"))
  with pytest.raises(config_checks.ConfigError, match=r"config.data.train_list=.*nope.txt.*no such annotation file"):
    trainer.train_and_evaluate(config, tmp_path)
  with pytest.raises(ValueError, match="fold=6, but DFEW has folds 1..5"):
    dfew.get_config("fold=6")


def test_bfloat16_and_remat_switches_train(tmp_path, shared_data):
  config = tiny_config(**{"data.synthetic.dir": shared_data, "max_steps": 3, "dtype": "bfloat16",
                          "remat": True})
  summary = trainer.train_and_evaluate(config, tmp_path)
  losses = [r["train/loss"] for r in reporting.read_metrics(tmp_path) if "train/loss" in r]
  assert len(losses) == 3 and all(np.isfinite(losses)) and summary["steps"] == 3
  # Parameters stay float32 in the checkpoint whatever the matmul dtype.
  from dferclip_jax.train import checkpointing
  manager = checkpointing.Checkpointer(tmp_path / "checkpoints", "eval/uar", asynchronous=False)
  variables = manager.restore_variables(manager.latest_step())
  manager.close()
  assert {str(x.dtype) for x in jax.tree.leaves(variables["params"])} == {"float32"}


def test_nan_stops_the_run_naming_the_step(tmp_path, shared_data):
  config = tiny_config(**{"data.synthetic.dir": shared_data, "max_steps": 6, "checkpoint_every": 2})
  config.optim.lr.temporal = 1e30  # the first update overflows the temporal model
  # The update of step 1 overflows: the updated params' norm shows it at once (the loss would only
  # at step 2, the check before param_norm was in it).
  with pytest.raises(state_lib.NonFiniteLossError, match=r"^step 1: train/param_norm is (nan|inf);"):
    trainer.train_and_evaluate(config, tmp_path)
  # Step 2 is the first checkpoint step: nothing of the NaN state is saved.
  from dferclip_jax.train import checkpointing
  manager = checkpointing.Checkpointer(tmp_path / "checkpoints", "eval/uar", asynchronous=False)
  assert manager.all_steps() == []
  manager.close()
