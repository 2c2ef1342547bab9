"""Config validation: every bad value is reported by its config path before anything compiles.

The mesh and batch divisibility are checked in ``sharding`` (they need the device count); the
annotation files' contents are checked line by line when the data is opened.
"""

from __future__ import annotations

from pathlib import Path

from dferclip_jax import storage
from dferclip_jax.class_texts import TEXT_TYPES
from dferclip_jax.data import annotations, datasets
from dferclip_jax.models.prompts import POSITIONS
from dferclip_jax.models.temporal import TEMPORAL_POOLINGS

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value that cannot work, named by its path."""


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def check_config(config) -> None:
  _require(config.dataset in datasets.DATASETS,
           f"config.dataset={config.dataset!r}: unknown dataset; expected one of {sorted(datasets.DATASETS)}")
  folds = datasets.get(config.dataset).num_folds
  if folds:
    _require(1 <= config.fold <= folds,
             f"config.fold={config.fold}: {config.dataset} has folds 1..{folds}")
  _require(len(config.class_names) >= 2, "config.class_names: at least two classes are needed")
  _require(len(set(config.class_names)) == len(config.class_names),
           f"config.class_names has duplicates: {list(config.class_names)}")

  d = config.data
  _require(d.source in ("lists", "tfds"), f"config.data.source={d.source!r}: expected 'lists' or 'tfds'")
  _require(d.on_bad_clip in ("error", "skip"),
           f"config.data.on_bad_clip={d.on_bad_clip!r}: expected 'error' or 'skip'")
  _require(d.duplicate_clips in annotations.DUPLICATE_CLIPS,
           f"config.data.duplicate_clips={d.duplicate_clips!r}: expected one of "
           f"{annotations.DUPLICATE_CLIPS} (a folder listed twice in one list)")
  _require(d.augmentation in datasets.AUGMENTATIONS,
           f"config.data.augmentation={d.augmentation!r}: expected one of {datasets.AUGMENTATIONS}")
  _require(d.num_frames >= 1, f"config.data.num_frames={d.num_frames}: must be at least 1")
  generated = datasets.get(config.dataset).generated
  if d.source == "lists" and (not generated or synthetic_uses_lists(config)):
    for field in ("train_list", "test_list"):
      value = d[field]
      _require(bool(value), f"config.data.{field} is empty: give the annotation list file")
      _require(storage.path(value).is_file(),
               f"config.data.{field}={value!r}: no such annotation file (make lists with "
               f"`python -m dferclip_jax.cli.prepare`, or point data.{field} at yours)")
    if d.root is not None:
      _require(storage.path(d.root).is_dir(), f"config.data.root={d.root!r}: no such directory")
  if d.source == "tfds":
    _require(bool(d.tfds_name), "config.data.tfds_name is unset, but config.data.source='tfds'")
  _require(0.0 <= d.val_fraction < 1.0,
           f"config.data.val_fraction={d.val_fraction}: expected a fraction in [0, 1) (0 = no validation "
           f"set: best is chosen on the test set, as the official code does)")
  _require(d.val_fraction == 0 or d.source == "lists",
           "config.data.val_fraction > 0 holds clips out of an annotation list: it needs "
           "config.data.source='lists'")

  m = config.model
  _require(m.class_token_position in POSITIONS,
           f"config.model.class_token_position={m.class_token_position!r}: expected one of {POSITIONS}")
  _require(m.text_type in TEXT_TYPES, f"config.model.text_type={m.text_type!r}: expected one of {TEXT_TYPES}")
  if m.class_texts_file:
    _require(storage.path(m.class_texts_file).is_file(),
             f"config.model.class_texts_file={m.class_texts_file!r}: no such file")
  _require(m.n_ctx >= 1, f"config.model.n_ctx={m.n_ctx}: must be at least 1")
  _require(m.temporal_layers >= 1, f"config.model.temporal_layers={m.temporal_layers}: must be >= 1")
  _require(m.temporal_pooling in TEMPORAL_POOLINGS,
           f"config.model.temporal_pooling={m.temporal_pooling!r}: expected one of {TEMPORAL_POOLINGS}")
  if not m.clip:
    _require(len(m.clip_arch) > 0, "config.model.clip is empty (random init) but config.model.clip_arch "
                                   "gives no architecture")

  _require(config.dtype in DTYPES, f"config.dtype={config.dtype!r}: expected one of {DTYPES}")
  for field in ("batch_size", "eval_batch_size", "num_epochs", "log_every", "checkpoint_every",
                "eval_every_epochs", "eval_num_clips"):
    _require(int(config[field]) >= 1, f"config.{field}={config[field]}: must be a positive integer")
  if "hesp" in config:  # the open-set section's counts and sizes (a 0 would divide or loop)
    for field in ("n_ctx", "patch_size", "num_frames", "batch_size", "epochs", "eval_every_epochs"):
      value = config.hesp[field]
      _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
               f"config.hesp.{field}={value!r}: must be a positive integer")
    _require(all(isinstance(m, int) and m >= 1 for m in config.hesp.milestones),
             f"config.hesp.milestones={tuple(config.hesp.milestones)}: must be epochs >= 1")
  if config.max_steps is not None:
    _require(config.max_steps >= 1, f"config.max_steps={config.max_steps}: must be positive (or unset)")
  _require(config.best_metric in ("eval/uar", "eval/war"),
           f"config.best_metric={config.best_metric!r}: expected 'eval/uar' or 'eval/war'")
  o = config.optim
  _require(set(o.lr.keys()) >= set(o.groups.keys()),
           f"config.optim.lr lacks a learning rate for groups {sorted(set(o.groups) - set(o.lr))}")
  check_numerics(config)


# (config path, lowest, highest, whether the lowest is allowed): every number the update and the
# loss are made of. NaN and inf pass no comparison a config could state, so each is tested here.
def _numeric_ranges(config):
  inf = float("inf")
  ranges = [(f"optim.lr.{group}", 0.0, inf, True) for group in config.optim.lr.keys()]
  ranges += [("optim.momentum", 0.0, 1.0, True), ("optim.weight_decay", 0.0, inf, True),
             ("optim.gamma", 0.0, inf, False), ("label_smoothing", 0.0, 1.0, True),
             ("preemption_timeout_s", 0.0, inf, False)]
  if "hesp" in config:
    ranges += [("hesp.lr", 0.0, inf, True), ("hesp.lr_context", 0.0, inf, True),
               ("hesp.momentum", 0.0, 1.0, True), ("hesp.weight_decay", 0.0, inf, True),
               ("hesp.normalized_step", 0.0, inf, True), ("hesp.temperature", 0.0, inf, False),
               ("hesp.weight_pl", 0.0, inf, True), ("hesp.contrastive_temperature", 0.0, inf, False)]
  return ranges


def check_numerics(config) -> None:
  """Learning rates, momentum, weight decay, smoothing, temperatures: finite numbers in range,
  or a ``ConfigError`` naming the key (``--config.optim.lr.temporal=nan`` fails here, before
  anything compiles, not as a NaN loss some steps later)."""
  import math
  for path, low, high, low_ok in _numeric_ranges(config):
    node = config
    for part in path.split("."):
      node = node[part]
    value = node
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= low if low_ok else value > low) and value < high)
    interval = f"{'[' if low_ok else '('}{low:g}, {high:g})"
    _require(ok, f"config.{path}={value!r}: must be a finite number in {interval}")


def check_list_overrides(config, overridden) -> None:
  """Lists given on the command line are never silently ignored: with a TFDS source they would be."""
  lists = sorted(k for k in overridden if k in ("data.train_list", "data.test_list"))
  _require(not lists or config.data.source == "lists",
           f"--config.{lists[0] if lists else ''} is set but config.data.source="
           f"{config.data.source!r} reads TFDS splits, not lists: drop the list or set "
           f"--config.data.source=lists")


def synthetic_uses_lists(config) -> bool:
  """Explicit lists win over the generated synthetic data; one list alone is ambiguous."""
  given = [field for field in ("train_list", "test_list") if config.data[field]]
  if len(given) == 1:
    missing = "test_list" if given == ["train_list"] else "train_list"
    raise ConfigError(f"config.data.{given[0]} is set on the synthetic config but config.data.{missing} "
                      f"is not: give both lists to train on your data, or neither for the generated "
                      f"synthetic dataset")
  return bool(given)
