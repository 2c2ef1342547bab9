"""The pure function the training loop jits: the loss and one SGD step over the train state
(``state.py``: trainable ``params``, ``frozen`` params, ``prompts``, ``opt``, ``step``).
Gradients are taken with respect to the trainable params alone, so the frozen text tower costs no
weight-gradient work and holds no optimizer state. Evaluation's step is in ``inference.py``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from dferclip_jax.models.param_tree import merge_params
from dferclip_jax.train.optimizer import global_norm


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy; smoothing as torch's: (1 - e) * one_hot + e / C."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def make_train_step(model, tx: optax.GradientTransformation, schedules: Mapping[str, Callable],
                    label_smoothing: float = 0.0):

  def train_step(state, batch):
    def loss_fn(trainable):
      variables = {"params": merge_params(trainable, state["frozen"]), "prompts": state["prompts"]}
      logits = model.apply(variables, batch["video"], train=True)
      return cross_entropy(logits, batch["label"], label_smoothing), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "train/loss": loss,
        "train/accuracy": 100.0 * jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "train/grad_norm": global_norm(grads),
        "train/param_norm": global_norm(params),
    }
    metrics.update({f"train/lr/{g}": fn(state["step"]) for g, fn in schedules.items()})
    new_state = {**state, "params": params, "opt": opt, "step": state["step"] + 1}
    return new_state, metrics

  return train_step
