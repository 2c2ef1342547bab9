"""Recipe keys run off their defaults, each against torch or a hand computation.

The rows of docs/testing.md's switch table point here for the keys no other test ran at a
non-default value: the optimizer's momentum / weight decay / gamma / milestones / groups, label
smoothing, the best metric, the epoch and evaluation schedule, logging, the class texts and the
matmul dtype. One tiny training run (compiled once) carries the schedule keys.
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from dferclip_jax.train import optimizer, reporting, trainer
from dferclip_jax.train import train_step as steps
from dferclip_jax.train import model_setup
import test_train

torch = pytest.importorskip("torch")

PARAMS = {
    "temporal": {"w": np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3)},
    "clip": {"vision_model": {"k": np.array([3.0, -2.0, 0.5], np.float32)},
             "text_model": {"k": np.array([4.0, 1.0], np.float32)}},
    "prompt_learner": {"ctx": np.array([[5.0, -1.0]], np.float32)},
}
GROUPS = {"temporal": "temporal/.*", "image_encoder": "clip/vision_model/.*",
          "prompt_learner": "prompt_learner/.*"}


def optim_config(**overrides):
  values = dict(name="sgd", momentum=0.9, weight_decay=1e-4, milestones=(30, 40), gamma=0.1,
                lr=dict(temporal=1e-2, image_encoder=1e-5, prompt_learner=1e-3), groups=GROUPS)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def gradients(params, step):
  """Gradients that differ per leaf and per step (a constant gradient hides a wrong momentum)."""
  return jax.tree.map(lambda p: np.cos(3.0 * p + step).astype(np.float32), params)


def run_optax(config, steps_per_epoch, num_steps):
  assignment, tx, schedules = optimizer.grouped_optimizer(PARAMS, config, steps_per_epoch)
  trainable = {k: v for k, v in traverse_util.flatten_dict(PARAMS).items()
               if assignment[k] != "frozen"}
  params = traverse_util.unflatten_dict(trainable)
  state = tx.init(params)
  for step in range(num_steps):
    updates, state = tx.update(gradients(params, step), state, params)
    params = optax.apply_updates(params, updates)
  return assignment, traverse_util.flatten_dict(params), schedules


def run_torch(config, steps_per_epoch, num_steps, group_of):
  tensors = {path: torch.tensor(np.array(v), requires_grad=True)
             for path, v in traverse_util.flatten_dict(PARAMS).items() if group_of(path)}
  opt = torch.optim.SGD([{"params": [t for p, t in tensors.items() if group_of(p) == g], "lr": lr}
                         for g, lr in config.lr.items()],
                        lr=1.0, momentum=config.momentum, weight_decay=config.weight_decay)
  sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.milestones), gamma=config.gamma)
  for step in range(num_steps):
    for path, t in tensors.items():
      t.grad = torch.tensor(np.cos(3.0 * t.detach().numpy() + step).astype(np.float32))
    opt.step()
    if (step + 1) % steps_per_epoch == 0:  # the official loop steps MultiStepLR once per epoch
      sched.step()
  return {path: t.detach().numpy() for path, t in tensors.items()}


def default_group(path):
  return {"temporal": "temporal", "prompt_learner": "prompt_learner"}.get(
      path[0], "image_encoder" if path[:2] == ("clip", "vision_model") else None)


@pytest.mark.parametrize("overrides", [
    # Every value off the recipe's: a wrong momentum (0.9 kept) moves the params by ~1e-2 after
    # 7 steps; a milestone in steps instead of epochs or a gamma of 0.1 kept, by ~1e-3 or more.
    dict(momentum=0.5, weight_decay=1e-2, gamma=0.5, milestones=(1, 3),
         lr=dict(temporal=0.2, image_encoder=0.05, prompt_learner=0.1)),
    # momentum 0 and weight decay 0 drop their transformations from the chain altogether.
    dict(momentum=0.0, weight_decay=0.0, gamma=0.3, milestones=(2,),
         lr=dict(temporal=0.3, image_encoder=0.1, prompt_learner=0.2)),
])
def test_sgd_off_its_defaults_follows_torch(overrides):
  config = optim_config(**overrides)
  _, params, schedules = run_optax(config, steps_per_epoch=2, num_steps=7)
  expected = run_torch(config, steps_per_epoch=2, num_steps=7, group_of=default_group)
  assert set(params) == set(expected)
  for path, value in expected.items():
    # The recipe's defaults in place of these values err by >= 1e-3; 1e-6 is float32 rounding.
    np.testing.assert_allclose(params[path], value, rtol=1e-6, atol=1e-6, err_msg="/".join(path))
  # The schedules by hand: lr * gamma ** (milestones passed), milestones in epochs of 2 steps.
  for group, lr in config.lr.items():
    for step in range(8):
      drops = sum(step >= 2 * m for m in config.milestones)
      assert float(schedules[group](step)) == pytest.approx(lr * config.gamma ** drops, rel=1e-6)


def test_custom_groups_train_what_they_name_and_freeze_the_rest():
  """Groups are regexes: here the text tower trains and the image tower is frozen (the reverse
  of the recipe); one SGD step by hand, p - lr * (g + wd * p), momentum buffer = g."""
  config = optim_config(groups={"text": "clip/text_model/.*", "temporal": "temporal/.*"},
                        lr={"text": 0.5, "temporal": 0.25}, weight_decay=0.1)
  assignment, params, _ = run_optax(config, steps_per_epoch=1, num_steps=1)
  assert {"/".join(k): g for k, g in assignment.items()} == {
      "temporal/w": "temporal", "clip/vision_model/k": "frozen", "clip/text_model/k": "text",
      "prompt_learner/ctx": "frozen"}
  assert set(params) == {("temporal", "w"), ("clip", "text_model", "k")}
  for path, lr in ((("clip", "text_model", "k"), 0.5), (("temporal", "w"), 0.25)):
    p = traverse_util.flatten_dict(PARAMS)[path].astype(np.float64)
    np.testing.assert_allclose(params[path], p - lr * (np.cos(3.0 * p) + 0.1 * p), rtol=1e-6)


def test_label_smoothing_equals_torch():
  logits = np.array([[2.0, -1.0, 0.5, 3.0], [0.1, 0.2, -0.3, 4.0], [-2.0, 1.5, 1.0, 0.0]], np.float32)
  labels = np.array([3, 0, 1])  # three different classes: a smoothing on the wrong axis differs
  for smoothing in (0.0, 0.1, 0.35):
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                                 label_smoothing=smoothing).item()
    # Smoothing ignored errs by 0.07 at 0.1; 1e-6 is float32 rounding.
    assert float(steps.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing)) == \
        pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ the schedule keys, one run

EPOCHS, EVAL_EVERY, LOG_EVERY, BATCH = 3, 2, 4, 12


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory):
  """A tiny run with num_epochs, eval_every_epochs, log_every, batch_size, best_metric and
  label_smoothing all off the demo's values; make_train_step is spied on for the smoothing."""
  config = test_train.tiny_config(**{
      "data.synthetic.dir": str(tmp_path_factory.mktemp("data")), "num_epochs": EPOCHS,
      "eval_every_epochs": EVAL_EVERY, "log_every": LOG_EVERY, "batch_size": BATCH,
      "best_metric": "eval/war", "label_smoothing": 0.2, "num_devices": 1, "mesh.data": 1})
  seen = []
  real = steps.make_train_step

  def spy(model, tx, schedules, label_smoothing=0.0):
    seen.append(label_smoothing)
    return real(model, tx, schedules, label_smoothing)

  workdir = tmp_path_factory.mktemp("run")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(steps, "make_train_step", spy)
    summary = trainer.train_and_evaluate(config, workdir)
  return summary, reporting.read_metrics(workdir), seen


