"""Evaluate a model on a test list or TFDS split: WAR, UAR, per-class recall, confusion matrix.

The model can come from a training workdir (its best or latest checkpoint), from an exported or
converted model directory (``model.json`` + ``variables/``), or straight from an official
DFER-CLIP ``.pth``. Variables are restored onto the current mesh, whatever mesh trained them.
Test-time options: the official single centred clip, or multi-clip averaging
(``--config.eval_num_clips=K``: K temporal offsets, softmax probabilities averaged).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from dferclip_jax import distributed, export, inference, metrics as metrics_lib, official, plots
from dferclip_jax import storage
from dferclip_jax.models.dferclip import model_from_kwargs
from dferclip_jax.train import checkpointing, data_setup, reporting
from dferclip_jax.train import sharding as sharding_lib


def evaluate_batches(eval_step, variables, batches, mesh, num_classes: int, progress: bool = True,
                     desc: str = "eval", text_features=None) -> tuple[np.ndarray, float, dict]:
  """Runs a jitted ``eval_step`` over host-local padded batches -> (confusion matrix, mean loss,
  calibration: ``metrics.calibration_report``'s ECE / NLL / Brier and the reliability bins).

  ``text_features``: the classes' text features, computed once by the caller for the whole pass
  (``inference.jit_class_text_features``); None makes every batch compute them again.
  """
  totals = jax.device_put(inference.empty_eval_totals(num_classes), sharding_lib.replicated(mesh))
  bar = reporting.progress_bar(desc, progress, "batch")
  for local in batches:
    batch = sharding_lib.global_batch({k: local[k] for k in ("video", "label", "mask")}, mesh)
    totals = eval_step(variables, batch, totals, text_features)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  totals = jax.device_get(totals)
  cm = np.rint(totals["confusion"]).astype(np.int64)
  loss = float(totals["loss_sum"]) / max(int(cm.sum()), 1)
  calibration = metrics_lib.calibration_report(np.asarray(totals["calibration"], np.float64), loss,
                                               float(totals["brier_sum"]))
  return cm, loss, calibration


def collect_outputs(fn, variables, batches, mesh, num_examples: int) -> np.ndarray:
  """Runs jitted ``fn(variables, video) -> [b, ...]`` over padded batches; returns the outputs of
  the real clips on every host, in source order ([num_examples, ...])."""
  from jax.experimental import multihost_utils
  out = None
  for local in batches:
    batch = sharding_lib.global_batch({"video": local["video"], "index": local["index"]}, mesh)
    values, index = multihost_utils.process_allgather((fn(variables, batch["video"]), batch["index"]),
                                                      tiled=True)
    values, index = np.asarray(values), np.asarray(index)
    if out is None:
      out = np.zeros((num_examples,) + values.shape[1:], values.dtype)
    keep = index >= 0
    out[index[keep]] = values[keep]
  if out is None:
    raise ValueError("no batches to evaluate")
  return out


def load_model_for_eval(checkpoint: str | int, workdir: str | Path | None, mesh, min_shard_size: int,
                        **overrides):
  """-> (model, variables, class names or None, a description of the source).

  ``checkpoint``: "best" or "latest" of ``workdir``'s run, a step number of it, a model directory,
  or an official .pth. The variables are laid out on ``mesh``, or are host numpy arrays when
  ``mesh`` is None (training places them itself).
  """
  shardings = None if mesh is None else (
      lambda tree: sharding_lib.tree_shardings(tree, mesh, min_shard_size))
  checkpoint = str(checkpoint)
  path = storage.path(checkpoint)
  if checkpoint in ("best", "latest") or checkpoint.isdigit():
    if workdir is None:
      raise ValueError(f"--checkpoint={checkpoint} needs --workdir (the training run's directory)")
    workdir = storage.path(workdir)
    if not (workdir / "checkpoints").is_dir():
      raise checkpointing.CheckpointNotFoundError(
          f"--checkpoint={checkpoint}: {workdir} holds no checkpoints/ folder (is --workdir a training "
          f"run's directory?); --checkpoint also takes a model directory or an official .pth")
    card = export.read_model_card_file(workdir / export.MODEL_FILE)
    manager = checkpointing.Checkpointer(workdir / "checkpoints", "eval/uar", asynchronous=False)
    try:
      step = manager.resolve(checkpoint)
      variables = manager.restore_variables(step, shardings)
    finally:
      manager.close()
    if mesh is None:
      variables = jax.tree.map(np.asarray, jax.device_get(variables))
    model = model_from_kwargs(card["model"], **overrides)
    return model, variables, card.get("class_names") or None, f"{workdir} step {step} ({checkpoint})"
  if not path.exists():
    raise checkpointing.CheckpointNotFoundError(
        f"--checkpoint={checkpoint}: no such file or folder (expected best, latest, a step number of "
        f"--workdir's run, a model directory or an official .pth)")
  if path.suffix == ".pth":
    model, variables = official.load_checkpoint(path)
    model = model.clone(**overrides)
    if shardings is not None:
      variables = sharding_lib.put_global(variables, shardings(variables))
    return model, variables, None, f"official {path}"
  model, variables, card = export.load_model(path, shardings=shardings, **overrides)
  return model, variables, card.get("class_names") or None, str(path)


def check_class_names(model_names, config_names, source: str) -> None:
  """A model meets only the class order it was trained with."""
  if model_names is not None and list(model_names) != list(config_names):
    raise ValueError(f"{source} was trained with classes {list(model_names)}, but the config says "
                     f"{list(config_names)}: a permuted or different order would mislabel every clip")


def run_evaluation(config, workdir: str | Path, checkpoint: str = "best", out_name: str | None = None) -> dict:
  """Evaluates ``checkpoint`` (best | latest | model dir | official .pth) on the config's test data."""
  import jax.numpy as jnp
  mesh = sharding_lib.make_mesh(config.mesh, num_devices=config.num_devices)
  model, variables, names, source = load_model_for_eval(
      checkpoint, workdir, mesh, config.shard_min_size, dtype=jnp.dtype(config.dtype))
  check_class_names(names, config.class_names, source)
  return evaluate_model(config, workdir, model, variables, source, out_name or _slug(checkpoint), mesh)


def run_zeroshot(config, workdir: str | Path) -> dict:
  """Zero-shot CLIP (no training) on the config's test data: the baseline."""
  import jax.numpy as jnp
  from dferclip_jax.models.zeroshot import build_zeroshot
  from dferclip_jax.train import model_setup
  if not config.model.clip:
    raise ValueError("zero-shot needs pretrained CLIP weights: set config.model.clip (a hub id or a "
                     "local Hugging Face CLIP directory)")
  mesh = sharding_lib.make_mesh(config.mesh, num_devices=config.num_devices)
  texts = model_setup.load_class_texts(config)
  clip_config, clip_params, tokenizer = model_setup.clip_and_tokenizer(config, texts, None)
  model, variables = build_zeroshot(clip_config, clip_params, texts, tokenizer,
                                    template=config.zeroshot_template,
                                    num_frames=config.data.num_frames, dtype=jnp.dtype(config.dtype))
  variables = sharding_lib.put_global(
      variables, sharding_lib.tree_shardings(variables, mesh, config.shard_min_size))
  return evaluate_model(config, workdir, model, variables, f"zero-shot {config.model.clip}",
                        "zeroshot", mesh)


def evaluate_model(config, workdir, model, variables, source: str, out_name: str, mesh) -> dict:
  """Runs ``model`` over the test data; writes ``workdir/evaluation/<out_name>/{report.json,
  confusion_matrix.png}``, prints the table, returns the report."""
  workdir = storage.path(workdir)
  local_batch = sharding_lib.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
  if model.num_classes != len(config.class_names):
    raise ValueError(f"{source} has {model.num_classes} classes, the config {len(config.class_names)}")
  data = data_setup.open_test_data(config, workdir)
  image_size = model.clip_config.vision_config.image_size
  eval_step = jax.jit(inference.make_eval_step(model, model.num_classes))
  text_features = inference.jit_class_text_features(model)(variables)
  cm, loss, calibration = evaluate_batches(
      eval_step, variables, data.eval_batches(local_batch, image_size, config.eval_num_clips),
      mesh, model.num_classes, config.progress_bars, text_features=text_features)
  report = {**metrics_lib.classification_report(cm, config.class_names), "loss": loss, **calibration,
            "checkpoint": source, "num_clips_per_video": config.eval_num_clips,
            "skipped_clips": data.skipped_report()}
  if distributed.is_writer():
    out = workdir / "evaluation" / out_name
    out.mkdir(parents=True, exist_ok=True)
    reporting.write_json(out / "report.json", report)
    plots.save_confusion_matrix(cm, config.class_names, out / "confusion_matrix.png",
                                title=f"UAR {report['uar']:.2f}, WAR {report['war']:.2f}")
    plots.save_reliability_diagram(calibration["reliability"], out / "reliability.png",
                                   title=f"ECE {report['ece']:.2f}, NLL {report['nll']:.3f}")
    report["output_dir"] = str(out)
  rows = [("model", source), ("clips", str(report["num_clips"])),
          ("UAR", f"{report['uar']:.2f}"), ("WAR", f"{report['war']:.2f}"),
          ("ECE", f"{report['ece']:.2f}"), ("NLL", f"{report['nll']:.4f}"), ("Brier", f"{report['brier']:.4f}")]
  rows += [(f"recall {k}", "n/a" if v is None else f"{v:.2f}") for k, v in report["recall"].items()]
  print(reporting.log_table("evaluation", rows))
  return report


def _slug(checkpoint: str) -> str:
  if checkpoint in ("best", "latest"):
    return checkpoint
  if checkpoint.isdigit():
    return f"step_{checkpoint}"
  return storage.path(checkpoint).name.replace(".", "_") or "model"
