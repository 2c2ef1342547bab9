"""The open-set protocol of HESP over all splits of a dataset: train on the known classes, score
the known and the unknown test clips, report ACC / AUROC / OSCR per split and mean +- std.

Methods (``config.openset.method``):
  * ``hesp``: the HESP method (``openset/hesp.py``), scored by its ensemble logits (the max is
    the known-ness score, as its code);
  * ``dferclip_msp``: DFER-CLIP trained on the known classes (the closed-set trainer), scored by
    the maximum softmax probability;
  * ``zeroshot_clip``: CLIP with class prompts and no training, scored by the maximum softmax.

Clips (``config.openset.clips``): the config's annotation lists (``data_lists``), or HESP's own
MAFW lists (``hesp_mafw``, ``openset/hesp_lists.py``). ``config.openset.class_words``: HESP's
class words (Angry, Happy, ...) or the config's class names in HESP's prompts.
``config.hesp.official=True`` reproduces HESP's official code where it departs from its method
(docs/openset.md lists each point with the official file and line).

Each split runs in ``workdir/split_XX`` (resumable; a finished split is not run again);
``metrics.jsonl`` gets one line per split (``split``, ``known``, ``openset/acc``,
``openset/auroc``, ``openset/oscr``, and with ``hesp.official`` ``openset/auroc_official``,
``openset/oscr_official``), ``openset_results.json`` the per-split numbers and their mean +- std,
which are also printed as a table; ``paper_table.md`` / ``paper_table.json`` the open-set table
(``paper_table``: our final model beside HESP's own figure and its published numbers).
"""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dferclip_jax import class_texts as class_texts_lib, distributed
from dferclip_jax import evaluation, metrics, storage
from dferclip_jax.data import datasets, pipeline
from dferclip_jax.openset import hesp_lists
from dferclip_jax.openset import splits as splits_lib
from dferclip_jax.train import config_checks, data_setup, model_setup, reporting, trainer, workdir_lock
from dferclip_jax.train import sharding as sharding_lib
from dferclip_jax.tokenizer import tokenize

METHODS = ("hesp", "dferclip_msp", "zeroshot_clip")
CLIPS = ("data_lists", "hesp_mafw")
CLASS_WORDS = ("hesp", "names")
RESULTS_FILE = "openset_results.json"
SCORES = ("openset/acc", "openset/auroc", "openset/oscr")
# HESP's own AUROC (a tie counts 0) and OSCR (its off-by-one), reported with hesp.official=True.
OFFICIAL_SCORES = ("openset/auroc_official", "openset/oscr_official")


def open_set_scores(known_scores, unknown_scores, known_labels, use_softmax: bool,
                    official: bool = False) -> dict:
  """Per-class scores [N, K] of known and unknown test clips -> ACC, AUROC, OSCR (percent);
  ``official`` adds HESP's own AUROC and OSCR (``OFFICIAL_SCORES``)."""
  if use_softmax:  # log-probabilities: the same order as the softmax, without its saturation ties
    known_scores = metrics.log_softmax_scores(known_scores)
    unknown_scores = metrics.log_softmax_scores(unknown_scores)
  known_scores, unknown_scores = np.asarray(known_scores), np.asarray(unknown_scores)
  labels = np.asarray(known_labels)
  out = {"openset/acc": float(100.0 * np.mean(known_scores.argmax(1) == labels)),
         "openset/auroc": metrics.auroc(known_scores.max(1), unknown_scores.max(1)),
         "openset/oscr": metrics.oscr(known_scores, unknown_scores, labels)}
  if official:
    out["openset/auroc_official"] = metrics.auroc_hesp(known_scores.max(1), unknown_scores.max(1))
    out["openset/oscr_official"] = metrics.oscr_hesp(known_scores, unknown_scores, labels)
  return out


def _score(fn, variables, source, image_size, num_frames, batch, mesh, short_clips="edge"):
  batches = pipeline.eval_batches(source, batch_size=batch, image_size=image_size,
                                  num_frames=num_frames, process_index=jax.process_index(),
                                  process_count=jax.process_count(), short_clips=short_clips)
  return evaluation.collect_outputs(fn, variables, batches, mesh, len(source))


def _evaluate(fn, variables, data: splits_lib.OpenSetData, image_size, num_frames, batch, mesh,
              use_softmax, official: bool = False) -> dict:
  short = "first" if official else "edge"
  known = _score(fn, variables, data.test_known, image_size, num_frames, batch, mesh, short)
  unknown = _score(fn, variables, data.test_unknown, image_size, num_frames, batch, mesh, short)
  return open_set_scores(known, unknown, data.test_known.labels, use_softmax, official)


