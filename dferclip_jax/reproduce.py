"""DFER-CLIP's table in one command (``--mode=reproduce``): DFEW folds 1-5, FERV39k, MAFW folds
1-5, each trained with the config's backbone and recipe, then one table of mean +- std UAR/WAR
beside the published figures.

* Each run lives in ``WORKDIR/<dataset>/fold_<k>`` (FERV39k, one split: ``fold_0``, as its
  ``config.fold``). A run is the ordinary trainer's: resumable after a kill or a preemption, and
  a finished one (``results.json`` ``complete``) is read, not trained again.
* The data: ``--<dataset>_root`` per dataset. A root in its publisher's layout (docs/datasets.md)
  gets its lists prepared once into ``WORKDIR/<dataset>/lists`` (``cli.prepare``, with its
  report and fingerprint); any other root is the one the default lists
  (``annotations/<dataset>/...``, ``cli.prepare --out``) are relative to.
* The table, ``WORKDIR/paper_table.md`` and ``paper_table.json``, covers every finished run
  under WORKDIR, whichever invocation trained it: a SLURM array can train one run per task
  (README "Reproducing the paper's table") and any task, or a last one, writes the whole table.
  Per dataset and selection (``test_selected``: the checkpoint best on the test set, the papers'
  protocol; ``best``: chosen on the validation split when ``config.data.val_fraction > 0``, else
  the same as test_selected; ``final``: the last one) it gives mean +- std over the folds done
  (population std, ddof=0, as ``crossval``) and the difference to the published figure; then a
  row per run with the data it saw (``run_rows``: its fingerprint, short; whole in the JSON).

Only the dataset's own facts change between runs (``DATASET_KEYS``: its classes, fold, lists,
root, TFDS splits, and its DFER-CLIP augmentation unless ``--config.data.augmentation`` is given);
everything else is the config's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Mapping, Sequence

from absl import logging

from dferclip_jax import crossval, distributed, storage
from dferclip_jax.data import datasets, native
from dferclip_jax.data import fingerprint as fingerprint_lib
from dferclip_jax.train import config_checks, reporting

PROTOCOL = datasets.NATIVE  # the paper's table: the three published datasets, in its order
TABLE_MD, TABLE_JSON = "paper_table.md", "paper_table.json"
SELECTIONS = ("test_selected", "best", "final")  # the Markdown rows' order (crossval.SELECTIONS)
# The DFER-CLIP figures (UAR / WAR, %), ViT-B/32, from the performance table of the official
# repository's README (github.com/zengqunzhao/DFER-CLIP), as in the paper's Table 1.
PUBLISHED = {"dfew": {"uar": 59.61, "war": 71.25}, "ferv39k": {"uar": 41.27, "war": 51.65},
             "mafw": {"uar": 39.89, "war": 52.55}}
PUBLISHED_SOURCE = ("DFER-CLIP (Zhao & Patras, BMVC 2023), the official repository's performance "
                    "table, github.com/zengqunzhao/DFER-CLIP")
# Set per run from the dataset; a --config override of one of these would be silently replaced.
DATASET_KEYS = ("dataset", "fold", "class_names", "data.train_list", "data.test_list", "data.root",
                "data.tfds_name", "data.tfds_train_split", "data.tfds_test_split",
                "model.class_texts_file")
ROOT_FLAGS = {name: f"--{name}_root" for name in PROTOCOL}


class ReproduceError(ValueError):
  """A usage problem of --mode=reproduce (a dataset, a fold or a root); the message names it."""


def plan_runs(selected: Sequence[str], folds: Sequence[int]) -> list[tuple[str, int]]:
  """The (dataset, fold) runs: ``selected`` datasets (default: all of PROTOCOL, in its order) and
  ``folds`` of the multi-fold ones (default: all; FERV39k always runs its one split, fold 0)."""
  names = [n.strip().lower() for n in selected if n.strip()] or list(PROTOCOL)
  unknown = [n for n in names if n not in PROTOCOL]
  if unknown:
    raise ReproduceError(f"--datasets: {', '.join(unknown)} not in DFER-CLIP's table; expected some "
                         f"of {','.join(PROTOCOL)}")
  names = [n for n in PROTOCOL if n in names]  # the table's order, each once
  folded = [n for n in names if datasets.get(n).num_folds]
  for fold in folds:
    if fold == 0 and "ferv39k" in names:
      continue
    bad = [n for n in folded if not datasets.get(n).has_fold(fold)]
    if bad or not folded:
      have = "; ".join(f"{n} folds 1..{datasets.get(n).num_folds}" for n in folded) or "none"
      raise ReproduceError(f"--folds: fold {fold} is not a fold of {', '.join(bad or names)} "
                           f"({have}; FERV39k has one split, fold 0)")
  chosen = sorted(set(folds) - {0})  # --folds=0 alone: FERV39k's split only
  runs = []
  for name in names:
    d = datasets.get(name)
    if not d.num_folds:
      runs.append((name, 0))
    else:
      runs += [(name, f) for f in (chosen if folds else range(1, d.num_folds + 1))]
  return runs


def run_dir(workdir: Path, dataset: str, fold: int) -> Path:
  return workdir / dataset / f"fold_{fold}"


def check_overrides(overrides: Mapping[str, object]) -> None:
  """A --config override of a per-run dataset fact is refused (it would be replaced silently)."""
  clashing = sorted(k for k in overrides if k in DATASET_KEYS)
  if clashing:
    raise ReproduceError(
        f"--mode=reproduce sets {', '.join('--config.' + k for k in clashing)} itself for each "
        f"dataset and fold; drop {'it' if len(clashing) == 1 else 'them'} (data roots: "
        f"{', '.join(ROOT_FLAGS.values())}; --datasets and --folds choose the runs)")


def prepare_lists(workdir: Path, dataset: str, root: str) -> Path | None:
  """Lists for a root in its publisher's layout, written once to ``WORKDIR/<dataset>/lists``
  (every fold; read again on later invocations); None for a root the default lists point into."""
  if not native.is_native_layout(dataset, root):
    return None
  out = workdir / dataset / "lists"
  if (out / "report.json").is_file():
    return out
  from dferclip_jax.cli import prepare  # the lists, classes.txt, report and fingerprint of cli.prepare
  if distributed.is_writer():
    report = prepare.prepare(dataset, root, str(out), native.folds(dataset))
    logging.info("%s lists prepared in %s:\n%s", dataset, out, prepare.format_report(report, 20))
  distributed.barrier(f"{dataset} lists prepared")
  return out


def run_config(base, dataset: str, fold: int, root: str, lists: Path | None,
               overrides: Mapping[str, object]):
  """``base`` with the dataset's facts (DATASET_KEYS) set for one run."""
  d = datasets.get(dataset)
  split_fold = fold if d.num_folds else None
  c = copy.deepcopy(base)
  with c.unlocked():
    c.dataset, c.fold, c.class_names = dataset, fold, tuple(d.class_names)
    for split in ("train", "test"):
      name = datasets.list_file_name(split_fold, split)
      c.data[f"{split}_list"] = str(lists / name) if lists else d.default_list(split_fold, split)
      c.data[f"tfds_{split}_split"] = datasets.tfds_split(split_fold, split)
    c.data.root = str(root)
    c.data.tfds_name = None
    c.model.class_texts_file = None
    if "data.augmentation" not in overrides:
      c.data.augmentation = d.augmentation
  return c


