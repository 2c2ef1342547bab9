"""The training job: one readable ``train_and_evaluate`` in commented sections.

mesh -> data -> model -> param groups and optimizer -> shardings -> state born sharded (or
restored from the latest checkpoint, onto this mesh) -> jitted, donated train step -> loop with
logging, evaluation each epoch, checkpoints -> final report.

A run killed at any moment and started again with the same command resumes from its latest
checkpoint: params, optimizer state, step and data position (the input pipeline is a pure
function of the seed and the step), and ends with the same metrics as an uninterrupted run.
The train state and the every-step NaN check are ``state.py``'s, shared with HESP's loop.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import logging

from dferclip_jax import distributed, evaluation, inference, metrics as metrics_lib
from dferclip_jax import calibration, plots, storage
from dferclip_jax.data import fingerprint as fingerprint_lib
from dferclip_jax.train import checkpointing, config_checks, data_setup, model_setup, optimizer, reporting
from dferclip_jax.train import init_checkpoint, preemption, workdir_lock
from dferclip_jax.train import sharding as sharding_lib
from dferclip_jax.train import state as state_lib
from dferclip_jax.train import train_step as steps


def train_and_evaluate(config, workdir: str | Path, data: data_setup.DataBundle | None = None) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns the final
  evaluation report (a finished run's, unchanged, when it is run again). ``data`` replaces what
  the config's data section would open (the open-set experiments pass the known-class clips).
  SIGTERM/SIGINT stop it at the same step on every process, after a save there: ``Preempted``."""
  workdir = storage.path(workdir)
  config_checks.check_config(config)  # every bad value fails here, before anything is written
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock.WorkdirLock(workdir):  # before anything is written into it
    return _train_locked(config, workdir, data)