def prompt_words(config, known_names) -> tuple[str, ...]:
  """The class words of HESP's prompts; word ``i`` is paired with label ``i``.

  ``config.openset.class_words``: "hesp" (HESP's words, ``hesp_lists.class_words``) or "names".
  With ``config.hesp.official`` the words are sorted alphabetically, as the official code sorts
  its ``classes_names`` (HESP_main.py:181-182) while its labels follow the sorted class indices
  (datasets/dataset_MAFW.py:39, 57): where the two orders differ, prompt i is trained against
  the label of another class. Otherwise they follow the labels.
  """
  words = (hesp_lists.class_words(known_names) if config.openset.class_words == "hesp"
           else tuple(known_names))
  return tuple(sorted(words)) if config.hesp.official else words


def hesp_prompt_texts(config, known_names) -> tuple[list[str], list[str]]:
  """(class texts after the contexts, "This video is not <word>." texts), in label order."""
  from dferclip_jax.openset import hesp
  words = prompt_words(config, known_names)
  return [hesp.class_prompt_text(w) for w in words], [hesp.UNKNOWN_TEMPLATE.format(w) for w in words]


def known_texts(config, known_names) -> list[str]:
  texts = class_texts_lib.load(config.model.text_type, len(config.class_names), config.model.class_texts_file)
  return [texts[list(config.class_names).index(n)] for n in known_names]


# ----------------------------------------------------------------------------- methods


def run_hesp(config, workdir: Path, data, mesh) -> dict:
  from dferclip_jax.openset import hesp, hesp_train
  h = config.hesp
  if h.official:  # the official loader's frame order: plain string sort (docs/openset.md)
    data = splits_lib.string_frame_order(data)
  rng = jax.random.PRNGKey(config.seed)
  words = prompt_words(config, data.known_names)
  clip_config, clip_params, tokenizer = model_setup.clip_and_tokenizer(
      config, sum(hesp_prompt_texts(config, data.known_names), []), rng)
  model, variables = hesp.build_hesp(clip_config, clip_params, words, tokenizer, rng=rng,
                                     n_ctx=h.n_ctx, patch_size=h.patch_size, num_frames=h.num_frames,
                                     dtype=jnp.dtype(config.dtype))
  size = clip_config.vision_config.image_size
  first = next(pipeline.eval_batches(data.train, batch_size=1, image_size=size, num_frames=1))
  names, _ = tokenize(tokenizer, list(words), clip_config.text_config.max_position_embeddings)
  variables["patch"]["position"] = hesp.attention_peak(clip_config, clip_params, first["video"][0, 0],
                                                       names, jax.random.fold_in(rng, 1),
                                                       official=h.official)
  logging.info("HESP patch position (row, col): %s", variables["patch"]["position"].tolist())
  scores_fn = jax.jit(lambda v, x: model.apply(v, x)["logits"])
  batch = sharding_lib.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")

  # HESP keeps the epoch with the best AUROC + OSCR on the test clips (HESP_main.py:264-267), by
  # its own AUROC and OSCR where the run reproduces its code.
  select = OFFICIAL_SCORES if h.official else ("openset/auroc", "openset/oscr")

  def on_eval(step, v):
    scores = _evaluate(scores_fn, v, data, size, h.num_frames, batch, mesh, use_softmax=False,
                       official=h.official)
    return {**scores, "select": sum(scores[k] for k in select)}

  final = hesp_train.train_hesp(config, workdir, model, variables, data.train, mesh, on_eval)
  return {**on_eval(None, final), "patch_position": variables["patch"]["position"].tolist(),
          "prompt_words": list(words), "test_selected": test_selected(workdir)}


def test_selected(workdir: Path) -> dict:
  """HESP's own figure: the evaluation with the best AUROC + OSCR on the test clips (selection on
  test data, so optimistic; we report the final model and keep this for comparison)."""
  evals = [r for r in reporting.read_metrics(workdir) if "select" in r]
  best = max(evals, key=lambda r: r["select"])
  return {"step": best["step"], **{k: best[k] for k in SCORES + OFFICIAL_SCORES if k in best}}


