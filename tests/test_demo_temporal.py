"""The demo needs time (issue 18): on configs/demo.py's data, classes 0-5 come in pairs whose clips
are each other's reversal, so a model that averages its frames cannot beat 4/7 UAR, while the
official temporal model can."""

import jax
import numpy as np
import pytest

from configs import demo
from dferclip_jax.data import synthetic
from dferclip_jax.train import config_checks, model_setup, trainer


def test_a_pairs_clip_reversed_is_its_partners_clip():
  for first in (0, 2, 4):
    forward = synthetic.render_clip(np.random.default_rng(7), first, 7, 11, 24, temporal_pairs=3)
    backward = synthetic.render_clip(np.random.default_rng(7), first + 1, 7, 11, 24, temporal_pairs=3)
    np.testing.assert_array_equal(forward[::-1], backward)
    assert not np.array_equal(forward, backward)  # a pair is not one class twice
  # Outside the pairs a class has a look of its own: another hue, so other mean colours.
  means = [synthetic.render_clip(np.random.default_rng(7), label, 7, 11, 24, temporal_pairs=3)
           .reshape(-1, 3).mean(0) for label in (0, 2, 4, 6)]
  assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1:]) > 20


def test_pairs_are_counted_against_the_classes(tmp_path):
  with pytest.raises(ValueError, match="temporal_pairs=4"):
    synthetic.make_synthetic_dataset(tmp_path, num_classes=7, temporal_pairs=4)


def test_an_unknown_pooling_is_named_by_its_key():
  config = demo.get_config()
  config.model.temporal_pooling = "max"
  with pytest.raises(config_checks.ConfigError, match="config.model.temporal_pooling='max'"):
    config_checks.check_config(config)


def test_mean_pooling_is_the_frames_mean_and_blind_to_their_order():
  config = demo.get_config()
  video = np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
  reversed_video = video[:, ::-1]
  outputs = {}
  for pooling in ("transformer", "mean"):
    config.model.temporal_pooling = pooling
    bundle = model_setup.build_model(config, jax.random.PRNGKey(0))
    outputs[pooling] = (bundle.variables, bundle.model.apply(bundle.variables, video, return_features=True),
                        bundle.model.apply(bundle.variables, reversed_video))
  # One variable layout for both (checkpoints, optimizer groups): the same tree, the same numbers.
  jax.tree.map(np.testing.assert_array_equal, outputs["transformer"][0], outputs["mean"][0])
  _, features, logits_reversed = outputs["mean"]
  mean = np.asarray(features["frame_features"]).mean(1)
  np.testing.assert_allclose(features["video_features"], mean / np.linalg.norm(mean, axis=-1, keepdims=True),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(features["logits"], logits_reversed, rtol=1e-4, atol=1e-4)
  _, features, logits_reversed = outputs["transformer"]
  assert np.abs(np.asarray(features["logits"]) - np.asarray(logits_reversed)).max() > 1e-2


def tiny_demo(data_dir, pooling):
  """configs/demo.py's data and model, shortened to 264 steps (22 epochs)
  at the demo's rates without decay, one evaluation at the end."""
  config = demo.get_config("epochs=22")
  config.data.synthetic.dir = str(data_dir)
  config.optim.milestones = (1000,)
  config.eval_every_epochs = 22
  config.checkpoint_every = 10_000
  config.log_every = 50
  config.progress_bars = False
  config.model.temporal_pooling = pooling
  return config


@pytest.mark.slow
def test_the_temporal_model_beats_the_frames_mean(tmp_path):
  uar = {}
  for pooling in ("transformer", "mean"):
    summary = trainer.train_and_evaluate(tiny_demo(tmp_path / "data", pooling), tmp_path / pooling)
    uar[pooling] = summary["final"]["uar"]
  # Averaged frames: at best 100% on the lone class and one recall of 100% per pair of classes
  # whose clips are reversals of each other: (1 + 3) / 7 = 57%, plus the noise of 5 test clips.
  assert uar["mean"] <= 400 / 7 + 12, uar
  # The temporal model orders the frames: at least one pair told apart, 5/7 = 71%.
  assert uar["transformer"] >= 500 / 7 - 1, uar
  assert uar["transformer"] >= uar["mean"] + 14, uar
