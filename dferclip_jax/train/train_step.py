"""The pure functions the training loop jits: loss, one SGD step, one evaluation step.

State is a plain dict: ``params`` (trainable only), ``frozen`` (the rest of the params),
``prompts`` (the prompt token ids collection), ``opt`` (optax state over ``params``), ``step``
and ``rng``. Gradients are taken with respect to the trainable params alone, so the frozen text
tower costs no weight-gradient work and holds no optimizer state.
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


def variables_of(state) -> dict:
  """The model's variables from a train state (params merged back with the frozen ones)."""
  return {"params": merge_params(state["params"], state["frozen"]), "prompts": state["prompts"]}


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


def class_text_features(model, variables):
  """The classes' text features [C, D] (``DFERCLIP.encode_prompts``)."""
  return model.apply(variables, method=model.encode_prompts)


def clip_probabilities(model, variables, video, text_features=None):
  """Class probabilities [N, C]; video [N, T, H, W, 3] or [N, K, T, H, W, 3] (K temporal clips,
  whose softmax probabilities are averaged: multi-clip test-time evaluation). ``text_features``:
  ``class_text_features``' output where the caller has it (else computed here)."""
  apply = lambda x: model.apply(variables, x, text_features=text_features)
  if video.ndim == 6:
    n, k = video.shape[:2]
    logits = apply(video.reshape((n * k,) + video.shape[2:]))
    return jax.nn.softmax(logits.astype(jnp.float32), -1).reshape(n, k, -1).mean(axis=1)
  return jax.nn.softmax(apply(video).astype(jnp.float32), -1)


def make_eval_step(model, num_classes: int):
  """``eval_step(variables, batch, totals, text_features=None) -> totals``: accumulates a confusion
  matrix and the summed loss over masked (padded) batches.

  The class text features depend on the variables alone: an evaluation computes them once
  (``class_text_features``) and passes them to every batch's step; None computes them here.
  """

  def eval_step(variables, batch, totals, text_features=None):
    probs = clip_probabilities(model, variables, batch["video"], text_features)
    mask = batch["mask"].astype(jnp.float32)
    predictions = jnp.argmax(probs, -1)
    truth = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32) * mask[:, None]
    cm = totals["confusion"] + jnp.einsum("nt,np->tp", truth,
                                          jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32))
    nll = -jnp.log(jnp.clip(jnp.take_along_axis(probs, batch["label"][:, None], -1)[:, 0], 1e-12))
    return {"confusion": cm, "loss_sum": totals["loss_sum"] + jnp.sum(nll * mask)}

  return eval_step


def empty_eval_totals(num_classes: int):
  return {"confusion": jnp.zeros((num_classes, num_classes), jnp.float32),
          "loss_sum": jnp.zeros((), jnp.float32)}
