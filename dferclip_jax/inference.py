"""The model at inference, as evaluation, prediction and the trainer's evaluations run it: the
classes' text features, class probabilities (multi-clip averaged), and the evaluation step that
accumulates a confusion matrix over masked batches."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dferclip_jax import metrics


def class_text_features(model, variables):
  """The classes' text features [C, D] (``DFERCLIP.encode_prompts``)."""
  return model.apply(variables, method=model.encode_prompts)


def jit_class_text_features(model):
  """``variables -> class_text_features(model, variables)``, jitted. The features depend on the
  variables alone: an evaluation or a prediction run computes them once, not per batch."""
  return jax.jit(functools.partial(class_text_features, model))


def clip_logits(model, variables, video, text_features=None):
  """Logits [N, C], or [N, K, C] for K temporal clips per video ([N, K, T, H, W, 3])."""
  apply = lambda x: model.apply(variables, x, text_features=text_features)
  if video.ndim == 6:
    n, k = video.shape[:2]
    return apply(video.reshape((n * k,) + video.shape[2:])).astype(jnp.float32).reshape(n, k, -1)
  return apply(video).astype(jnp.float32)


def clip_probabilities(model, variables, video, text_features=None):
  """Class probabilities [N, C]; video [N, T, H, W, 3] or [N, K, T, H, W, 3] (K temporal clips,
  whose softmax probabilities are averaged: multi-clip test-time evaluation). ``text_features``:
  ``class_text_features``' output where the caller has it (else computed here)."""
  probs = jax.nn.softmax(clip_logits(model, variables, video, text_features), -1)
  return probs.mean(axis=1) if probs.ndim == 3 else probs


def make_eval_step(model, num_classes: int):
  """``eval_step(variables, batch, totals, text_features=None) -> totals``: accumulates a confusion
  matrix and the summed loss over masked (padded) batches.

  The class text features depend on the variables alone: an evaluation computes them once
  (``jit_class_text_features``) and passes them to every batch's step; None computes them here.
  """

  def eval_step(variables, batch, totals, text_features=None):
    probs = clip_probabilities(model, variables, batch["video"], text_features)
    mask = batch["mask"].astype(jnp.float32)
    predictions = jnp.argmax(probs, -1)
    one_hot = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
    truth = one_hot * mask[:, None]
    cm = totals["confusion"] + jnp.einsum("nt,np->tp", truth,
                                          jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32))
    nll = -jnp.log(jnp.clip(jnp.take_along_axis(probs, batch["label"][:, None], -1)[:, 0], 1e-12))
    # Calibration: per equal-width bin of the top-class probability, the clips, their summed
    # confidence and their correct ones; and the summed Brier score.
    confidence = jnp.max(probs, -1)
    bins = jnp.minimum(jnp.floor(confidence * metrics.CALIBRATION_BINS), metrics.CALIBRATION_BINS - 1).astype(jnp.int32)
    in_bin = jax.nn.one_hot(bins, metrics.CALIBRATION_BINS, dtype=jnp.float32) * mask[:, None]
    correct = (predictions == batch["label"]).astype(jnp.float32)
    stats = jnp.stack([in_bin.sum(0), in_bin.T @ confidence, in_bin.T @ correct], -1)
    brier = jnp.sum(jnp.square(probs - one_hot), -1)
    return {"confusion": cm, "loss_sum": totals["loss_sum"] + jnp.sum(nll * mask),
            "calibration": totals["calibration"] + stats,
            "brier_sum": totals["brier_sum"] + jnp.sum(brier * mask)}

  return eval_step


def empty_eval_totals(num_classes: int):
  return {"confusion": jnp.zeros((num_classes, num_classes), jnp.float32),
          "loss_sum": jnp.zeros((), jnp.float32),
          "calibration": jnp.zeros((metrics.CALIBRATION_BINS, 3), jnp.float32),
          "brier_sum": jnp.zeros((), jnp.float32)}