def test_epochs_batch_size_and_evaluation_schedule_by_hand(scheduled_run):
  summary, records, _ = scheduled_run
  num_train = 7 * 10  # the synthetic set: 7 classes x (12 clips - round(0.2 x 12) test clips)
  steps_per_epoch = num_train // BATCH  # 5: the partial batch is dropped, as the official loader
  assert summary["num_clips"]["train"] == num_train
  assert (summary["steps_per_epoch"], summary["steps"]) == (steps_per_epoch, EPOCHS * steps_per_epoch)
  # Every EVAL_EVERY epochs, and at the end.
  assert [r["step"] for r in records if "eval/uar" in r] == [10, 15]
  # Every LOG_EVERY steps, and step 1.
  assert [r["step"] for r in records if "train/loss" in r] == [1, 4, 8, 12]


def test_best_metric_war_selects_on_war(scheduled_run):
  summary, records, _ = scheduled_run
  evals = [(r["eval/war"], -r["step"], r) for r in records if "eval/war" in r]
  war, _, chosen = max(evals)  # the higher WAR, then the earlier step
  assert summary["best"]["metric"] == "eval/war" and summary["best"]["value"] == pytest.approx(war)
  assert summary["best"]["step"] == chosen["step"] and summary["best"]["uar"] == pytest.approx(chosen["eval/uar"])