def _train_locked(config, workdir: Path, data) -> dict:
  # ---------------------------------------------------------------------- mesh
  checkpointing.clean_stale_tmp_checkpoints(workdir / "checkpoints")
  mesh = sharding_lib.make_mesh(config.mesh, num_devices=config.num_devices)
  local_batch = sharding_lib.check_batch_size(config.batch_size, mesh, "config.batch_size")
  local_eval_batch = sharding_lib.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
  logging.info("mesh %s over %d devices (%d hosts)", dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # ---------------------------------------------------------------------- input
  data = data or data_setup.open_data(config, workdir)
  steps_per_epoch, total_steps = state_lib.training_length(
      data.num_train, config.batch_size, config.num_epochs, config.max_steps, "config.batch_size")
  eval_every = max(1, config.eval_every_epochs) * steps_per_epoch
  logging.info("%d training clips, %d validation clips, %d test clips; %d steps per epoch, %d steps",
               data.num_train, data.num_val, data.num_test, steps_per_epoch, total_steps)
  if config.data.val_fraction > 0 and data.val_source is None:
    raise config_checks.ConfigError("config.data.val_fraction > 0, but this job supplies its own data "
                                    "without a validation set: set it to 0")
  selection = "val" if data.val_source is not None else "eval"  # where "best" is chosen
  finished = _finished_results(workdir, total_steps)
  if finished is not None:
    logging.info("%s is a finished run (step %d of %d, results.json): nothing to train; its final "
                 "test UAR %.2f, WAR %.2f", workdir, finished["steps"], total_steps,
                 finished["final"]["uar"], finished["final"]["war"])
    return finished

  fingerprint = _fingerprint(data, config)  # before training: an unreadable first frame fails now

  # ---------------------------------------------------------------------- model
  if config.init_checkpoint:  # a trained model's architecture and weights (fine-tuning)
    bundle = init_checkpoint.build_model(config, rng=jax.random.PRNGKey(config.seed))
  else:
    bundle = model_setup.build_model(config, rng=jax.random.PRNGKey(config.seed))
  model, variables = bundle.model, bundle.variables
  model_setup.write_model_card(workdir, bundle, config)
  image_size = model.clip_config.vision_config.image_size

  # ---------------------------------------------------------------------- param groups, optimizer
  assignment, tx, schedules = optimizer.grouped_optimizer(variables["params"], config.optim, steps_per_epoch)
  _log_groups(assignment, variables["params"])

  # ---------------------------------------------------------------------- shardings, state
  host_state = state_lib.host_state(variables["params"], assignment, prompts=variables["prompts"])
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", config.best_metric)
  state, state_shardings, start_step, meta = state_lib.init_or_restore(
      host_state, tx, mesh, config.shard_min_size, checkpointer)
  if meta is not None:
    _check_resume(meta, config, start_step)
    data.restore_read_skipped(meta.get("read_skipped"))
    logging.info("resumed from step %d (epoch %.2f)", start_step, start_step / steps_per_epoch)
  else:
    meta = {"best": None}
  del variables, host_state
  sharded = sharding_lib.describe_sharding(state["params"])
  if sharded:
    logging.info("fsdp-sharded params: %d (e.g. %s)", len(sharded), next(iter(sharded.items())))

  batch_sharding = sharding_lib.batch_sharding(mesh)
  train_step = jax.jit(steps.make_train_step(model, tx, schedules, config.label_smoothing),
                       in_shardings=(state_shardings, batch_sharding),
                       out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                       donate_argnums=(0,))
  eval_step = jax.jit(inference.make_eval_step(model, bundle.num_classes))
  encode_texts = inference.jit_class_text_features(model)

  writer = reporting.MetricWriter(workdir, resume_step=start_step)
  best = meta.get("best")
  test_selected = meta.get("test_selected", best)
  metric_name = config.best_metric.split("/", 1)[1]  # uar | war

  def evaluate_split(step: int, split: str, prefix: str, record: bool = True) -> dict:
    variables = state_lib.variables_of(state, {"prompts": state["prompts"]})
    cm, loss, calibration = evaluation.evaluate_batches(
        eval_step, variables,
        data.eval_batches(local_eval_batch, image_size, config.eval_num_clips, split=split),
        mesh, bundle.num_classes, config.progress_bars, desc=prefix,
        text_features=encode_texts(variables))  # once per evaluation: constant over its batches
    report = {**metrics_lib.classification_report(cm, bundle.class_names), **calibration}
    scalars = {f"{prefix}/uar": report["uar"], f"{prefix}/war": report["war"], f"{prefix}/loss": loss}
    scalars.update({f"{prefix}/{k}": report[k] for k in ("ece", "nll", "brier") if report[k] is not None})
    scalars.update({f"{prefix}/recall/{name}": r for name, r in report["recall"].items()})
    if record:  # False: an evaluation the metrics already hold, redone after a resume
      writer.write(step, scalars, {f"{prefix}/confusion_matrix": report["confusion_matrix"],
                                   "epoch": step / steps_per_epoch})
    logging.info("step %d %s: UAR %.2f WAR %.2f loss %.4f", step, prefix, report["uar"], report["war"],
                 loss)
    return {**report, "loss": loss, "step": step}

  def run_eval(step: int, record: bool = True) -> dict:
    """The test report, with the validation one under "val" when there is a validation set."""
    report = evaluate_split(step, "test", "eval", record)
    if record:
      _write_eval_files(workdir, report, bundle.class_names, step, suffix="")
    if selection == "val":
      report["val"] = evaluate_split(step, "val", "val", record)
    return report

  # ---------------------------------------------------------------------- training loop
  batches = data.train_batches(local_batch, image_size, start_step)
  bar = reporting.progress_bar("train", config.progress_bars, "step", total_steps, start_step)
  step_metrics = state_lib.StepMetrics(writer, config.log_every, also_log=(1,))
  last_eval = None
  step = start_step
  stop = preemption.StopSignals(config.preemption_timeout_s)
  with stop:
    try:
      while step < total_steps:
        local = next(batches)
        batch = sharding_lib.global_batch({"video": local["video"], "label": local["label"]}, mesh)
        state, metrics = train_step(state, batch)
        step += 1
        step_metrics.add(step, metrics)  # checks (and logs) the step before: no pipeline stall
        if bar is not None:
          bar.update(1)
        is_eval = step % eval_every == 0 or step == total_steps
        saves = is_eval or step % config.checkpoint_every == 0
        if saves:
          step_metrics.flush()  # this step's state is evaluated or saved only if its loss is finite
        if is_eval:
          last_eval = run_eval(step)
          value = (last_eval["val"] if selection == "val" else last_eval)[metric_name]
          if checkpointing.is_better(value, step, best):
            best = _selected(f"{selection}/{metric_name}", value, step, last_eval,
                             "val" if selection == "val" else "test")
            _write_eval_files(workdir, last_eval, bundle.class_names, step, suffix="_best")
          if checkpointing.is_better(last_eval[metric_name], step, test_selected):
            test_selected = _selected(f"eval/{metric_name}", last_eval[metric_name], step, last_eval,
                                      "test")
          checkpointer.save(step, state, _meta(step, steps_per_epoch, best, test_selected, data, config),
                            metrics={config.best_metric: value})
        elif saves:
          checkpointer.save(step, state, _meta(step, steps_per_epoch, best, test_selected, data, config))
        if stop.should_stop(step):  # the same step on every process
          step_metrics.flush()  # logs this step; a NaN state is never saved
          if not saves:
            checkpointer.save(step, state, _meta(step, steps_per_epoch, best, test_selected, data, config))
          checkpointer.wait()
          raise preemption.Preempted(step, workdir)
      step_metrics.flush()
      if last_eval is None:  # resumed after the final evaluation: the metrics hold it already
        last_eval = run_eval(step, record=False)
    finally:
      if bar is not None:
        bar.close()
      checkpointer.close()
      writer.close()
  scaling = None
  if selection == "val":  # a validation set to fit a temperature on, without touching the test set
    scaling = _temperature_scaling(model, state_lib.variables_of(state, {"prompts": state["prompts"]}),
                                   data, encode_texts, local_eval_batch, image_size, config, mesh)
    logging.info("temperature scaling: T = %.3f (fitted on val); test ECE %.2f -> %.2f, NLL %.4f -> %.4f",
                 scaling["temperature"], scaling["test"]["raw"]["ece"], scaling["test"]["scaled"]["ece"],
                 scaling["test"]["raw"]["nll"], scaling["test"]["scaled"]["nll"])
  # "best" is what --checkpoint=best restores (chosen on the validation set when there is one);
  # "test_selected" is the best on the test set, the official code's figure, named for what it is.
  summary = {"final": {k: last_eval.get(k) for k in ("uar", "war", "loss", "step", "recall", "ece", "nll", "brier")},
             "best": best, "test_selected": test_selected, "steps": step,
             "steps_per_epoch": steps_per_epoch, "complete": step >= total_steps,
             "num_clips": {"train": data.num_train, "val": data.num_val, "test": data.num_test},
             "data_fingerprint": fingerprint,
             "temperature_scaling": scaling,
             "skipped_clips": data.skipped_report()}
  if distributed.is_writer():
    reporting.write_json(workdir / reporting.RESULTS_FILE, summary)
  distributed.barrier(f"{workdir} finished")  # what follows (crossval, openset) may read its files
  reporting.log_table("final evaluation", [("UAR", f"{last_eval['uar']:.2f}"),
                                           ("WAR", f"{last_eval['war']:.2f}"),
                                           ("best " + best["metric"], f"{best['value']:.2f} "
                                            f"(step {best['step']}: test UAR {best['uar']:.2f})")])
  return summary


# ------------------------------------------------------------------------ helpers


def _finished_results(workdir: Path, total_steps: int) -> dict | None:
  """results.json of a run that has trained all ``total_steps``, or None. One that cannot be read
  (cut short by a full disk, edited by hand) counts as absent: the run resumes from its latest
  checkpoint and writes it again."""
  try:
    results = reporting.read_results(workdir)
  except ValueError as e:
    logging.warning("%s cannot be read (%s): resuming from the latest checkpoint to write it again",
                    workdir / reporting.RESULTS_FILE, e)
    return None
  if isinstance(results, dict) and results.get("complete") and results.get("steps") == total_steps:
    return results
  return None


def _temperature_scaling(model, variables, data, encode_texts, local_batch, image_size, config, mesh):
  """The final state's temperature, fitted on the validation split (calibration.py): both splits'
  ECE / NLL / Brier, raw and scaled. Clips skipped when read are left out."""
  text_features = encode_texts(variables)
  logits_fn = jax.jit(lambda v, x: inference.clip_logits(model, v, x, text_features))
  splits = {}
  for split, source in (("val", data.val_source), ("test", data.test_source)):
    logits = evaluation.collect_outputs(
        logits_fn, variables, data.eval_batches(local_batch, image_size, config.eval_num_clips, split=split),
        mesh, len(source))
    keep = np.setdiff1d(np.arange(len(source)), np.fromiter(data.read_skipped[split], int))
    splits[split] = (logits[keep], np.asarray(source.labels)[keep])
  return calibration.temperature_scaling(*splits["val"], *splits["test"])


def _fingerprint(data, config) -> dict | None:
  """What data the run saw, the code and the config (data/fingerprint.py); the writer's only."""
  if not distributed.is_writer():
    return None
  splits = data.fingerprint()
  logging.info("data fingerprint:\n%s", fingerprint_lib.format_fingerprint(splits))
  return {"splits": splits, "commit": fingerprint_lib.source_commit(),
          "config_sha256": fingerprint_lib.config_sha256(config)}


def _selected(metric: str, value: float, step: int, report: dict, selected_on: str) -> dict:
  """A selected evaluation: the selection metric's value and the test UAR/WAR at that step."""
  return {"metric": metric, "value": value, "step": step, "uar": report["uar"], "war": report["war"],
          "ece": report.get("ece"), "nll": report.get("nll"), "brier": report.get("brier"),
          "selected_on": selected_on}


def _meta(step, steps_per_epoch, best, test_selected, data, config) -> dict:
  return {"step": step, "epoch": step / steps_per_epoch, "best": best, "test_selected": test_selected,
          "data": {"next_step": step, "seed": config.seed, "batch_size": config.batch_size,
                   "val_fraction": config.data.val_fraction},
          # Training clips skipped when read so far: a resumed run must skip them too.
          "read_skipped": {str(k): v for k, v in data.read_skipped["train"].items()},
          "steps_per_epoch": steps_per_epoch}


def _check_resume(meta: dict, config, step: int) -> None:
  """The data position must follow the same recipe, or the resumed run would see other batches."""
  data = meta.get("data", {})
  for key, now in (("seed", config.seed), ("batch_size", config.batch_size),
                   ("val_fraction", config.data.val_fraction)):
    if key in data and data[key] != now:
      raise ValueError(f"the checkpoint at step {step} was made with {key}={data[key]}, but the "
                       f"config now says {now}: use a new --workdir for a different recipe")


def _write_eval_files(workdir: Path, report: dict, class_names, step: int, suffix: str) -> None:
  if not distributed.is_writer():
    return
  cm = np.asarray(report["confusion_matrix"])
  plots.save_confusion_matrix(cm, class_names, workdir / f"confusion_matrix{suffix}.png",
                              title=f"step {step}: UAR {report['uar']:.2f}, WAR {report['war']:.2f}")
  if report.get("reliability"):
    plots.save_reliability_diagram(report["reliability"], workdir / f"reliability{suffix}.png",
                                   title=f"step {step}: ECE {report['ece']:.2f}, NLL {report['nll']:.3f}")
  reporting.write_json(workdir / f"eval{suffix}.json", {**report, "step": step})


def _log_groups(assignment, params) -> None:
  from flax import traverse_util
  flat = traverse_util.flatten_dict(params)
  counts: dict[str, int] = {}
  for path, group in assignment.items():
    counts[group] = counts.get(group, 0) + int(np.prod(np.shape(flat[path])))
  for group, count in sorted(counts.items()):
    logging.info("param group %-15s %12d parameters", group, count)