def run_reproduce(base_config, workdir: str | Path, *, selected: Sequence[str] = (),
                  folds: Sequence[int] = (), roots: Mapping[str, str | None],
                  overrides: Mapping[str, object] = {}, train_fn: Callable) -> dict:
  """Trains the selected runs (``train_fn(config, run_workdir) -> results``) that are not
  finished, then writes and returns the table of every finished run under ``workdir``."""
  workdir = storage.path(workdir)
  runs = plan_runs(selected, folds)
  check_overrides(overrides)
  if base_config.data.source != "lists":
    raise ReproduceError(f"config.data.source={base_config.data.source!r}: --mode=reproduce reads "
                         "each dataset's annotation lists (config.data.source='lists')")
  missing = [ROOT_FLAGS[n] for n in dict.fromkeys(n for n, _ in runs) if not roots.get(n)]
  if missing:
    raise ReproduceError(f"--mode=reproduce needs {' and '.join(missing)}: the dataset root "
                         "(as its publisher ships it, or the root the default lists point into)")
  for name in dict.fromkeys(n for n, _ in runs):
    if not storage.path(roots[name]).is_dir():
      raise ReproduceError(f"{ROOT_FLAGS[name]}={roots[name]}: no such directory")
  workdir.mkdir(parents=True, exist_ok=True)
  lists = {n: prepare_lists(workdir, n, roots[n]) for n in dict.fromkeys(n for n, _ in runs)}
  expected = {}  # (dataset, fold) -> the config hash this command trains that run with
  for i, (name, fold) in enumerate(runs):
    where = run_dir(workdir, name, fold)
    config = run_config(base_config, name, fold, roots[name], lists[name], overrides)
    expected[name, fold] = fingerprint_lib.config_sha256(config)
    if reporting.finished_results(where) is not None:
      logging.info("run %d/%d, %s fold %d: finished, in %s", i + 1, len(runs), name, fold, where)
      continue
    logging.info("run %d/%d, %s fold %d: training in %s", i + 1, len(runs), name, fold, where)
    try:
      config_checks.check_config(config)
    except config_checks.ConfigError as err:
      raise ReproduceError(f"{name} fold {fold}: {err}") from None
    train_fn(config, where)
  table = collect(workdir, expected)
  if distributed.is_writer():
    storage.write_text_atomic(workdir / TABLE_MD, format_table(table))
    reporting.write_json(workdir / TABLE_JSON, table)
  print(format_table(table))
  return table


