"""HESP as HESP ships it: its MAFW lists, its class words, and ``config.hesp.official``.

Expected numbers are hand counts: the per-class counts of HESP's MAFW_train.txt / MAFW_val.txt
(counted with ``awk '{print $3}' | sort | uniq -c`` on the official files), sums of them for the
splits, and hand-evaluated metric curves.
"""

from __future__ import annotations

import collections
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import hesp_demo, hesp_dfew, hesp_mafw
from dferclip_jax import metrics
from dferclip_jax.data import annotations, class_orders, pipeline, sampling, synthetic
from dferclip_jax.openset import experiment, hesp, hesp_lists, hesp_train, splits
from dferclip_jax.train import config_checks, model_setup
from dferclip_jax.train import sharding as sharding_lib
from dferclip_jax.train import state as state_lib

# Clips per HESP label 0..10 (Angry ... Disappointment).
TRAIN_PER_CLASS = [357, 261, 156, 871, 910, 499, 411, 101, 348, 124, 50]
TEST_PER_CLASS = [89, 65, 39, 218, 228, 125, 102, 25, 87, 31, 13]


# ----------------------------------------------------------------------------- HESP's MAFW lists


def test_shipped_lists_hold_hesps_clips():
  train, test = hesp_lists.read_list("train"), hesp_lists.read_list("test")
  assert (len(train), len(test)) == (4088, 1022)
  assert [collections.Counter(c.label for c in train)[k] for k in range(11)] == TRAIN_PER_CLASS
  assert [collections.Counter(c.label for c in test)[k] for k in range(11)] == TEST_PER_CLASS
  assert (train[0].clip_id, train[0].num_frames, train[0].label, train[0].word) == ("09314", 83, 0, "Angry")
  assert not {c.clip_id for c in train} & {c.clip_id for c in test}
  assert {c.word for c in test if c.label == 10} == {"Disappointment"}


@pytest.mark.parametrize("split, train, known_test, unknown_test", [
    (0, 50 + 499 + 411, 13 + 125 + 102, 1022 - 240),               # [10, 5, 6]
    (4, 156 + 348 + 124, 39 + 87 + 31, 1022 - 157),                # [2, 8, 9]
    (19, 2331, 582, 228 + 125 + 87),                              # all but 4, 5, 8
])
def test_split_filtering_on_hesps_clips(split, train, known_test, unknown_test):
  from dferclip_jax.data.records import ClipRecord
  names = class_orders.DFERCLIP_11
  records = {s: [ClipRecord(c.clip_id, c.num_frames, names.index(class_orders.HESP_11[c.label]))
                 for c in hesp_lists.read_list(s)] for s in ("train", "test")}
  known = splits.known_class_names("MAFW", split)
  data = splits.split_records(records["train"], records["test"], names, known)
  assert (len(data.train), len(data.test_known), len(data.test_unknown)) == (train, known_test,
                                                                             unknown_test)


def _frames(folder: Path, n: int) -> None:
  folder.mkdir(parents=True)
  for i in range(1, n + 1):
    Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("layout", ["published", "hesp"])
def test_lists_resolve_by_clip_id_in_either_layout(tmp_path, layout):
  root = tmp_path / "MAFW"
  if layout == "published":  # MAFW's data/frames/<id>
    first_train, contempt_test = root / "data/frames/09314", root / "data/frames/15224"
    (root / "data/frames").mkdir(parents=True)
  else:                      # HESP's frames/<Train|Val>/<class folder>/<id>
    first_train = root / "frames/Train/Angry/09314"
    contempt_test = root / "frames/Val/wContempt/15224"
    (root / "frames/Val").mkdir(parents=True)
  _frames(first_train, 83)
  _frames(contempt_test, 118)
  assert hesp_lists.detect_layout(root) == layout
  written = hesp_lists.write_lists(root, tmp_path / "lists", class_orders.DFERCLIP_11)
  lines = {s: Path(p).read_text().splitlines() for s, p in written.items()}
  assert len(lines["train"]) == 4088 and len(lines["test"]) == 1022
  anger, contempt = class_orders.DFERCLIP_11.index("anger"), class_orders.DFERCLIP_11.index("contempt")
  assert lines["train"][0] == f"{first_train.relative_to(root).as_posix()} 83 {anger}"
  found = [line for line in lines["test"] if line.split()[0].endswith("/15224")]
  assert found == [f"{contempt_test.relative_to(root).as_posix()} 118 {contempt}"]
  # The ordinary list reader validates them: the two clips on disk are found, the rest reported.
  records, skipped = annotations.read_annotation_list(written["train"], 11, root=root,
                                                      on_bad_clip="skip")
  assert [r.path for r in records] == [str(first_train)] and len(skipped) == 4087
  records, _ = annotations.read_annotation_list(written["test"], 11, root=root, on_bad_clip="skip")
  assert [(r.path, r.label) for r in records] == [(str(contempt_test), contempt)]


