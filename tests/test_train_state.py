"""The train state both loops share (``train/state.py``): the every-step NaN check and its log
rule, and restoring a checkpoint saved before the state's unread "rng" was dropped."""

import jax
import numpy as np
import optax
import pytest

from dferclip_jax.train import checkpointing
from dferclip_jax.train import sharding as sharding_lib
from dferclip_jax.train import state as state_lib
from dferclip_jax.train.optimizer import FROZEN


class ListWriter:
  """A MetricWriter that keeps what it is given."""

  def __init__(self):
    self.records = []

  def write(self, step, scalars, extra=None):
    self.records.append((step, dict(scalars)))


def metrics(loss, grad_norm=1.0, param_norm=1.0):
  return {"train/loss": np.float32(loss), "train/grad_norm": np.float32(grad_norm),
          "train/param_norm": np.float32(param_norm)}


def test_every_step_is_checked_one_step_late_and_logged_by_the_rule():
  writer = ListWriter()
  checked = state_lib.StepMetrics(writer, log_every=3, also_log=(1,))
  for step in range(1, 8):
    checked.add(step, metrics(float(step)))
  assert [s for s, _ in writer.records] == [1, 3, 6]  # 1 (also_log), every 3rd; 7 still held
  checked.flush()
  assert [s for s, _ in writer.records] == [1, 3, 6]  # 7 checked, not a logging step
  assert writer.records[1][1]["train/loss"] == 3.0

  # A NaN at a step that is not logged stops the run: when the next step is added, or at a flush.
  checked = state_lib.StepMetrics(ListWriter(), log_every=100)
  checked.add(1, metrics(1.0))
  checked.add(2, metrics(np.nan))
  with pytest.raises(state_lib.NonFiniteLossError, match=r"step 2: train/loss is nan"):
    checked.add(3, metrics(1.0))
  checked = state_lib.StepMetrics(ListWriter(), log_every=100)
  checked.add(5, metrics(1.0, grad_norm=np.inf))
  with pytest.raises(state_lib.NonFiniteLossError, match=r"step 5: train/grad_norm is inf"):
    checked.flush()
  # The update itself made the NaN (finite loss and gradient): the updated params' norm shows it.
  checked = state_lib.StepMetrics(ListWriter(), log_every=1)
  checked.add(4, metrics(1.0, param_norm=np.nan))
  with pytest.raises(state_lib.NonFiniteLossError, match=r"^step 4: train/param_norm is nan; "):
    checked.flush()


def tiny_host_state():
  params = {"w": np.arange(4, dtype=np.float32), "b": np.ones(2, np.float32)}
  assignment = {("w",): "g", ("b",): FROZEN}
  return state_lib.host_state(params, assignment, prompts=np.array([3, 1], np.int32))


def test_a_checkpoint_saved_with_the_old_rng_resumes(tmp_path):
  """Before the unread "rng" was dropped, the trainer saved it in every state: such a checkpoint
  restores onto the current state (the rng read and dropped), and an unknown entry still fails."""
  host, tx = tiny_host_state(), optax.sgd(0.1, momentum=0.9)
  assert host["params"] == {"w": host["params"]["w"]} and list(host["frozen"]) == ["b"]
  saved = state_lib.new_state(host, tx)
  saved = {**saved, "params": {"w": saved["params"]["w"] + 10.0}, "step": saved["step"] + 7,
           "opt": jax.tree.map(lambda x: x + 0.5, saved["opt"])}
  mesh = sharding_lib.make_mesh({"data": -1, "fsdp": 2})  # restored sharded over fsdp
  manager = checkpointing.Checkpointer(tmp_path / "checkpoints", "eval/uar", asynchronous=False)
  manager.save(7, {**saved, "rng": jax.random.PRNGKey(0)}, {"step": 7})

  state, _, start, meta = state_lib.init_or_restore(host, tx, mesh, 1, manager)
  assert start == 7 and meta == {"step": 7} and "rng" not in state
  np.testing.assert_array_equal(state["params"]["w"], [10.0, 11.0, 12.0, 13.0])
  assert int(state["step"]) == 7
  for restored, expected in zip(jax.tree.leaves(state["opt"]), jax.tree.leaves(saved["opt"])):
    np.testing.assert_array_equal(restored, expected)
  assert state["params"]["w"].sharding.spec == jax.sharding.PartitionSpec("fsdp")

  manager.save(8, {**saved, "mystery": np.zeros(3, np.float32)}, {"step": 8})
  with pytest.raises(ValueError, match="mystery"):  # not a retired key: no silent skipping
    state_lib.init_or_restore(host, tx, mesh, 1, manager)
  manager.close()