def collect(workdir: Path, expected: Mapping[tuple[str, int], str] = {}) -> dict:
  """The table's data: per dataset of PROTOCOL, every finished run under ``workdir``, its
  figures, their mean +- std per selection, and the differences to the published figures.
  ``expected``: (dataset, fold) -> this command's config hash; a finished run trained with
  another config (a changed recipe, same workdir) is listed in ``config_differs``."""
  table = {"protocol": "DFER-CLIP (BMVC 2023): DFEW folds 1-5, FERV39k, MAFW folds 1-5",
           "std": "population standard deviation over the folds done (ddof=0)",
           "published_source": PUBLISHED_SOURCE, "datasets": {}, "config_differs": []}
  for name in PROTOCOL:
    folds = crossval.folds_of(name)
    runs = []
    for fold in folds:
      results = reporting.finished_results(run_dir(workdir, name, fold))
      if results is None:
        continue
      fingerprint = results.get("data_fingerprint") or {}
      if (name, fold) in expected and fingerprint.get("config_sha256") != expected[name, fold]:
        table["config_differs"].append(f"{name} fold {fold}")
      runs.append({"fold": fold, "workdir": str(run_dir(workdir, name, fold)),
                   **crossval.selection_figures(results),
                   "data_fingerprint": fingerprint})
    entry = {"folds_done": [r["fold"] for r in runs], "folds_missing": [f for f in folds if
                                                                       f not in {r["fold"] for r in runs}],
             "runs": runs, "published": PUBLISHED[name], "summary": {}, "difference": {}}
    if runs:
      entry["summary"] = crossval.summarize(runs)
      entry["difference"] = {key: figure["mean"] - PUBLISHED[name][key.split("/")[1]]
                             for key, figure in entry["summary"].items()}
      commits = sorted({r["data_fingerprint"].get("commit") for r in runs} - {None})
      entry["commits"] = commits
    table["datasets"][name] = entry
  return table


