"""Training HESP on one split's known classes (the official ``core/train.py``, as pure steps).

Loss per batch, as the official code sums it: CE of the CLIP head + supervised contrastive loss
on the video features + the ARPL-style open-set loss + CE of the unknown visual prompts against
"This video is not <class>." + CE of the ensemble. Updates, as the official code makes them:

* the visual patch ("perturbation") moves only by a normalised-gradient step,
  ``p -= step * g / ||g||`` (the official code zeroes its gradient before the optimizer step);
* the unknown visual prompts move by that step, with ``g`` averaged over the K prompts and applied
  to each, and then by SGD with the same gradient;
* the radius by SGD; the class contexts by SGD at ``hesp.lr_context`` (see docs/openset.md: the
  official code's ``prompt.zero_grad()`` before ``optimizer.step()``, core/train.py:175-177,
  clears their gradients too, so they never learn there; ``hesp.official=True`` reproduces that).

With ``hesp.official=True`` training also reads clips shorter than ``hesp.num_frames`` as frame 0
repeated and resizes each frame to the model's size before the random sized crop, as the
official loader does (``sampling``'s ``short_clips="first"``, ``augment``'s "hesp"), and runs
the official loader's epochs: ``ceil(N / batch_size)`` steps, the last batch partial
(``pipeline``'s ``epoch_batches``: padded to the batch size, so every step has one shape on the
mesh, and masked: each loss term is its value over the real clips alone, ``loss_parts``).

SGD is PyTorch's (momentum 0.9, weight decay 1e-4 added to the gradient), the learning rate
x0.1 at epochs 30, 60, 90, 120. The param groups, the train state (CLIP frozen: no gradient, no
optimizer state), its checkpoints and the every-step NaN check are the closed-set trainer's
(``optimizer.grouped_optimizer``, ``train/state.py``).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from dferclip_jax.data import pipeline
from dferclip_jax.models import param_tree
from dferclip_jax.openset import losses
from dferclip_jax.train import checkpointing, optimizer as optimizer_lib, preemption, reporting
from dferclip_jax.train import sharding as sharding_lib
from dferclip_jax.train import state as state_lib

# The trainable groups; the params in none (CLIP) are frozen.
GROUPS = {"context": "prompt_learner/.*", "unknown": "(unknown_visual|radius)",
          "perturbation": "perturbation"}


def optim_config(h) -> ml_collections.ConfigDict:
  """HESP's ``config.optim``: its groups and their SGD (the perturbation moves only by the
  normalised step, so its learning rate is 0)."""
  return ml_collections.ConfigDict(dict(
      name="sgd", momentum=h.momentum, weight_decay=h.weight_decay, milestones=tuple(h.milestones),
      gamma=0.1, groups=GROUPS,
      lr={"context": 0.0 if h.official else h.lr_context, "unknown": h.lr, "perturbation": 0.0}))


def normalized_step(param, grad, size: float):
  return param - size * grad / (jnp.linalg.norm(grad.reshape(-1)) + 1e-10)


def training_length(config, num_train: int) -> tuple[int, int]:
  """-> (steps per epoch, total steps). With ``hesp.official``, the official loader's epochs:
  ``DataLoader(batch_size, shuffle=True)`` keeps its partial last batch (drop_last=False), so an
  epoch is ``ceil(N / batch_size)`` steps and MultiStepLR's milestone epochs fall at multiples of
  that. Otherwise the closed-set trainer's: full batches only."""
  h = config.hesp
  if not h.official:
    return state_lib.training_length(num_train, h.batch_size, h.epochs, config.max_steps,
                                     "config.hesp.batch_size")
  steps_per_epoch = -(-num_train // h.batch_size)
  total = h.epochs * steps_per_epoch
  return steps_per_epoch, total if config.max_steps is None else min(total, int(config.max_steps))


def loss_parts(out, labels, h, mask=None) -> dict:
  """The official loss terms of one batch (``mask``: False for padding clips, left out)."""
  ce = losses.cross_entropy
  return {
      "clip": ce(out["clip_logits"], labels, mask),
      "contrastive": losses.supervised_contrastive_loss(
          out["visual"], labels, temperature=h.contrastive_temperature, mask=mask),
      "open_set": losses.arpl_loss(out["osr_logits"], out["visual"], out["points"], labels,
                                   out["radius"], temperature=h.temperature, weight_pl=h.weight_pl,
                                   mask=mask),
      "unknown_prompts": ce(out["unknown_logits"], jnp.arange(out["unknown_logits"].shape[0])),
      "ensemble": ce(out["logits"], labels, mask),
  }


def make_train_step(model, tx, h):
  def train_step(state, batch):
    mask = batch.get("mask")  # only the official partial-batch epochs carry one

    def loss_fn(trainable):
      variables = {"params": param_tree.merge_params(trainable, state["frozen"]), **state["collections"]}
      out = model.apply(variables, batch["video"], train=True)
      parts = loss_parts(out, batch["label"], h, mask)
      return sum(parts.values()), (parts, out["logits"])

    (loss, (parts, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    params = dict(state["params"])
    params["perturbation"] = normalized_step(params["perturbation"], grads["perturbation"],
                                             h.normalized_step)
    params["unknown_visual"] = normalized_step(params["unknown_visual"],
                                               grads["unknown_visual"].mean(axis=0), h.normalized_step)
    updates, opt = tx.update(grads, state["opt"], params)
    params = optax.apply_updates(params, updates)
    metrics = {"train/loss": loss, **{f"train/loss/{k}": v for k, v in parts.items()},
               "train/accuracy": 100.0 * losses.masked_mean(
                   (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32), mask),
               "train/grad_norm": optimizer_lib.global_norm(grads),
               "train/param_norm": optimizer_lib.global_norm(params),
               "train/radius": params["radius"]}
    return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, metrics

  return train_step


def train_hesp(config, workdir: Path, model, variables, train_source, mesh, on_eval=None):
  """Trains (resuming from ``workdir/checkpoints``) -> the final variables (on the mesh).

  ``on_eval(step, variables)`` is called every ``hesp.eval_every_epochs`` epochs and at the end;
  it returns metrics to log, and the value of ``metrics["select"]`` picks the best checkpoint.
  """
  h = config.hesp
  local_batch = sharding_lib.check_batch_size(h.batch_size, mesh, "config.hesp.batch_size")
  steps_per_epoch, total = training_length(config, len(train_source))
  assignment, tx, _ = optimizer_lib.grouped_optimizer(variables["params"], optim_config(h), steps_per_epoch)
  host = state_lib.host_state(variables["params"], assignment,
                              collections={k: v for k, v in variables.items() if k != "params"})
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", "select")
  state, shardings, start, _ = state_lib.init_or_restore(host, tx, mesh, config.shard_min_size, checkpointer)
  step_fn = jax.jit(make_train_step(model, tx, h),
                    in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
                    out_shardings=(shardings, sharding_lib.replicated(mesh)), donate_argnums=(0,))
  writer = reporting.MetricWriter(workdir, resume_step=start, tensorboard=False)
  batches = pipeline.train_batches(
      train_source, augmentation="hesp" if h.official else config.data.augmentation,
      batch_size=local_batch, image_size=model.clip_config.vision_config.image_size,
      num_frames=h.num_frames, seed=config.seed, start_step=start,
      process_index=jax.process_index(), process_count=jax.process_count(),
      short_clips="first" if h.official else "edge", epoch_batches=h.official)
  eval_every = max(1, h.eval_every_epochs) * steps_per_epoch
  variables_of = lambda s: state_lib.variables_of(s, s["collections"])
  step_metrics = state_lib.StepMetrics(writer, config.log_every, also_log=(total,))
  step = start
  with preemption.StopSignals(config.preemption_timeout_s) as stop:
    try:
      while step < total:
        local = next(batches)
        fed = {k: local[k] for k in ("video", "label", "mask") if k in local}
        state, metrics = step_fn(state, sharding_lib.global_batch(fed, mesh))
        step += 1
        step_metrics.add(step, metrics)  # checks (and logs) the step before
        is_eval = step % eval_every == 0 or step == total
        if is_eval:
          step_metrics.flush()  # this step's state is evaluated and saved only if its loss is finite
          scores = on_eval(step, variables_of(state)) if on_eval else {}
          writer.write(step, scores)
          checkpointer.save(step, state, {"step": step},
                            metrics={"select": float(scores.get("select", 0.0))})
        if stop.should_stop(step):  # the same step on every process: save there, then stop
          step_metrics.flush()
          if not is_eval:
            checkpointer.save(step, state, {"step": step})
          checkpointer.wait()
          raise preemption.Preempted(step, workdir)
      step_metrics.flush()
    finally:
      checkpointer.close()
      writer.close()
  logging.info("HESP trained %d steps in %s", step, workdir)
  return variables_of(state)