def run_dferclip_msp(config, workdir: Path, data, mesh) -> dict:
  c = copy.deepcopy(config)
  texts_file = workdir / "known_class_texts.txt"
  if distributed.is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
    storage.write_text_atomic(texts_file, "\n".join(known_texts(config, data.known_names)) + "\n")
  distributed.barrier(f"{texts_file} written")  # whole before any host reads it
  with c.unlocked():
    c.class_names = tuple(data.known_names)
    c.model.class_texts_file = str(texts_file)
  bundle = data_setup.DataBundle(data.train, data.test_known, len(data.train), len(data.test_known),
                                 c.data.augmentation, c.data.num_frames, c.seed)
  trainer.train_and_evaluate(c, workdir, data=bundle)
  model, variables, _, _ = evaluation.load_model_for_eval("latest", workdir, mesh, c.shard_min_size)
  fn = jax.jit(lambda v, x: model.apply(v, x))
  batch = sharding_lib.check_batch_size(c.eval_batch_size, mesh, "config.eval_batch_size")
  return _evaluate(fn, variables, data, model.clip_config.vision_config.image_size, c.data.num_frames,
                   batch, mesh, use_softmax=True)


def run_zeroshot_clip(config, workdir: Path, data, mesh) -> dict:
  from dferclip_jax.models.zeroshot import build_zeroshot
  if not config.model.clip:
    raise config_checks.ConfigError(
        "config.openset.method='zeroshot_clip' needs pretrained CLIP weights: set config.model.clip")
  texts = known_texts(config, data.known_names)
  clip_config, clip_params, tokenizer = model_setup.clip_and_tokenizer(config, texts, None)
  model, variables = build_zeroshot(clip_config, clip_params, texts, tokenizer,
                                    template=config.zeroshot_template, num_frames=config.data.num_frames,
                                    dtype=jnp.dtype(config.dtype))
  fn = jax.jit(lambda v, x: model.apply(v, x))
  batch = sharding_lib.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
  return _evaluate(fn, variables, data, clip_config.vision_config.image_size, config.data.num_frames,
                   batch, mesh, use_softmax=True)


# ----------------------------------------------------------------------------- the protocol


def _stats(values) -> dict:
  values = np.array(values, np.float64)
  return {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}


def hesp_figure_sources(per_split: list[dict]) -> dict | None:
  """HESP's own figure of each metric -> the ``test_selected`` key it is read from: the epoch
  with the best AUROC + OSCR on the test clips (HESP_main.py:264-266, returned at :276), in
  HESP's own AUROC and OSCR where the splits have them (``hesp.official``; its ACC is the exact
  closed-set accuracy, core/test.py:112), else in ours. None without ``test_selected``."""
  if not per_split or not all(s.get("test_selected") for s in per_split):
    return None
  official = all(k in s["test_selected"] for s in per_split for k in OFFICIAL_SCORES)
  return {"openset/acc": "openset/acc",
          "openset/auroc": "openset/auroc_official" if official else "openset/auroc",
          "openset/oscr": "openset/oscr_official" if official else "openset/oscr"}


def summarize(per_split: list[dict]) -> dict:
  """Mean, population std (ddof 0) and values over the splits of each score, of the
  test-selected epoch's (``test_selected/...``) and of HESP's own figure (``hesp_figure/...``,
  ``hesp_figure_sources``)."""
  keys = [k for k in SCORES + OFFICIAL_SCORES if all(k in s for s in per_split)]
  out = {key: _stats([s[key] for s in per_split]) for key in keys}
  if all("test_selected" in s for s in per_split):
    out.update({f"test_selected/{key}": _stats([s["test_selected"][key] for s in per_split])
                for key in keys if all(key in s["test_selected"] for s in per_split)})
  figure = hesp_figure_sources(per_split)
  if figure:
    out.update({f"hesp_figure/{key}": _stats([s["test_selected"][source] for s in per_split])
                for key, source in figure.items()})
  return out


# ----------------------------------------------------------------------------- the paper table

PAPER_TABLE = "paper_table"  # WORKDIR/paper_table.md and .json
# HESP's own published numbers: its README (at 37b1bed) reports none, and the paper's result
# tables (arXiv 2404.17100, ACM MM 2024) were not available to read while this was written;
# its abstract gives only relative gains over CLIP. Nothing is filled in that was not read.
PUBLISHED = {"source": "HESP (Liu et al., ACM MM 2024, arXiv 2404.17100); the official README "
                       "(github cosinehuang/HESP at 37b1bed) reports no numbers",
             "numbers": "not found",
             "note": "the paper's abstract states only relative gains over CLIP (17.93% on "
                     "AUROC, 106.18% on OSCR), not the figures themselves"}