def format_table(table: dict) -> str:
  """The table as Markdown: a row per dataset and selection, published figures beside."""
  lines = ["# DFER-CLIP, reproduced", "",
           f"{table['protocol']}. UAR / WAR in %, mean +- std ({table['std']}); the difference is "
           "the mean minus the published figure.", "",
           "| dataset | folds | selection | UAR | WAR | published UAR / WAR | difference UAR / WAR |",
           "|---|---|---|---|---|---|---|"]
  for name, entry in table["datasets"].items():
    total = len(entry["folds_done"]) + len(entry["folds_missing"])
    done = f"{len(entry['folds_done'])}/{total}"
    pub = entry["published"]
    published = f"{pub['uar']:.2f} / {pub['war']:.2f}"
    if not entry["runs"]:
      lines.append(f"| {name.upper()} | {done} | (no finished run) | | | {published} | |")
      continue
    for s in SELECTIONS:
      u, w = entry["summary"][f"{s}/uar"], entry["summary"][f"{s}/war"]
      du, dw = entry["difference"][f"{s}/uar"], entry["difference"][f"{s}/war"]
      lines.append(f"| {name.upper()} | {done} | {s} | {u['mean']:.2f} +- {u['std']:.2f} | "
                   f"{w['mean']:.2f} +- {w['std']:.2f} | {published} | {du:+.2f} / {dw:+.2f} |")
  lines += ["", "Selections: test_selected = the evaluation best on the test set (the papers' "
            "protocol, optimistic); best = chosen on the validation split when "
            "config.data.val_fraction > 0 (else the same as test_selected); final = the last "
            "checkpoint.", f"Published figures: {table['published_source']}."]
  missing = [f"{n} fold {f}" for n, e in table["datasets"].items() for f in e["folds_missing"]]
  if missing:
    lines.append(f"Not yet finished: {', '.join(missing)}.")
  if table["config_differs"]:
    lines.append(f"Trained with another config than this command's (a changed recipe in the same "
                 f"workdir; results.json's config_sha256): {', '.join(table['config_differs'])}.")
  return "\n".join(lines + run_rows(table)) + "\n"


def run_rows(table: dict) -> list[str]:
  """The runs behind the table, a row each: figures, and the data each saw (its fingerprint's
  clip and frame counts and the first 12 hex digits of its hashes), so that two labs can see at a
  glance whether their runs read the same clips."""
  runs = [(name, r) for name, entry in table["datasets"].items() for r in entry["runs"]]
  if not runs:
    return []
  lines = ["", "## Runs and the data they saw", "",
           "Per run: test_selected UAR / WAR, and per split the clips / frames and the first 12 hex "
           "digits of `list_sha256` / `first_frames_sha256` (in full in paper_table.json).", "",
           "| run | UAR / WAR | train | test | commit |", "|---|---|---|---|---|"]
  for name, r in runs:
    fingerprint = r["data_fingerprint"]
    splits = fingerprint.get("splits", {})
    t = r["test_selected"]
    lines.append(f"| {name} fold {r['fold']} | {t['uar']:.2f} / {t['war']:.2f} | "
                 f"{_split_cell(splits.get('train'))} | {_split_cell(splits.get('test'))} | "
                 f"{str(fingerprint.get('commit', '?'))[:12]} |")
  return lines


def _split_cell(split: dict | None) -> str:
  """One split's fingerprint, short: "clips / frames: list hash / first-frames hash"."""
  if not split:
    return "(not recorded)"
  hashes = [str(split[k])[:12] for k in ("list_sha256", "first_frames_sha256") if split.get(k)]
  if not hashes:  # a TFDS source records its clip count only
    return f"{split.get('clips', '?')} clips"
  return f"{split.get('clips', '?')} / {split.get('frames', '?')}: {' / '.join(hashes)}"
