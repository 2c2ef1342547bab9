"""Param groups and PyTorch-SGD semantics against hand computations (and torch itself)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from dferclip_jax.models import param_tree
from dferclip_jax.train import optimizer

PARAMS = {
    "temporal": {"cls_token": np.full((1, 1, 2), 1.0, np.float32), "w": np.full((2, 2), 2.0, np.float32)},
    "clip": {"vision_model": {"k": np.full((3,), 3.0, np.float32)},
             "text_model": {"k": np.full((3,), 4.0, np.float32)},
             "logit_scale": np.float32(2.6)},
    "prompt_learner": {"ctx": np.full((2, 2), 5.0, np.float32)},
}
GROUPS = {"temporal": "temporal/.*", "image_encoder": "clip/(vision_model|visual_projection)/.*",
          "prompt_learner": "prompt_learner/.*"}
LRS = {"temporal": 1e-2, "image_encoder": 1e-5, "prompt_learner": 1e-3}


def optim_config(milestones=(2, 3), momentum=0.9, weight_decay=1e-4):
  return ml_collections.ConfigDict(dict(name="sgd", momentum=momentum, weight_decay=weight_decay,
                                        milestones=milestones, gamma=0.1, lr=LRS, groups=GROUPS))


def build(config, steps_per_epoch=2):
  assignment = optimizer.assign_groups(PARAMS, GROUPS)
  trainable, frozen = param_tree.split_params(PARAMS, assignment)
  tx, schedules = optimizer.make_optimizer(
      config, {k: g for k, g in assignment.items() if g != param_tree.FROZEN}, steps_per_epoch)
  return assignment, trainable, frozen, tx, schedules


def test_groups_and_frozen_params():
  assignment, trainable, frozen, tx, _ = build(optim_config())
  flat = {"/".join(k): g for k, g in assignment.items()}
  assert flat == {"temporal/cls_token": "temporal", "temporal/w": "temporal",
                  "clip/vision_model/k": "image_encoder", "clip/text_model/k": "frozen",
                  "clip/logit_scale": "frozen", "prompt_learner/ctx": "prompt_learner"}
  assert "text_model" not in trainable["clip"] and "logit_scale" in frozen["clip"]
  # Frozen params hold no optimizer state at all: the momentum buffers mirror only the trainable
  # tree, plus one step counter per group for its schedule.
  state_leaves = jax.tree.leaves(tx.init(trainable))
  buffers = [x for x in state_leaves if np.ndim(x) > 0 or x.dtype != np.int32]
  assert sum(np.size(x) for x in buffers) == sum(np.size(x) for x in jax.tree.leaves(trainable))
  assert len(state_leaves) - len(buffers) == len(GROUPS)
  merged = param_tree.merge_params(trainable, frozen)
  assert traverse_util.flatten_dict(merged).keys() == traverse_util.flatten_dict(PARAMS).keys()


def test_each_group_follows_torch_sgd_by_hand():
  """Three steps of g + wd*p, buf = m*buf + g, p -= lr*buf, with the lr drop at epoch 1 (step 2)."""
  config = optim_config(milestones=(1,))
  _, trainable, _, tx, schedules = build(config, steps_per_epoch=2)
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), trainable)
  state, params = tx.init(trainable), trainable
  expected = jax.tree.map(np.copy, trainable)
  buffers = jax.tree.map(np.zeros_like, trainable)
  labels = {"temporal": "temporal", "clip": "image_encoder", "prompt_learner": "prompt_learner"}
  for step in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for top, group in labels.items():
      lr = LRS[group] * (0.1 if step >= 2 else 1.0)
      for path, p in traverse_util.flatten_dict(expected[top]).items():
        b = traverse_util.flatten_dict(buffers[top])[path]
        d = 0.5 + 1e-4 * p
        b[...] = 0.9 * b + d
        p[...] = p - lr * b
    for group, fn in schedules.items():
      assert np.isclose(fn(step), LRS[group] * (0.1 if step >= 2 else 1.0))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_matches_torch_sgd():
  torch = pytest.importorskip("torch")
  config = optim_config(milestones=(1,))
  _, trainable, _, tx, _ = build(config, steps_per_epoch=2)
  rng = np.random.default_rng(0)
  grads_seq = [jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), trainable)
               for _ in range(4)]
  tensors = {path: torch.tensor(np.array(v), requires_grad=True)
             for path, v in traverse_util.flatten_dict(trainable).items()}
  group_of = {path: ("temporal" if path[0] == "temporal" else
                     "image_encoder" if path[0] == "clip" else "prompt_learner") for path in tensors}
  torch_opt = torch.optim.SGD([{"params": [t for p, t in tensors.items() if group_of[p] == g], "lr": lr}
                               for g, lr in LRS.items()], lr=0.1, momentum=0.9, weight_decay=1e-4)
  sched = torch.optim.lr_scheduler.MultiStepLR(torch_opt, milestones=[1], gamma=0.1)
  state, params = tx.init(trainable), trainable
  for step, grads in enumerate(grads_seq):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for path, t in tensors.items():
      t.grad = torch.tensor(np.array(traverse_util.flatten_dict(grads)[path]))
    torch_opt.step()
    if step % 2 == 1:  # the scheduler steps once per epoch (2 steps), as the official loop
      sched.step()
  for path, t in tensors.items():
    np.testing.assert_allclose(traverse_util.flatten_dict(params)[path], t.detach().numpy(),
                               rtol=1e-5, atol=1e-7)


def test_bad_groups_are_named():
  with pytest.raises(ValueError, match="matches several groups"):
    optimizer.assign_groups(PARAMS, {"a": "temporal/.*", "b": ".*/w"})
  with pytest.raises(ValueError, match=r"\['typo'\] match no parameter"):
    optimizer.assign_groups(PARAMS, {**GROUPS, "typo": "temporl/.*"})
  with pytest.raises(ValueError, match="bad regex"):
    optimizer.assign_groups(PARAMS, {"a": "("})
  config = optim_config()
  config.lr = {"temporal": 1e-2}
  assignment = optimizer.assign_groups(PARAMS, GROUPS)
  with pytest.raises(ValueError, match="no learning rate for group"):
    optimizer.make_optimizer(config, {k: g for k, g in assignment.items() if g != "frozen"}, 1)


def test_global_norm():
  tree = {"a": jnp.array([3.0]), "b": {"c": jnp.array([4.0])}}
  assert float(optimizer.global_norm(tree)) == pytest.approx(5.0)
  assert float(optimizer.global_norm({})) == 0.0


def test_group_errors_are_whole_sentences():
  """Anchored: each message is exactly the sentence naming the field, nothing glued around it; and
  'frozen', the name of the parameters in no group, cannot name a group."""
  with pytest.raises(ValueError, match=r"^config\.optim\.groups: 'frozen' is reserved for parameters in no group$"):
    optimizer.assign_groups(PARAMS, {"frozen": "clip/text_model/.*"})
  with pytest.raises(ValueError, match=r"^parameter temporal/w matches several groups in config\.optim\.groups: "
                     r"\['a', 'b'\]$"):
    optimizer.assign_groups(PARAMS, {"a": "temporal/.*", "b": ".*/w"})
  with pytest.raises(ValueError, match=r"^config\.optim\.groups: \['typo'\] match no parameter \(check the regexes\)$"):
    optimizer.assign_groups(PARAMS, {**GROUPS, "typo": "temporl/.*"})
  with pytest.raises(ValueError, match=r"^config\.optim\.groups\.a: bad regex '\(': missing \), unterminated "
                     r"subpattern at position 0$"):
    optimizer.assign_groups(PARAMS, {"a": "("})
  config = optim_config()
  config.name = "adam"
  with pytest.raises(ValueError, match=r"^config\.optim\.name='adam': only 'sgd' \(the official recipe\) exists$"):
    optimizer.make_optimizer(config, {("temporal", "w"): "temporal"}, 1)
  config = optim_config()
  config.lr = {"temporal": 1e-2}
  with pytest.raises(ValueError, match=r"^config\.optim\.lr has no learning rate for group\(s\) "
                     r"\['image_encoder', 'prompt_learner'\]$"):
    optimizer.make_optimizer(config, {("temporal", "w"): "temporal", ("clip", "k"): "prompt_learner",
                                      ("clip", "v"): "image_encoder"}, 1)


def test_grouped_optimizer_assigns_then_optimizes_only_the_trainable_params():
  """grouped_optimizer(params, config) = config.optim.groups' assignment, a transformation over the
  trainable params alone (first step by hand: -lr * (g + wd * p)) and one schedule per group."""
  assignment, tx, schedules = optimizer.grouped_optimizer(PARAMS, optim_config(milestones=(1,)), 2)
  assert assignment == optimizer.assign_groups(PARAMS, GROUPS)
  assert set(schedules) == set(LRS)
  for group, fn in schedules.items():  # rtol 1e-6; planted: no drop at step 2 (x10)
    np.testing.assert_allclose([fn(s) for s in (0, 1, 2)], np.array([1, 1, 0.1]) * LRS[group], rtol=1e-6)
  trainable, _ = param_tree.split_params(PARAMS, assignment)
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), trainable)
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  lr_of = {"temporal": LRS["temporal"], "clip": LRS["image_encoder"], "prompt_learner": LRS["prompt_learner"]}
  flat = traverse_util.flatten_dict(updates)
  assert flat.keys() == traverse_util.flatten_dict(trainable).keys()  # no frozen leaf in the update
  for path, p in traverse_util.flatten_dict(trainable).items():
    # rtol 1e-6; a wrong group's lr is off by 10x or more, a missing weight decay by 1e-4 * p / 0.5.
    np.testing.assert_allclose(flat[path], -lr_of[path[0]] * (0.5 + 1e-4 * np.asarray(p)), rtol=1e-6)