def paper_table(results: dict) -> dict:
  """The open-set table of a run (``run_openset``'s results): ACC / AUROC / OSCR mean +- std over
  the splits run, of our final model in the exact metrics, and HESP's own figure (the
  test-selected epoch, in HESP's metrics with ``hesp.official``) beside it, and HESP's published
  numbers (``PUBLISHED``)."""
  s = results["summary"]
  per_split = results["splits"]
  row = lambda prefix: {k: {"mean": s[prefix + k]["mean"], "std": s[prefix + k]["std"]} for k in SCORES}
  rows = [{"name": "ours: final model, exact metrics", **row("")}]
  figure = hesp_figure_sources(per_split)
  if figure:
    metrics = "HESP's metrics" if figure["openset/auroc"].endswith("_official") else "exact metrics"
    rows.append({"name": f"HESP's figure: best epoch on the test clips, {metrics}",
                 **row("hesp_figure/")})
  return {"dataset": results["dataset"], "method": results["method"],
          "splits": [r["split"] for r in per_split], "std": "population std (ddof 0)",
          "rows": rows, "published": PUBLISHED}


def paper_table_markdown(table: dict) -> str:
  cell = lambda v: f"{v['mean']:.2f} ± {v['std']:.2f}"
  lines = [f"# Open set: {table['method']} on {table['dataset']}, splits "
           f"{', '.join(str(k) for k in table['splits'])} (mean ± std over the splits, "
           f"{table['std']})", "",
           "| | ACC | AUROC | OSCR |", "|---|---|---|---|"]
  lines += [f"| {r['name']} | " + " | ".join(cell(r[k]) for k in SCORES) + " |" for r in table["rows"]]
  p = table["published"]
  lines.append(f"| HESP published | {p['numbers']} | {p['numbers']} | {p['numbers']} |")
  lines += ["", f"HESP published: {p['source']}; {p['note']}.", ""]
  return "\n".join(lines)


def use_hesp_mafw_lists(config, workdir: Path):
  """A copy of ``config`` whose annotation lists are HESP's MAFW clips resolved under
  ``config.data.root`` (written to ``workdir/hesp_mafw_lists/``)."""
  o = config.openset
  if o.hesp_dataset.upper() != "MAFW":
    raise config_checks.ConfigError(
        f"config.openset.clips='hesp_mafw' needs config.openset.hesp_dataset='MAFW', not "
        f"{o.hesp_dataset!r} (HESP ships lists for MAFW only)")
  if config.data.source != "lists" or datasets.get(config.dataset).generated or not config.data.root:
    raise config_checks.ConfigError(
        "config.openset.clips='hesp_mafw' resolves HESP's MAFW clip ids under config.data.root: "
        "set it to the MAFW root (data/frames/<id> as published, or HESP's frames/Train|Val/...)")
  try:
    lists = hesp_lists.write_lists(config.data.root, workdir / "hesp_mafw_lists", config.class_names)
  except ValueError as err:
    raise config_checks.ConfigError(f"config.openset.clips='hesp_mafw': {err}") from None
  c = copy.deepcopy(config)
  with c.unlocked():
    c.data.train_list, c.data.test_list = lists["train"], lists["test"]
  return c


def run_openset(config, workdir: str | Path) -> dict:
  workdir = storage.path(workdir)
  o = config.openset
  if o.method not in METHODS:
    raise config_checks.ConfigError(f"config.openset.method={o.method!r}: expected one of {METHODS}")
  if o.clips not in CLIPS:
    raise config_checks.ConfigError(f"config.openset.clips={o.clips!r}: expected one of {CLIPS}")
  if o.class_words not in CLASS_WORDS:
    raise config_checks.ConfigError(
        f"config.openset.class_words={o.class_words!r}: expected one of {CLASS_WORDS}")
  if config.init_checkpoint and o.method != "dferclip_msp":  # the others build their own models
    raise config_checks.ConfigError(
        f"config.init_checkpoint is set, but config.openset.method={o.method!r} does not start from "
        "a checkpoint (only 'dferclip_msp', which trains DFER-CLIP, does)")
  if config.data.source != "lists":  # splitting by class needs the clips' labels up front
    raise config_checks.ConfigError(
        f"config.data.source={config.data.source!r}: open-set runs read annotation lists "
        "(config.data.source='lists'); TFDS sources are not split by class")
  config_checks.check_config(config)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock.WorkdirLock(workdir):  # a dferclip_msp split's training also locks its own
    return _run_splits(config, workdir)