def test_hesp_mafw_config_and_its_errors(tmp_path):
  assert hesp_mafw.get_config().openset.clips == "hesp_mafw"
  fold = hesp_mafw.get_config("clips=fold,fold=3")
  assert fold.openset.clips == "data_lists" and fold.data.train_list.endswith("set_3_train.txt")
  with pytest.raises(ValueError, match="clips='folds'"):
    hesp_mafw.get_config("clips=folds")
  with pytest.raises(ValueError, match="neither MAFW's frames folder"):
    hesp_lists.detect_layout(tmp_path)
  config = hesp_mafw.get_config()
  with pytest.raises(config_checks.ConfigError, match="set it to the MAFW root"):
    experiment.use_hesp_mafw_lists(config, tmp_path)  # config.data.root unset
  config = hesp_dfew.get_config()
  config.openset.clips = "hesp_mafw"
  with pytest.raises(config_checks.ConfigError, match="HESP ships lists for MAFW only"):
    experiment.use_hesp_mafw_lists(config, tmp_path)


# ----------------------------------------------------------------------------- prompts


def _prompts(official: bool, class_words: str, split: int = 4):
  config = hesp_mafw.get_config()
  config.hesp.official = official
  config.openset.class_words = class_words
  return experiment.hesp_prompt_texts(config, splits.known_class_names("MAFW", split))


def test_prompt_texts_follow_the_protocol_words_and_pairing():
  # Split 4 is [2, 8, 9]: labels 0 fear, 1 anxiety, 2 helplessness (sorted HESP indices).
  assert _prompts(False, "hesp") == (
      ["Fear.", "Anxiety.", "Helplessness."],
      ["This video is not Fear.", "This video is not Anxiety.", "This video is not Helplessness."])
  # The official code sorts the words alphabetically: label 0 (fear) meets the prompt "Anxiety.".
  assert _prompts(True, "hesp") == (
      ["Anxiety.", "Fear.", "Helplessness."],
      ["This video is not Anxiety.", "This video is not Fear.", "This video is not Helplessness."])
  assert _prompts(False, "names")[0] == ["fear.", "anxiety.", "helplessness."]
  assert _prompts(True, "names")[1][0] == "This video is not anxiety."
  # Alphabetical and label order disagree on 17 of HESP's 20 MAFW splits, on none of DFEW's.
  differ = [k for k in range(20) if _prompts(True, "hesp", k) != _prompts(False, "hesp", k)]
  assert len(differ) == 17 and 4 in differ and 1 not in differ  # split 1: Disgust, Happy, Sad
  config = hesp_dfew.get_config()
  config.hesp.official = True
  sorted_words = [experiment.prompt_words(config, splits.known_class_names("DFEW", k)) for k in range(20)]
  config.hesp.official = False
  assert sorted_words == [experiment.prompt_words(config, splits.known_class_names("DFEW", k))
                          for k in range(20)]
  assert hesp_lists.class_words(("happiness", "sadness")) == ("Happy", "Sad")
  with pytest.raises(ValueError, match="no HESP class word for \\['calm'\\]"):
    hesp_lists.class_words(("calm",))


# ----------------------------------------------------------------------------- short clips


