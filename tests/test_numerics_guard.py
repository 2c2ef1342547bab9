"""Numbers that would make a NaN are refused when the config is read, naming the key; a NaN made
inside a step (by the update itself) stops the run before that state is evaluated or saved."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import demo, hesp_demo
from conftest import REPO
from dferclip_jax.train import checkpointing, config_checks, optimizer, reporting, state, trainer

# key -> (a value it must refuse, the interval the message gives)
REFUSED = {
    "optim.lr.temporal": [(float("nan"), "[0, inf)"), (-1e-3, "[0, inf)"), (float("inf"), "[0, inf)")],
    "optim.lr.image_encoder": [(float("nan"), "[0, inf)")],
    "optim.lr.prompt_learner": [(-0.1, "[0, inf)")],
    "optim.momentum": [(float("nan"), "[0, 1)"), (1.0, "[0, 1)"), (-0.5, "[0, 1)")],
    "optim.weight_decay": [(float("inf"), "[0, inf)"), (-1e-4, "[0, inf)")],
    "optim.gamma": [(0.0, "(0, inf)"), (float("nan"), "(0, inf)")],
    "label_smoothing": [(float("nan"), "[0, 1)"), (1.0, "[0, 1)")],
    "preemption_timeout_s": [(0.0, "(0, inf)"), (float("inf"), "(0, inf)")],
    "hesp.lr": [(float("nan"), "[0, inf)")],
    "hesp.lr_context": [(-1.0, "[0, inf)")],
    "hesp.momentum": [(1.5, "[0, 1)")],
    "hesp.weight_decay": [(float("nan"), "[0, inf)")],
    "hesp.normalized_step": [(float("inf"), "[0, inf)")],
    "hesp.temperature": [(0.0, "(0, inf)")],
    "hesp.weight_pl": [(-0.1, "[0, inf)")],
    "hesp.contrastive_temperature": [(float("nan"), "(0, inf)")],
}


@pytest.mark.parametrize("key,value,interval", [(k, v, i) for k, cases in REFUSED.items() for v, i in cases])
def test_each_number_is_refused_by_name(key, value, interval):
  config = hesp_demo.get_config()
  config_checks.check_config(config)  # the defaults pass
  config.update_from_flattened_dict({key: value})
  with pytest.raises(config_checks.ConfigError) as refused:
    config_checks.check_config(config)
  assert str(refused.value) == f"config.{key}={value!r}: must be a finite number in {interval}"


@pytest.mark.parametrize("key,value", [("hesp.n_ctx", 0), ("hesp.patch_size", -8), ("hesp.num_frames", 0),
                                       ("hesp.batch_size", 0), ("hesp.epochs", 0),
                                       ("hesp.eval_every_epochs", 0)])
def test_each_open_set_count_must_be_positive(key, value):
  config = hesp_demo.get_config()
  config.update_from_flattened_dict({key: value})
  with pytest.raises(config_checks.ConfigError, match=rf"^config\.{key}={value}: must be a positive integer$"):
    config_checks.check_config(config)


def test_open_set_milestones_are_epochs():
  config = hesp_demo.get_config()
  config.hesp.milestones = (30, 0)
  with pytest.raises(config_checks.ConfigError, match=r"^config\.hesp\.milestones=\(30, 0\): must be epochs >= 1$"):
    config_checks.check_config(config)


def test_edges_that_are_allowed():
  config = hesp_demo.get_config()
  config.update_from_flattened_dict({"optim.lr.temporal": 0.0, "optim.momentum": 0.0,
                                     "optim.weight_decay": 0.0, "label_smoothing": 0.0,
                                     "hesp.weight_pl": 0.0})
  config_checks.check_config(config)


def test_a_nan_learning_rate_fails_before_anything_is_written(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, str(REPO / "main.py"), "--config=configs/demo.py",
                           f"--workdir={workdir}", "--config.optim.lr.temporal=nan"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert "config.optim.lr.temporal=nan: must be a finite number in [0, inf)" in result.stderr
  assert not workdir.exists(), "the workdir was written before the config was checked"


TINY = {"data.num_frames": 4, "batch_size": 8, "eval_batch_size": 8, "log_every": 1,
        "checkpoint_every": 1, "eval_every_epochs": 1, "progress_bars": False}


def nan_at_update(number: int) -> optax.GradientTransformation:
  """Passes updates through, except the ``number``-th (1-based), which it makes NaN: a planted
  non-finite update, after a finite loss and gradient."""
  def init(params):
    return jnp.zeros((), jnp.int32)

  def update(updates, count, params=None):
    poison = jnp.where(count + 1 == number, jnp.nan, 0.0)
    return jax.tree.map(lambda u: u + poison.astype(u.dtype), updates), count + 1

  return optax.GradientTransformation(init, update)


def test_a_nan_made_by_the_update_stops_before_it_is_saved_or_evaluated(tmp_path, monkeypatch):
  real = optimizer.grouped_optimizer

  def planted(params, optim_config, steps_per_epoch):
    assignment, tx, schedules = real(params, optim_config, steps_per_epoch)
    return assignment, optax.chain(tx, nan_at_update(3)), schedules

  monkeypatch.setattr(optimizer, "grouped_optimizer", planted)
  config = demo.get_config("epochs=1,clips_per_class=8")
  config.update_from_flattened_dict({**TINY, "data.synthetic.dir": str(tmp_path / "data")})
  workdir = tmp_path / "run"
  with pytest.raises(state.NonFiniteLossError) as stopped:
    trainer.train_and_evaluate(config, workdir)
  assert str(stopped.value) == ("step 3: train/param_norm is nan; stopping (the last checkpoint holds "
                                "the state before it)")
  records = reporting.read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2], "a step with a NaN state was logged or evaluated"
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", config.best_metric, asynchronous=False)
  assert ckpt.all_steps() == [2], "the NaN state of step 3 was saved"
  variables = ckpt.restore_variables(2)
  ckpt.close()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
  assert not (workdir / "run.lock").exists()
  assert json.loads((workdir / "model.json").read_text())
