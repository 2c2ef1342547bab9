"""Evaluation computes the class text features once per evaluation, and the text tower's cut to
the prompts' end-of-text prefix is exact."""

import jax
import numpy as np
import pytest

from dferclip_jax.models import clip_config
from dferclip_jax.models.clip import CLIP, init_clip_params
from dferclip_jax.models.dferclip import build_dferclip, prompt_text_length
from dferclip_jax.tokenizer import WordTokenizer
from dferclip_jax import inference

TEXTS = ["a smiling mouth and raised cheeks", "tears", "a frozen expression with wide open eyes"]


@pytest.fixture(scope="module")
def tiny():
  tokenizer = WordTokenizer(TEXTS + ["X"])
  config = clip_config.tiny(image_size=32, patch_size=16, width=32, layers=2, projection_dim=32,
                            vocab_size=tokenizer.vocab_size)
  clip_params = jax.tree.map(np.asarray, init_clip_params(CLIP(config)))
  model, variables = build_dferclip(config, clip_params, TEXTS, tokenizer, rng=jax.random.PRNGKey(0),
                                    n_ctx=2, temporal_heads=2, temporal_dim_head=16,
                                    temporal_mlp_dim=64, num_frames=4)
  video = np.random.default_rng(0).integers(0, 256, (4, 4, 32, 32, 3), dtype=np.uint8)
  return model, variables, video


def test_text_length_is_the_shortest_eot_prefix_rounded_to_8(tiny):
  model, variables, _ = tiny
  # "<sos> x x a frozen expression with wide open eyes <eot>": the longest prompt ends at index 10.
  assert int(np.argmax(variables["prompts"]["ids"], -1).max()) == 10
  assert model.text_length == 16 == prompt_text_length(variables["prompts"]["ids"], 77)
  assert prompt_text_length(np.array([[1, 5, 0]]), 3) == 3  # never beyond the context


def test_cut_text_tower_equals_the_full_one(tiny):
  model, variables, video = tiny
  cut = model.apply(variables, video)
  full = model.clone(text_length=model.context_length).apply(variables, video)
  np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-5)
  # A prefix too short for a prompt's <eot> gives NaN, never quietly wrong features.
  short = np.asarray(model.clone(text_length=8).apply(variables, method=model.encode_prompts))
  assert np.isnan(short[[0, 2]]).all() and np.isfinite(short[1]).all()  # <eot> at 9, 4, 10


def test_eval_step_matches_a_hand_computation_with_the_texts_encoded_once(tiny):
  model, variables, video = tiny
  labels = np.array([0, 1, 2, 1], np.int32)
  mask = np.array([1, 1, 1, 0], np.float32)  # the last row is padding
  eval_step = jax.jit(inference.make_eval_step(model, 3))
  text_features = inference.class_text_features(model, variables)  # once for the whole evaluation
  # Given the features, the step never reads the text tower: poisoned text weights change nothing.
  poisoned = jax.tree_util.tree_map_with_path(
      lambda path, x: np.full_like(x, np.nan) if "text_model" in jax.tree_util.keystr(path) else x,
      variables)
  assert any(np.isnan(x).all() for x in jax.tree.leaves(poisoned))
  totals = inference.empty_eval_totals(3)
  for half in (slice(0, 2), slice(2, 4)):
    totals = eval_step(poisoned, {"video": video[half], "label": labels[half], "mask": mask[half]}, totals,
                       text_features)
  logits = np.asarray(model.apply(variables, video), np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  expected_cm = np.zeros((3, 3))
  for label, pred, m in zip(labels, probs.argmax(-1), mask):
    expected_cm[label, pred] += m
  np.testing.assert_array_equal(np.asarray(totals["confusion"]), expected_cm)
  expected_loss = -(np.log(np.maximum(probs[np.arange(4), labels], 1e-12)) * mask).sum()  # floored at 1e-12
  np.testing.assert_allclose(float(totals["loss_sum"]), expected_loss, rtol=1e-4)
  # Without the features the step encodes the texts itself, with the same totals.
  again = eval_step(variables, {"video": video, "label": labels, "mask": mask}, inference.empty_eval_totals(3))
  np.testing.assert_array_equal(np.asarray(again["confusion"]), expected_cm)