def _finished_split(path: Path) -> dict | None:
  """A finished split's ``openset.json``, or None: absent, or unreadable (cut short by a full
  disk, edited by hand), which runs the split again."""
  try:
    result = storage.read_json(path)
  except ValueError as e:
    logging.warning("%s cannot be read (%s): running the split again", path, e)
    return None
  return result if isinstance(result, dict) and all(k in result for k in SCORES) else None


def _run_splits(config, workdir: Path) -> dict:
  o = config.openset
  if o.clips == "hesp_mafw":
    config = use_hesp_mafw_lists(config, workdir)
  table = splits_lib.load_splits(o.hesp_dataset)
  indices = list(o.splits) or list(range(len(table)))
  mesh = sharding_lib.make_mesh(config.mesh, num_devices=config.num_devices)
  full = data_setup.open_data(config, workdir)
  per_split = []
  writer = reporting.MetricWriter(workdir, resume_step=10 ** 9, tensorboard=False)
  logged = {r.get("split") for r in reporting.read_metrics(workdir)}
  for k in indices:
    known = splits_lib.known_class_names(o.hesp_dataset, k)
    data = splits_lib.split_sources(full.train_source, full.test_source, config.class_names, known)
    sub = workdir / f"split_{k:02d}"
    done = sub / "openset.json"
    result = _finished_split(done)
    if result is None:
      logging.info("split %d: known classes %s (%d train, %d known test, %d unknown test clips)",
                   k, known, len(data.train), len(data.test_known), len(data.test_unknown))
      run = {"hesp": run_hesp, "dferclip_msp": run_dferclip_msp, "zeroshot_clip": run_zeroshot_clip}
      result = {"split": k, "known": list(known), "method": o.method,
                **run[o.method](config, sub, data, mesh)}
      result.pop("select", None)
      if distributed.is_writer():
        sub.mkdir(parents=True, exist_ok=True)
        reporting.write_json(done, result)
    if k not in logged:
      writer.write(k, {key: result[key] for key in SCORES + OFFICIAL_SCORES if key in result},
                   {"split": k, "known": result["known"], "method": o.method})
    per_split.append(result)
  writer.close()
  results = {"method": o.method, "dataset": o.hesp_dataset, "splits": per_split,
             "summary": summarize(per_split)}
  table = paper_table(results)
  if distributed.is_writer():
    reporting.write_json(workdir / RESULTS_FILE, results)
    reporting.write_json(workdir / f"{PAPER_TABLE}.json", table)
    storage.write_text_atomic(workdir / f"{PAPER_TABLE}.md", paper_table_markdown(table))
  s = results["summary"]
  rows = [(f"split {r['split']:2d} {'+'.join(n[:4] for n in r['known'])}",
           f"ACC {r['openset/acc']:6.2f}  AUROC {r['openset/auroc']:6.2f}  OSCR {r['openset/oscr']:6.2f}")
          for r in per_split]
  rows.append(("mean +- std", "  ".join(f"{k.split('/')[1].upper()} {s[k]['mean']:.2f} +- {s[k]['std']:.2f}"
                                         for k in SCORES)))
  if all(k in s for k in OFFICIAL_SCORES):
    rows.append(("HESP's metrics", "  ".join(
        f"{k.split('/')[1].upper()} {s[k]['mean']:.2f} +- {s[k]['std']:.2f}" for k in OFFICIAL_SCORES)))
  if "test_selected/openset/auroc" in s:  # HESP's own figure, selected on the test clips
    rows.append(("best epoch on test", "  ".join(
        f"{k.split('/')[1].upper()} {s['test_selected/' + k]['mean']:.2f} +- {s['test_selected/' + k]['std']:.2f}"
        for k in SCORES)))
  if "test_selected/openset/auroc_official" in s:  # what the official code prints: that epoch, its metrics
    rows.append(("best epoch, HESP's metrics", "  ".join(
        f"{k.split('/')[1].upper()} {s['hesp_figure/' + k]['mean']:.2f} +- {s['hesp_figure/' + k]['std']:.2f}"
        for k in SCORES)))
  print(reporting.log_table(f"open set ({o.method}, {o.hesp_dataset})", rows))
  return results