def test_short_clips_read_frame_zero_with_official():
  first = [0] * 8
  # Test: HESP reads frame 0 for clips of <= 8 frames (8 included), DFER-CLIP pads with the last.
  assert sampling.test_indices(5, num_segments=8, short_clips="first").numpy()[0].tolist() == first
  assert sampling.test_indices(5, num_segments=8).numpy()[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
  assert sampling.test_indices(8, num_segments=8, short_clips="first").numpy()[0].tolist() == first
  assert sampling.test_indices(8, num_segments=8).numpy()[0].tolist() == list(range(8))
  assert sampling.test_indices(9, num_segments=8, short_clips="first").numpy()[0].tolist() == [
      0, 1, 2, 3, 5, 6, 7, 8]  # int(0.5625 + 1.125 k): long enough, the same either way
  # Train: < 8 frames.
  seed = np.array([1, 2], np.int64)
  assert sampling.train_indices(7, seed, num_segments=8, short_clips="first").numpy().tolist() == first
  assert sampling.train_indices(7, seed, num_segments=8).numpy().tolist() == [0, 1, 2, 3, 4, 5, 6, 6]
  assert sampling.train_indices(8, seed, num_segments=8, short_clips="first").numpy().tolist() == list(range(8))
  with pytest.raises(ValueError, match="short_clips='zero'"):
    sampling.test_indices(5, short_clips="zero")


def test_short_clip_through_the_pipeline(tmp_path):
  _frames(tmp_path / "clip", 5)  # frame i has pixel value i
  (tmp_path / "list.txt").write_text("clip 5 0\n")
  records, _ = annotations.read_annotation_list(tmp_path / "list.txt", 1, root=tmp_path)
  read = lambda short: next(pipeline.eval_batches(records, batch_size=1, image_size=4, num_frames=8,
                                                  short_clips=short))["video"][0, :, 0, 0, 0].tolist()
  assert read("first") == [1] * 8
  assert read("edge") == [1, 2, 3, 4, 5, 5, 5, 5]


# ----------------------------------------------------------------------------- metrics


def test_official_auroc_counts_a_tie_as_zero():
  # Pairs (1 vs 1): a tie; (2 vs 1): known above. Exact: (1/2 + 1) / 2; HESP's: (0 + 1) / 2.
  assert metrics.auroc([1.0, 2.0], [1.0]) == 75.0
  assert metrics.auroc_hesp([1.0, 2.0], [1.0]) == 50.0
  assert metrics.auroc_hesp([0.6, 0.7], [0.5, 0.65]) == 75.0  # no ties: the two agree


def test_official_oscr_by_hand():
  # Known 0.6 and 0.7, both classified right; unknown 0.5 and 0.65. Exact: 3 of the 4 (known,
  # unknown) pairs have the known above -> 75. HESP's cut points, scores ascending
  # (0.5u, 0.6k, 0.65u, 0.7k): CCR counts known above k, FPR unknown from k:
  # k=0 (1, 1), k=1 (.5, .5), k=2 (.5, .5), then (0, 0), (0, 0), (1, 1); trapezoids over the
  # points sorted descending: .5 * (1 + .5) / 2 + .5 * (.5 + 0) / 2 = .5 -> 50.
  known, unknown = [[0.6, 0.0], [0.7, 0.0]], [[0.5, 0.0], [0.65, 0.0]]
  assert metrics.oscr(known, unknown, [0, 0]) == 75.0
  assert metrics.oscr_hesp(known, unknown, [0, 0]) == 50.0
  # Known 0.9 and 0.3 right, unknown 0.5: exact 1/2; HESP's points (1, .5), (1, .5), (0, 0) x2,
  # (1, 1): one trapezoid 1 * (.5 + 0) / 2.
  assert metrics.oscr([[0.9, 0.0], [0.3, 0.0]], [[0.5, 0.0]], [0, 0]) == 50.0
  assert metrics.oscr_hesp([[0.9, 0.0], [0.3, 0.0]], [[0.5, 0.0]], [0, 0]) == 25.0
  scores = experiment.open_set_scores(np.array(known), np.array(unknown), [0, 0], use_softmax=False,
                                      official=True)
  assert (scores["openset/oscr"], scores["openset/oscr_official"]) == (75.0, 50.0)
  assert set(experiment.open_set_scores(np.array(known), np.array(unknown), [0, 0],
                                        use_softmax=False)) == set(experiment.SCORES)
  summary = experiment.summarize([{**scores, "test_selected": scores}] * 2)
  assert summary["openset/auroc_official"]["mean"] == 75.0
  assert summary["test_selected/openset/oscr_official"]["values"] == [50.0, 50.0]


# ----------------------------------------------------------------------------- training


def test_hesp_augmentation_resizes_before_the_crop():
  from dferclip_jax.data import augment
  rng = np.random.default_rng(0)
  seed = np.array([3, 4], np.int64)
  square = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
  wide = rng.integers(0, 255, (2, 16, 48, 3), dtype=np.uint8)
  # A frame already at the model's size: resizing first changes nothing.
  np.testing.assert_array_equal(augment.augment_clip_uint8(square, "hesp", 16, seed),
                                augment.augment_clip_uint8(square, "mafw", 16, seed))
  # A wide frame: HESP's crop is drawn on the squashed 16 x 16 frame, DFER-CLIP's on the 16 x 48.
  squashed = augment.resize_clip_uint8(wide, 16)
  np.testing.assert_array_equal(augment.augment_clip_uint8(wide, "hesp", 16, seed),
                                augment.augment_clip_uint8(squashed, "mafw", 16, seed))
  assert not np.array_equal(augment.augment_clip_uint8(wide, "hesp", 16, seed),
                            augment.augment_clip_uint8(wide, "mafw", 16, seed))


def tiny_hesp_run(tmp_path, epochs: int, max_steps: int):
  """-> (config, training records (6 clips of 2 classes), mesh) for a tiny HESP model."""
  made = synthetic.make_synthetic_dataset(tmp_path / "data", num_classes=2, clips_per_class=4,
                                          frames_range=(3, 6), image_size=16, test_fraction=0.25)
  records, _ = annotations.read_annotation_list(made.train_list, 2, root=made.root)
  config = hesp_demo.get_config(f"epochs={epochs}")
  config.max_steps, config.log_every, config.progress_bars = max_steps, 1, False
  config.hesp.batch_size = 2
  config.model.clip_arch.update(image_size=16, patch_size=8, width=16, layers=1, projection_dim=16)
  return config, records, sharding_lib.make_mesh(config.mesh, num_devices=1)


def tiny_hesp_model(config, names=("happiness", "sadness")):
  rng = jax.random.PRNGKey(0)
  words = experiment.prompt_words(config, names)
  clip_config, clip_params, tokenizer = model_setup.clip_and_tokenizer(
      config, sum(experiment.hesp_prompt_texts(config, names), []), rng)
  return hesp.build_hesp(clip_config, clip_params, words, tokenizer, rng=rng, n_ctx=2, patch_size=4,
                         num_frames=4)


def test_official_switch_leaves_the_contexts_untrained(tmp_path):
  config, records, mesh = tiny_hesp_run(tmp_path, epochs=1, max_steps=2)
  contexts = {}
  for official in (False, True):
    config.hesp.official = official
    model, variables = tiny_hesp_model(config)
    before = np.array(variables["params"]["prompt_learner"]["ctx"])
    final = hesp_train.train_hesp(config, tmp_path / f"run_{official}", model, variables, records, mesh)
    after = np.asarray(jax.device_get(final["params"]["prompt_learner"]["ctx"]))
    contexts[official] = (before, after)
    # The patch and the unknown prompts move in both settings.
    assert not np.array_equal(np.asarray(jax.device_get(final["params"]["unknown_visual"])),
                              variables["params"]["unknown_visual"])
  np.testing.assert_array_equal(*contexts[True])
  assert np.abs(contexts[False][0] - contexts[False][1]).max() > 0


def test_nan_stops_hesp_at_its_step_before_an_evaluation_or_a_save(tmp_path):
  """HESP's loop checks every step, as the closed-set one: not only the logged steps."""
  config, records, mesh = tiny_hesp_run(tmp_path, epochs=2, max_steps=5)  # 3 steps per epoch
  config.log_every = 100
  config.hesp.lr = 1e30  # the first update of the unknown prompts and the radius overflows
  model, variables = tiny_hesp_model(config)
  evaluated = []
  # The update itself overflows: the norm of the updated params catches it at step 1, before the
  # next step's loss would (step 2, the check before the param norm was added).
  with pytest.raises(state_lib.NonFiniteLossError, match=r"^step 1: train/param_norm is (nan|inf);"):
    hesp_train.train_hesp(config, tmp_path / "run", model, variables, records, mesh,
                          on_eval=lambda step, v: evaluated.append(step) or {})
  assert evaluated == []  # the epoch-end evaluation (step 3) never saw the NaN state, nor a save
  assert not any((tmp_path / "run" / "checkpoints").iterdir())