def test_label_smoothing_reaches_the_train_step(scheduled_run):
  assert scheduled_run[2] == [0.2]


# ------------------------------------------------------------------ class texts, matmul dtype


def test_text_type_and_class_texts_file_choose_the_prompts(tmp_path):
  config = ml_collections.ConfigDict(dict(class_names=tuple("abcdefg"), model=dict(
      text_type="class_names_with_context", class_texts_file=None)))
  texts = model_setup.load_class_texts(config)
  assert texts == ["an expression of happiness.", "an expression of sadness.", "an expression of neutral.",
                   "an expression of anger.", "an expression of surprise.", "an expression of disgust.",
                   "an expression of fear."]
  config.model.text_type = "class_names"
  assert model_setup.load_class_texts(config)[0] == "happiness."
  mine = tmp_path / "texts.txt"
  mine.write_text("".join(f"text {i}.\n" for i in range(7)))
  config.model.class_texts_file = str(mine)  # the file wins over text_type
  assert model_setup.load_class_texts(config) == [f"text {i}." for i in range(7)]


def test_bfloat16_really_changes_the_matmuls():
  """dtype=bfloat16 stays within bf16 error of float32 and is not float32 in disguise."""
  from dferclip_jax.models.clip import CLIP, init_clip_params
  from dferclip_jax.models import clip_config
  arch = clip_config.tiny(image_size=32, patch_size=16, width=64, layers=2, projection_dim=32)
  params = init_clip_params(CLIP(arch), jax.random.PRNGKey(0))
  pixels = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  full = np.asarray(CLIP(arch).apply({"params": params}, pixels, method=CLIP.encode_image))
  half = np.asarray(CLIP(arch, dtype=jnp.bfloat16).apply({"params": params}, pixels,
                                                          method=CLIP.encode_image))
  error = np.abs(half - full).max() / np.abs(full).max()
  # bf16 has an 8-bit mantissa: ~4e-3 per product; float32 in disguise gives 0.
  assert 1e-4 < error < 5e-2, error
  # Every matmul of both towers in bf16 (a tower left in float32 still moves the output through
  # the projection), every LayerNorm in float32.
  ids = np.array([[0, 5, 7, 2, 0, 0]], np.int32)
  seen = {}
  for method, inputs in ((CLIP.encode_image, pixels), (CLIP.encode_text, ids)):
    _, captured = CLIP(arch, dtype=jnp.bfloat16).apply(
        {"params": params}, inputs, method=method, capture_intermediates=True, mutable=["intermediates"])
    for name, out in traverse_util.flatten_dict(captured["intermediates"], sep="/").items():
      seen[name] = str(out[0].dtype)
  matmuls = {n: d for n, d in seen.items()
             if re.search(r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2|projection)/__call__$", n)}
  norms = {n: d for n, d in seen.items() if re.search(r"(layer_norm\d|layernorm)/__call__$", n)}
  assert {n.split("/")[0] for n in matmuls} == {"vision_model", "text_model", "visual_projection",
                                                 "text_projection"}
  assert set(matmuls.values()) == {"bfloat16"}, {n: d for n, d in matmuls.items() if d != "bfloat16"}
  assert norms and set(norms.values()) == {"float32"}


# ------------------------------------------------------------------ model keys


def test_model_keys_build_the_model_they_name():
  """clip_arch, n_ctx, class_specific, the temporal sizes and num_frames, each off the demo's
  value, shape the parameters as counted by hand."""
  from configs import demo
  config = demo.get_config(None)
  config.model.clip_arch.update(dict(image_size=24, patch_size=8, width=48, layers=3, projection_dim=20))
  config.model.update(dict(n_ctx=3, temporal_heads=3, temporal_dim_head=5, temporal_mlp_dim=7,
                           temporal_layers=2, class_specific=False))
  config.data.num_frames = 5
  bundle = model_setup.build_model(config, jax.random.PRNGKey(0))
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(bundle.variables["params"], sep="/").items()}
  vision, text = "clip/vision_model/", "clip/text_model/"
  assert shapes[vision + "embeddings/patch_embedding/kernel"] == (8, 8, 3, 48)
  assert shapes[vision + "embeddings/position_embedding/embedding"] == ((24 // 8) ** 2 + 1, 48)
  assert shapes["clip/visual_projection/kernel"] == shapes["clip/text_projection/kernel"] == (48, 20)
  for tower in (vision, text):
    assert {k.split("/")[4] for k in shapes if k.startswith(tower + "encoder/layers/")} == {"0", "1", "2"}
  assert shapes[text + "encoder/layers/0/mlp/fc1/kernel"] == (48, 4 * 48)
  assert shapes["prompt_learner/ctx"] == (3, 48)  # generic: one context for all classes
  assert shapes["temporal/pos_embedding"] == (1, 5 + 1, 20)  # the frames and the class token
  assert {k.split("/")[1] for k in shapes if k.startswith("temporal/layers_")} == {"layers_0", "layers_1"}
  assert shapes["temporal/layers_0/attn/to_qkv/kernel"] == (20, 3 * 3 * 5)
  assert shapes["temporal/layers_0/fc1/kernel"] == (20, 7)
  model = bundle.model
  assert (model.temporal_heads, model.temporal_dim_head, model.clip_config.vision_config.num_attention_heads) == \
      (3, 5, 48 // 16)


def test_normalize_input_is_clips_mean_and_std_by_hand():
  """normalize_input=True equals the unnormalised model fed (x / 255 - mean) / std, with OpenAI's
  published constants written here; without it, the pixels go in as x / 255 (the official loader)."""
  from configs import demo
  config = demo.get_config(None)
  config.data.num_frames = 2
  bundle = model_setup.build_model(config, jax.random.PRNGKey(0))
  video = np.random.default_rng(3).integers(0, 256, (2, 2, 32, 32, 3), dtype=np.uint8)
  mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
  std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
  by_hand = bundle.model.apply(bundle.variables, (video / np.float32(255) - mean) / std)
  normalized = bundle.model.clone(normalize_input=True).apply(bundle.variables, video)
  # Normalising twice or not at all moves the logits by > 1; float32 rounding by ~1e-5.
  np.testing.assert_allclose(normalized, by_hand, rtol=1e-4, atol=1e-4)
  plain = bundle.model.apply(bundle.variables, video)
  np.testing.assert_allclose(plain, bundle.model.apply(bundle.variables, video / np.float32(255)),
                             rtol=1e-4, atol=1e-4)
  assert np.abs(plain - normalized).max() > 1e-2


def test_an_optimizer_other_than_sgd_is_refused_by_its_key():
  config = optim_config(name="adamw")
  with pytest.raises(ValueError, match=r"config.optim.name='adamw': only 'sgd'"):
    optimizer.grouped_optimizer(PARAMS, config, 1)
