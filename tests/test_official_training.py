"""Training parity with the official code: from the official fixture checkpoint, the project's
train step (official recipe's param groups, SGD, momentum, weight decay) reproduces the losses
the official ``main.py`` optimizer logged over 4 full-batch steps. Each loss after the first
depends on the previous steps' gradients, so this checks the backward pass too: through the
text tower on its shortest end-of-text prefix, the towers' last blocks evaluated at their pooled
positions only, and the patch embedding as a matmul."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common as config_common
from dferclip_jax import official
from dferclip_jax.models.dferclip import DFERCLIP
from dferclip_jax.train import optimizer
from dferclip_jax.train import state as state_lib
from dferclip_jax.train import train_step as steps

# fp32 parity. Measured: 6e-7. Planted: momentum 0 errs by 0.26, the temporal or the prompt lr
# doubled by 0.58 / 0.19. Weight decay dropped errs by only 2e-6 over these 4 steps, below any
# tolerance float32 allows: tests/test_config_switches.py::test_sgd_off_its_defaults_follows_torch
# guards it (at 1e-2).
LOSS_RTOL = 1e-5


def test_training_losses_match_the_official_code(official_fixture_dir):
  record = json.loads((official_fixture_dir / "train_losses.json").read_text())
  model, variables = official.load_checkpoint(official_fixture_dir / "official.pth")
  assert isinstance(model, DFERCLIP) and model.text_length < model.context_length  # the cut is on
  config = config_common.base_config()
  assignment, tx, schedules = optimizer.grouped_optimizer(variables["params"], config.optim, 100)
  state = state_lib.new_state(
      state_lib.host_state(variables["params"], assignment, prompts=variables["prompts"]), tx)
  batch = {"video": np.load(official_fixture_dir / "video.npy").astype(np.float32) / 255.0,
           "label": np.asarray(record["labels"], np.int32)}
  step = jax.jit(steps.make_train_step(model, tx, schedules))
  losses = []
  for _ in record["losses"]:
    state, metrics = step(state, batch)
    losses.append(float(metrics["train/loss"]))
  np.testing.assert_allclose(losses, record["losses"], rtol=LOSS_RTOL)


# ----------------------------------------------------------------------------- the step itself, against torch


class _LinearProbe(nn.Module):
  """logits = x @ w + b + offset: ``w`` trainable, ``b`` frozen, ``offset`` in the "prompts"
  collection; it refuses to run outside training mode, as the step must call it with train=True."""

  @nn.compact
  def __call__(self, x, train=False):
    if not train:
      raise AssertionError("the train step must run the model with train=True")
    w = self.param("w", nn.initializers.zeros, (x.shape[-1], 3))
    b = self.param("b", nn.initializers.zeros, (3,))
    offset = self.variable("prompts", "offset", lambda: jnp.zeros((3,))).value
    return x @ w + b + offset


@pytest.mark.parametrize("label_smoothing", [None, 0.1])
def test_two_train_steps_match_torch(label_smoothing):
  """Two steps of make_train_step on a linear probe against torch (F.cross_entropy with
  label_smoothing, SGD momentum 0.9 + weight decay, MultiStepLR dropping 10x after step 1): the
  new trainable params, the frozen params and prompts untouched, step + 1, and every metric --
  loss and accuracy of the pre-update logits, the norm of the raw gradient (no weight decay), the
  norm of the updated trainable params, the lr of the step taken. rtol 1e-5; the planted bugs
  (smoothing e instead of e / C, accuracy over the batch axis, the lr of the next step, norms
  including the frozen params or the decay) move them by >= 1e-2 relative."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(4)
  x = rng.standard_normal((5, 4)).astype(np.float32)  # 5 clips, 4 features, 3 classes
  labels = np.array([0, 2, 1, 2, 0], np.int32)
  w0 = rng.standard_normal((4, 3)).astype(np.float32)
  b0 = np.array([0.3, -0.2, 0.1], np.float32)
  offset = np.array([0.05, 0.0, -0.1], np.float32)
  params = {"w": w0, "b": b0}
  config = ml_collections.ConfigDict(dict(name="sgd", momentum=0.9, weight_decay=0.01, milestones=(1,),
                                          gamma=0.1, lr={"head": 0.5}, groups={"head": "w"}))
  assignment, tx, schedules = optimizer.grouped_optimizer(params, config, 1)
  state = state_lib.new_state(state_lib.host_state(params, assignment, prompts={"offset": offset}), tx)
  kwargs = {} if label_smoothing is None else {"label_smoothing": label_smoothing}
  step = jax.jit(steps.make_train_step(_LinearProbe(), tx, schedules, **kwargs))

  w = torch.tensor(w0, requires_grad=True)
  opt = torch.optim.SGD([w], lr=0.5, momentum=0.9, weight_decay=0.01)
  sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
  accuracies = []
  for i in range(2):
    logits = torch.tensor(x) @ w + torch.tensor(b0) + torch.tensor(offset)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels, dtype=torch.long),
                                             label_smoothing=label_smoothing or 0.0)
    opt.zero_grad()
    loss.backward()
    expected = {"train/loss": loss.item(),
                "train/accuracy": 100.0 * float(np.mean(logits.argmax(-1).numpy() == labels)),
                "train/grad_norm": w.grad.norm().item(), "train/lr/head": opt.param_groups[0]["lr"]}
    opt.step()
    sched.step()
    expected["train/param_norm"] = w.detach().norm().item()
    state, metrics = step(state, {"video": x, "label": labels})
    assert set(metrics) == set(expected)
    for key, value in expected.items():
      np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-5, err_msg=f"step {i}: {key}")
    np.testing.assert_allclose(state["params"]["w"], w.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert int(state["step"]) == i + 1
    accuracies.append(float(metrics["train/accuracy"]))
  np.testing.assert_array_equal(state["frozen"]["b"], b0)
  np.testing.assert_array_equal(state["prompts"]["offset"], offset)
  assert 0.0 < accuracies[0] < 100.0  # the data can tell a wrong accuracy from a right one


def test_cross_entropy_by_hand():
  """Mean over clips of -sum(targets * log_softmax), targets (1 - e) one-hot + e / C, by hand on
  two clips of three classes: logits log([1, 1, 2]) (p = 1/4, 1/4, 1/2) and zeros (p = 1/3)."""
  logits = np.log(np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]], np.float32))
  labels = np.array([2, 0])
  plain = (-np.log(0.5) - np.log(1 / 3)) / 2
  assert float(steps.cross_entropy(logits, labels)) == pytest.approx(plain, rel=1e-6)
  e = 0.3  # targets: (0.1, 0.1, 0.8) and (0.8, 0.1, 0.1)
  smoothed = (-(0.1 * np.log(0.25) + 0.1 * np.log(0.25) + 0.8 * np.log(0.5)) - np.log(1 / 3)) / 2
  assert float(steps.cross_entropy(logits, labels, e)) == pytest.approx(smoothed, rel=1e-6)  # planted e not e/C: 2%
