"""Training parity with the official code: from the official fixture checkpoint, the project's
train step (official recipe's param groups, SGD, momentum, weight decay) reproduces the losses
the official ``main.py`` optimizer logged over 4 full-batch steps. Each loss after the first
depends on the previous steps' gradients, so this checks the backward pass too: through the
text tower on its shortest end-of-text prefix, the towers' last blocks evaluated at their pooled
positions only, and the patch embedding as a matmul."""

import json

import jax
import numpy as np

from configs import common as config_common
from dferclip_jax import official
from dferclip_jax.models.dferclip import DFERCLIP
from dferclip_jax.train import optimizer
from dferclip_jax.train import state as state_lib
from dferclip_jax.train import train_step as steps

LOSS_RTOL = 1e-4


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
