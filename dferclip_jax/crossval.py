"""K-fold cross-validation as the papers report it: one training run per fold, each in its own
resumable sub-workdir, then per-fold and mean +- std UAR/WAR of each fold's best checkpoint, of
its final one, and of the one best on the test set (``test_selected``, as the official code
reports). With ``config.data.val_fraction > 0`` "best" is chosen on each fold's validation set,
so "best" and "test_selected" differ; with 0 they are the same checkpoint.

The per-fold config is the config file called with ``fold=k``, with the command line's
``--config.*`` overrides applied again, so that every fold follows the same recipe.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dferclip_jax import distributed, storage
from dferclip_jax.data import datasets
from dferclip_jax.train import reporting, workdir_lock

RESULTS_FILE = "crossval_results.json"


def load_config_file(spec: str):
  """``path/to/config.py[:args]`` -> its ``get_config(args)``."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_crossval_config", path)
  if module_spec is None or not Path(path).is_file():  # local: ml_collections loads config files from local disk
    raise FileNotFoundError(f"{path}: no such config file")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def fold_config(config_file: str, fold: int, overrides: Mapping[str, Any]):
  """The config of one fold: the file's ``get_config('fold=k')`` plus the same overrides."""
  path, _, arg = config_file.partition(":")
  args = [a for a in arg.split(",") if a and not a.strip().startswith("fold=")]
  if fold:
    args.append(f"fold={fold}")
  config = load_config_file(f"{path}:{','.join(args)}")
  for dotted, value in overrides.items():
    if dotted == "fold":
      continue  # the fold is what this command varies
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def folds_of(dataset: str) -> list[int]:
  """config.fold values of ``dataset``: 1..num_folds, or [0] for a single split."""
  return [fold or 0 for fold in datasets.get(dataset).folds()]


SELECTIONS = ("best", "final", "test_selected")


def selection_figures(results: Mapping[str, Any]) -> dict:
  """A run's results.json -> {selection: {uar, war, step}} for each of SELECTIONS."""
  # Runs from before "test_selected" existed chose "best" on the test set.
  chosen = {**results, "test_selected": results.get("test_selected") or results["best"]}
  return {which: {k: chosen[which][k] for k in ("uar", "war", "step")} for which in SELECTIONS}


def summarize(per_fold: Sequence[dict]) -> dict:
  """Mean, population std (ddof 0) and values over the folds, per selection and metric."""
  out = {}
  for which in SELECTIONS:
    for metric in ("uar", "war"):
      values = np.array([f[which][metric] for f in per_fold], np.float64)
      out[f"{which}/{metric}"] = {"mean": float(values.mean()), "std": float(values.std()),
                                  "values": values.tolist()}
  return out


def run_crossval(config_file: str, overrides: Mapping[str, Any], workdir: str | Path,
                 folds: Sequence[int] | None, train_fn: Callable) -> dict:
  """Trains every fold (``train_fn(config, workdir) -> summary``), skipping finished ones."""
  workdir = storage.path(workdir)
  base = load_config_file(config_file)
  folds = list(folds) if folds else folds_of(base.dataset)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock.WorkdirLock(workdir):  # each fold's run also locks its own sub-workdir
    return _run_folds(config_file, overrides, workdir, folds, train_fn)


def _run_folds(config_file, overrides, workdir: Path, folds: Sequence[int], train_fn: Callable) -> dict:
  per_fold = []
  for fold in folds:
    fold_dir = workdir / (f"fold_{fold}" if fold else "split")
    summary = reporting.finished_results(fold_dir)
    if summary is None:
      summary = train_fn(fold_config(config_file, fold, overrides), fold_dir)
    per_fold.append({"fold": fold, "workdir": str(fold_dir), **selection_figures(summary)})
  results = {"config": config_file, "folds": per_fold, "summary": summarize(per_fold)}
  if distributed.is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(workdir / RESULTS_FILE, results)
  rows = [(f"fold {f['fold']}", f"best UAR {f['best']['uar']:.2f}  WAR {f['best']['war']:.2f}   "
                                f"final UAR {f['final']['uar']:.2f}  WAR {f['final']['war']:.2f}")
          for f in per_fold]
  s = results["summary"]
  for which in SELECTIONS:
    rows.append((f"mean +- std, {which}",
                 f"UAR {s[f'{which}/uar']['mean']:.2f} +- {s[f'{which}/uar']['std']:.2f}  "
                 f"WAR {s[f'{which}/war']['mean']:.2f} +- {s[f'{which}/war']['std']:.2f}"))
  print(reporting.log_table("cross-validation", rows))
  return results
