"""The open-set config keys (``configs/common.py:add_openset``) at non-default values, each against
an expectation that does not come from the module under test: a loss and update written out here,
torch's SGD + MultiStepLR, hand-computed frame indices, patch windows and split tables.

Each test notes the bug it was checked against (planted in the library, seen to fail, removed).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import hesp_demo, hesp_mafw
from dferclip_jax.data import annotations, class_orders, pipeline
from dferclip_jax.models.clip import CLIP, normalize_pixels
from dferclip_jax.openset import experiment, hesp, hesp_train, splits
from dferclip_jax.tokenizer import tokenize
from dferclip_jax.train import model_setup, reporting
from dferclip_jax.train import optimizer as optimizer_lib
from dferclip_jax.train import sharding as sharding_lib
from dferclip_jax.train import state as state_lib

F64 = lambda x: np.asarray(jax.device_get(x), np.float64)


# ----------------------------------------------------------------------------- helpers


def tiny_config(**hesp_values):
  config = hesp_demo.get_config("epochs=1")
  config.max_steps, config.log_every, config.progress_bars = None, 1, False
  config.model.clip_arch.update(image_size=16, patch_size=8, width=16, layers=1, projection_dim=16)
  config.hesp.update(hesp_values)
  return config


def tiny_model(config, names=("happiness", "sadness"), n_ctx=2, patch_size=4):
  rng = jax.random.PRNGKey(0)
  words = experiment.prompt_words(config, names)
  clip_config, clip_params, tokenizer = model_setup.clip_and_tokenizer(
      config, sum(experiment.hesp_prompt_texts(config, names), []), rng)
  return hesp.build_hesp(clip_config, clip_params, words, tokenizer, rng=rng, n_ctx=n_ctx,
                         patch_size=patch_size, num_frames=2)


def write_clips(root: Path, num_clips: int, num_frames: int, num_classes: int = 2):
  """Clips of uniform 16 x 16 frames: frame i (0-based) has red 20 i + 5, so a sampled frame's
  index is read back from any pixel (crops and flips keep a uniform frame uniform); green and
  blue tell the clips apart. -> the records of the annotation list."""
  lines = []
  for c in range(num_clips):
    label = c % num_classes
    folder = root / f"clip{c}"
    folder.mkdir(parents=True)
    for i in range(num_frames):
      pixel = np.array([20 * i + 5, 40 + 100 * label, 30 + 25 * c], np.uint8)
      Image.fromarray(np.tile(pixel, (16, 16, 1))).save(folder / f"{i + 1}.png")
    lines.append(f"clip{c} {num_frames} {label}\n")
  (root / "list.txt").write_text("".join(lines))
  records, _ = annotations.read_annotation_list(root / "list.txt", num_classes, root=root)
  return records


def frame_index(video):
  """uint8 [..., T, S, S, 3] of ``write_clips`` frames -> their frame indices [..., T]."""
  red = np.asarray(video)[..., 0, 0, 0].astype(np.int64)
  assert np.all((red - 5) % 20 == 0), red
  return (red - 5) // 20


# ----------------------------------------------------------------------------- one train step


def _ce(logits, labels):
  logits = logits.astype(jnp.float32)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(logits.shape[0]), labels])


def _conloss(features, labels, t):
  """HESP's ConLoss written out: per anchor with positives, minus the mean log-probability of
  its positives against all other clips; times t."""
  f = features / jnp.linalg.norm(features, axis=1, keepdims=True)
  sim = f @ f.T / t
  n = f.shape[0]
  eye = jnp.eye(n, dtype=bool)
  log_prob = sim - jax.nn.logsumexp(jnp.where(eye, -jnp.inf, sim), axis=1, keepdims=True)
  pos = (labels[:, None] == labels[None, :]) & ~eye
  per = jnp.sum(jnp.where(pos, log_prob, 0.0), 1) / jnp.maximum(pos.sum(1), 1)
  has = pos.sum(1) > 0
  return -t * jnp.sum(jnp.where(has, per, 0.0)) / has.sum()


def _arpl(out, labels, temperature, weight_pl):
  own = out["points"][labels]
  distance = jnp.mean((out["visual"] - own) ** 2, axis=1)
  return (_ce(out["osr_logits"] / temperature, labels)
          + weight_pl * jnp.mean(jnp.maximum(0.0, distance - out["radius"] + 1.0)))


def reference_parts(model, variables, video, labels, h):
  out = model.apply(variables, video)
  k = out["unknown_logits"].shape[0]
  return {"clip": _ce(out["clip_logits"], labels),
          "contrastive": _conloss(out["visual"], labels, h.contrastive_temperature),
          "open_set": _arpl(out, labels, h.temperature, h.weight_pl),
          "unknown_prompts": _ce(out["unknown_logits"], jnp.arange(k)),
          "ensemble": _ce(out["logits"], labels)}


STEP_KEYS = dict(temperature=2.0, weight_pl=0.3, contrastive_temperature=0.2, normalized_step=10.0,
                 lr=0.05, lr_context=0.02, momentum=0.5, weight_decay=0.5)


@pytest.fixture(scope="module")
def one_step():
  """One HESP train step at non-default keys, the library's and a reference's inputs."""
  config = tiny_config(**STEP_KEYS)
  h = config.hesp
  model, variables = tiny_model(config)
  variables["params"]["radius"] = np.float32(0.5)  # weight decay on the radius shows at step 1
  rng = np.random.default_rng(0)
  video = rng.random((4, 2, 16, 16, 3)).astype(np.float32)
  labels = np.array([0, 1, 0, 1], np.int32)  # every clip has a positive: the contrastive term counts
  assignment, tx, _ = optimizer_lib.grouped_optimizer(variables["params"], hesp_train.optim_config(h), 1)
  host = state_lib.host_state(variables["params"], assignment,
                              collections={k: v for k, v in variables.items() if k != "params"})
  state = state_lib.new_state(host, tx)
  new, metrics = jax.jit(hesp_train.make_train_step(model, tx, h))(state, {"video": video, "label": labels})
  return config, model, variables, video, labels, jax.device_get(new), jax.device_get(metrics)



def open_set_scores(known, unknown, labels):
  """ACC, AUROC and OSCR by hand: every (known, unknown) pair counted, a tie as half."""
  ks, us = known.max(1), unknown.max(1)
  above = (ks[:, None] > us[None]) + 0.5 * (ks[:, None] == us[None])
  correct = known.argmax(1) == labels
  return {"openset/acc": 100 * correct.mean(), "openset/auroc": 100 * above.mean(),
          "openset/oscr": 100 * (above * correct[:, None]).mean()}

def test_train_step_losses_at_non_default_temperatures_and_weight(one_step):
  """hesp.temperature=2, hesp.weight_pl=0.3, hesp.contrastive_temperature=0.2: each loss term
  against the formulas written out here (numpy, float64) from the model's outputs.
  Planted: arpl_loss called without temperature (1.0); weight_pl fixed at 0.1; ConLoss at 0.5."""
  config, model, variables, video, labels, _, metrics = one_step
  h = config.hesp
  out = jax.tree.map(F64, model.apply(variables, video))
  y = labels

  def ce(z, t):
    z = z / t
    m = z.max(1, keepdims=True)
    return np.mean(np.log(np.exp(z - m).sum(1)) + m[:, 0] - z[np.arange(z.shape[0]), y])

  def arpl(temperature, weight_pl):
    d = np.mean((out["visual"] - out["points"][y]) ** 2, axis=1)
    return ce(out["osr_logits"], temperature) + weight_pl * np.mean(np.maximum(0, d - 0.5 + 1))

  def conloss(t):
    f = out["visual"] / np.linalg.norm(out["visual"], axis=1, keepdims=True)
    total = []
    for i in range(4):
      others = [j for j in range(4) if j != i]
      denom = np.log(sum(np.exp(f[i] @ f[j] / t) for j in others))
      total.append(-np.mean([f[i] @ f[j] / t - denom for j in others if y[j] == y[i]]))
    return t * np.mean(total)

  want_open, want_con = arpl(2.0, 0.3), conloss(0.2)
  np.testing.assert_allclose(metrics["train/loss/open_set"], want_open, rtol=1e-5)
  np.testing.assert_allclose(metrics["train/loss/contrastive"], want_con, rtol=1e-5)
  # Each planted default moves the value far beyond the tolerance (>= 100x).
  for wrong in (arpl(1.0, 0.3), arpl(2.0, 0.1)):
    assert abs(wrong - want_open) > 1e-3 * abs(want_open)
  assert abs(conloss(0.5) - want_con) > 1e-3 * abs(want_con)
  # The whole loss is the sum of the five terms written out here.
  parts = jax.tree.map(F64, reference_parts(model, variables, video, labels, h))
  np.testing.assert_allclose(metrics["train/loss"], sum(parts.values()), rtol=1e-5)
  for name, value in parts.items():
    np.testing.assert_allclose(metrics[f"train/loss/{name}"], value, rtol=1e-5, atol=1e-6)


def test_train_step_update_at_non_default_step_sizes(one_step):
  """hesp.normalized_step=10, hesp.lr=0.05, hesp.lr_context=0.02, hesp.weight_decay=0.5: the
  first update, written out (the gradient from the reference loss above, by jax.grad):
    perturbation p - 10 g/||g||;  unknown prompts u1 = u - 10 mean_k(g)/||mean_k(g)||, then
    u1 - lr (g + wd u1);  radius r - lr (g + wd r);  contexts c - lr_context (g + wd c)
  (torch SGD's first step: the momentum buffer is the decayed gradient).
  Planted: normalized_step fixed at 50; lr_context ignored (lr used); weight_decay fixed at 1e-4;
  lr fixed at 1e-2 -- each fails by >= 10x the tolerance."""
  config, model, variables, video, labels, new, _ = one_step
  h = config.hesp
  trainable = ("perturbation", "unknown_visual", "radius", "prompt_learner")
  params0 = {k: jnp.asarray(variables["params"][k]) if k != "prompt_learner"
             else {"ctx": jnp.asarray(variables["params"][k]["ctx"])} for k in trainable}
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(p):
    v = {"params": {**variables["params"], **p}, **rest}
    return sum(reference_parts(model, v, video, labels, h).values())

  g = jax.tree.map(F64, jax.jit(jax.grad(loss))(params0))
  p0 = jax.tree.map(F64, params0)
  got = jax.tree.map(F64, {k: new["params"][k] for k in trainable})
  s, lr, lr_ctx, wd = 10.0, 0.05, 0.02, 0.5

  want_p = p0["perturbation"] - s * g["perturbation"] / np.linalg.norm(g["perturbation"])
  mean_g = g["unknown_visual"].mean(0)
  u1 = p0["unknown_visual"] - s * mean_g / np.linalg.norm(mean_g)
  want_u = u1 - lr * (g["unknown_visual"] + wd * u1)
  want_r = p0["radius"] - lr * (g["radius"] + wd * p0["radius"])
  c0, gc = p0["prompt_learner"]["ctx"], g["prompt_learner"]["ctx"]
  want_c = c0 - lr_ctx * (gc + wd * c0)
  np.testing.assert_allclose(g["radius"], -0.3, rtol=1e-6)  # every margin active: -weight_pl

  def check(got_, want, start, tol=1e-3):
    # Compared as moves from the start, to a relative tolerance of the move.
    move = want - start
    np.testing.assert_allclose(got_ - start, move, atol=tol * np.abs(move).max())

  check(got["perturbation"], want_p, p0["perturbation"])
  assert np.linalg.norm(got["perturbation"] - p0["perturbation"]) == pytest.approx(10.0, rel=1e-4)
  check(got["unknown_visual"], want_u, p0["unknown_visual"])
  check(got["radius"], want_r, p0["radius"])
  check(got["prompt_learner"]["ctx"], want_c, c0)
  # The planted bugs' moves differ from these by far more than the tolerance.
  assert np.abs((lr * (gc + wd * c0)) - lr_ctx * (gc + wd * c0)).max() > 0.1 * np.abs(want_c - c0).max()
  assert abs(lr * (wd - 1e-4) * p0["radius"]) > 100 * 1e-3 * abs(want_r - p0["radius"])


def test_lr_context_zero_freezes_the_contexts(one_step):
  """hesp.lr_context=0 (vs 0.02 above): HESP's optimizer leaves the contexts where they are and
  still moves the radius by torch SGD's first step, -lr (g + wd r), on a gradient of ones.
  Planted: optim_config's context rate taken from hesp.lr instead of hesp.lr_context."""
  _, _, variables, _, _, _, _ = one_step
  h = tiny_config(**{**STEP_KEYS, "lr_context": 0.0}).hesp
  assignment, tx, _ = optimizer_lib.grouped_optimizer(variables["params"], hesp_train.optim_config(h), 1)
  trainable, _ = state_lib.split_params(variables["params"], assignment)
  grads = jax.tree.map(np.ones_like, trainable)
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  np.testing.assert_array_equal(np.asarray(updates["prompt_learner"]["ctx"]), 0.0)
  np.testing.assert_allclose(updates["radius"], -0.05 * (1.0 + 0.5 * 0.5), rtol=1e-6)


# ----------------------------------------------------------------------------- a tiny training run


def test_training_schedule_follows_torch_sgd_and_the_step_counts(tmp_path, monkeypatch):
  """A 6-step run: 4 clips of 9 frames, hesp.batch_size=2 (2 steps an epoch), hesp.epochs=3,
  hesp.milestones=(1, 2), hesp.lr=0.05, hesp.momentum=0.5, hesp.weight_decay=0.1,
  hesp.weight_pl=0.3, hesp.eval_every_epochs=2, hesp.num_frames=3.

  * The radius's gradient is -weight_pl at every step (every margin active), so its logged
    trajectory is torch.optim.SGD + MultiStepLR (stepped per epoch) fed that gradient.
  * Steps: 3 epochs x (4 // 2) = 6 logged steps; evaluations after epochs 2 and 3 (the end).
  * Each batch holds 2 clips of 3 frames, frame k drawn from segment k ({3k, 3k+1, 3k+2}).
  Planted: milestones ignored (no drop); momentum fixed at 0.9; weight_decay fixed at 1e-4;
  steps_per_epoch from the default batch size 64 (-> error); eval every epoch; num_frames 8."""
  torch = pytest.importorskip("torch")
  records = write_clips(tmp_path / "clips", num_clips=4, num_frames=9)
  keys = dict(batch_size=2, epochs=3, milestones=(1, 2), lr=0.05, momentum=0.5, weight_decay=0.1,
              weight_pl=0.3, eval_every_epochs=2, num_frames=3)
  config = tiny_config(**keys)
  model, variables = tiny_model(config)
  seen = []
  real_batches = pipeline.train_batches

  def recording_batches(*args, **kwargs):
    for batch in real_batches(*args, **kwargs):
      seen.append(batch["video"].copy())
      yield batch

  monkeypatch.setattr(hesp_train.pipeline, "train_batches", recording_batches)
  evaluated = []
  mesh = sharding_lib.make_mesh(config.mesh, num_devices=1)
  hesp_train.train_hesp(config, tmp_path / "run", model, variables, records, mesh,
                        on_eval=lambda step, v: evaluated.append(step) or {})

  logged = [r for r in reporting.read_metrics(tmp_path / "run") if "train/radius" in r]
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
  assert evaluated == [4, 6]
  assert len(seen) >= 6 and all(v.shape == (2, 3, 16, 16, 3) for v in seen[:6])
  for video in seen[:6]:
    assert (frame_index(video) // 3 == [0, 1, 2]).all(), frame_index(video)

  radius = torch.zeros((), requires_grad=True)
  opt = torch.optim.SGD([radius], lr=0.05, momentum=0.5, weight_decay=0.1)
  sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 2], gamma=0.1)
  want = []
  for _ in range(3):
    for _ in range(2):
      radius.grad = torch.tensor(-0.3)
      opt.step()
      want.append(float(radius.detach()))
    sched.step()
  got = [r["train/radius"] for r in logged]
  # The planted bugs move the radius by >= 2e-3 at some step (no drop: 0.03 at step 3).
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the model run_hesp builds


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """run_hesp at hesp.patch_size=6, hesp.n_ctx=3, hesp.num_frames=3, class_words="names", with
  training replaced by a recorder (the model and variables handed to it) and the evaluation's
  batches recorded."""
  tmp = tmp_path_factory.mktemp("built")
  records = write_clips(tmp / "clips", num_clips=6, num_frames=9, num_classes=3)
  config = tiny_config(patch_size=6, n_ctx=3, num_frames=3)
  config.openset.class_words = "names"
  config.class_names = ("happiness", "sadness", "fear")
  from dferclip_jax.data.sources import FolderSource
  source = FolderSource(records)
  data = splits.split_sources(source, source, config.class_names, ("happiness", "sadness"))
  handed, eval_videos = {}, []
  mp = pytest.MonkeyPatch()

  def fake_train(config_, workdir, model, variables, train, mesh, on_eval):
    handed.update(model=model, variables=variables)
    return variables

  real_eval = pipeline.eval_batches

  def recording_eval(*args, **kwargs):
    for batch in real_eval(*args, **kwargs):
      eval_videos.append((kwargs.get("num_frames"), batch["video"].copy()))
      yield batch

  mp.setattr(hesp_train, "train_hesp", fake_train)
  mp.setattr(experiment.pipeline, "eval_batches", recording_eval)
  mp.setattr(experiment, "test_selected", lambda workdir: {})
  try:
    mesh = sharding_lib.make_mesh(config.mesh, num_devices=1)
    result = experiment.run_hesp(config, tmp / "run", data, mesh)
  finally:
    mp.undo()
  return config, handed["model"], handed["variables"], result, eval_videos


def test_patch_size_places_a_patch_of_that_size(built):
  """hesp.patch_size=6: a 6 x 6 perturbation, added on rows/cols centre-3 .. centre+2 (here the
  position (2, 13) is clamped to (3, 12): rows 0..5, cols 9..14), checked by the CLIP features of
  frames patched here in numpy. Planted: run_hesp building the model at the default patch size
  (56 -> refused for a 16-pixel frame) or the demo's 8 (wrong window: the features differ)."""
  _, model, variables, _, _ = built
  assert model.patch_size == 6 and variables["params"]["perturbation"].shape == (6, 6, 3)
  rng = np.random.default_rng(1)
  v = jax.tree.map(np.asarray, variables)
  v["params"]["perturbation"] = rng.uniform(-0.3, 0.3, (6, 6, 3)).astype(np.float32)
  v["patch"]["position"] = np.array([2, 13], np.int32)
  video = rng.random((1, 2, 16, 16, 3)).astype(np.float32)
  patched = video[0].copy()
  patched[:, 0:6, 9:15] += v["params"]["perturbation"]
  clip = CLIP(model.clip_config)
  want = np.asarray(clip.apply({"params": v["params"]["clip"]}, normalize_pixels(patched),
                               method=CLIP.encode_image)).mean(0)
  got = np.asarray(model.apply(v, video)["visual"][0])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  shifted = video[0].copy()
  shifted[:, 1:7, 9:15] += v["params"]["perturbation"]  # a window one row off: must differ
  other = np.asarray(clip.apply({"params": v["params"]["clip"]}, normalize_pixels(shifted),
                                method=CLIP.encode_image)).mean(0)
  assert np.abs(other - want).max() > 100 * 1e-4 * np.abs(want).max()


def test_n_ctx_and_class_words_make_the_prompts(built):
  """hesp.n_ctx=3 and openset.class_words="names": contexts [2, 3, width]; the class prompts are
  the tokens of "X X X happiness." / "X X X sadness." and the unknown prompts those of "This video
  is not happiness." ..., tokenized here from the hand-written texts.
  Planted: build_hesp called with the default n_ctx (16); class_words ignored ("hesp": Happy)."""
  config, model, variables, result, _ = built
  assert result["prompt_words"] == ["happiness", "sadness"]
  width = model.clip_config.text_config.hidden_size
  assert model.n_ctx == 3 and variables["params"]["prompt_learner"]["ctx"].shape == (2, 3, width)
  texts = ["X X X happiness.", "X X X sadness.", "This video is not happiness.",
           "This video is not sadness."]
  _, _, tokenizer = model_setup.clip_and_tokenizer(
      config, sum(experiment.hesp_prompt_texts(config, ("happiness", "sadness")), []),
      jax.random.PRNGKey(0))
  ids, _ = tokenize(tokenizer, texts, model.context_length)
  np.testing.assert_array_equal(variables["prompts"]["ids"], ids[:2])
  np.testing.assert_array_equal(variables["unknown_prompts"]["ids"], ids[2:])


def test_num_frames_samples_the_evaluation_frames(built):
  """hesp.num_frames=3: the evaluation reads 3 frames of each 9-frame clip, the segment centres
  int(1.5 + 3 k) = 1, 4, 7 (by hand). Planted: run_hesp's evaluation at data.num_frames (4 in the
  demo config) -> frames 1, 3, 5, 7."""
  _, _, _, _, eval_videos = built
  scored = [v for n, v in eval_videos if n != 1]  # the attention peak reads one frame of a clip
  assert scored and all(n == 3 for n, _ in eval_videos if n != 1)
  real = np.concatenate([v[v[:, 0, 0, 0, 0] > 0] for v in scored])  # the padding rows are black
  assert real.shape[:2] == (6, 3)  # 4 known + 2 unknown test clips, once each
  assert (frame_index(real) == [1, 4, 7]).all()


# ----------------------------------------------------------------------------- the protocol's loop


class FakeSource:
  """Just what split_sources needs of a built source."""

  def __init__(self, records):
    self.records = list(records)

  def subset(self, records):
    return FakeSource(records)

  def __len__(self):
    return len(self.records)


def _protocol(tmp_path, monkeypatch, config):
  """run_openset with the data and the methods replaced by recorders -> (calls, results,
  the config open_data saw)."""
  from dferclip_jax.data.records import ClipRecord
  names = tuple(config.class_names)
  records = [ClipRecord(f"c{i}", 8, i % len(names)) for i in range(2 * len(names))]
  seen_config = {}

  class Bundle:
    train_source, test_source = FakeSource(records), FakeSource(records)

  def open_data(config_, workdir):
    seen_config["config"] = config_
    return Bundle()

  calls = []

  def recorder(method):
    def run(config_, workdir, data, mesh):
      calls.append((method, Path(workdir).name, data.known_names,
                    sorted({r.label for r in data.train.records}),
                    sorted({r.label for r in data.test_unknown.records})))
      return {"openset/acc": 1.0, "openset/auroc": 2.0, "openset/oscr": 3.0}
    return run

  monkeypatch.setattr(experiment.data_setup, "open_data", open_data)
  for m in experiment.METHODS:
    monkeypatch.setattr(experiment, f"run_{m}", recorder(m))
  results = experiment.run_openset(config, tmp_path)
  return calls, results, seen_config.get("config")


def _mafw_config(tmp_path, method="hesp"):
  config = hesp_mafw.get_config(f"clips=fold,method={method}")
  for field in ("train_list", "test_list"):
    (tmp_path / f"{field}.txt").write_text("x 8 0\n")
    config.data[field] = str(tmp_path / f"{field}.txt")
  if method == "zeroshot_clip":
    config.model.clip = str(tmp_path)  # never read: the method's run is a recorder
  return config


@pytest.mark.parametrize("method", ["hesp", "dferclip_msp", "zeroshot_clip"])
def test_splits_dataset_and_method_pick_what_runs(tmp_path, monkeypatch, method):
  """openset.hesp_dataset="MAFW" (the demo's is DFEW), openset.splits=(4, 0), openset.method:
  exactly splits 4 then 0, in that order, of HESP's MAFW table, by hand: split 4 = [2, 8, 9] ->
  fear, anxiety, helplessness; split 0 = [10, 5, 6] -> sadness, surprise, disappointment; each
  run by the named method only; train labels 0..2, the unknown test clips the other 8 classes.
  Planted: splits ignored (all 20 run); hesp_dataset fixed at DFEW; the dispatch always hesp."""
  (tmp_path / "lists").mkdir()
  config = _mafw_config(tmp_path / "lists", method)
  config.openset.splits = (4, 0)
  calls, results, _ = _protocol(tmp_path / "run", monkeypatch, config)
  names = class_orders.DFERCLIP_11  # the MAFW config's class order
  known = {4: ("fear", "anxiety", "helplessness"), 0: ("sadness", "surprise", "disappointment")}
  want = []
  for k in (4, 0):
    unknown = sorted(names.index(n) for n in names if n not in known[k])
    want.append((method, f"split_{k:02d}", known[k], [0, 1, 2], unknown))
  assert calls == want
  assert [r["split"] for r in results["splits"]] == [4, 0] and results["method"] == method
  assert results["dataset"] == "MAFW"


def test_empty_splits_run_all_twenty(tmp_path, monkeypatch):
  """openset.splits=() (the default) runs the 20 splits 0..19; hesp_dataset="DFEW" reads DFEW's
  table: split 0 = [6, 1] -> disgust, surprise (by hand). Planted: MAFW's table read instead."""
  (tmp_path / "lists").mkdir()
  config = _mafw_config(tmp_path / "lists")
  config.openset.hesp_dataset = "DFEW"
  config.openset.splits = ()
  calls, _, _ = _protocol(tmp_path / "run", monkeypatch, config)
  assert [c[1] for c in calls] == [f"split_{k:02d}" for k in range(20)]
  assert calls[0][2] == ("disgust", "surprise")


def test_hesp_mafw_clips_replace_the_lists(tmp_path, monkeypatch):
  """openset.clips="hesp_mafw": the data is read from HESP's lists resolved under data.root
  (4,088 train / 1,022 test lines, the first train line clip 09314, 83 frames, anger: HESP's
  MAFW_train.txt line 1 "... 09314 83 0 Angry", labels in the config's class order), where
  "data_lists" keeps config.data's own lists. Planted: the clips key ignored."""
  (tmp_path / "lists").mkdir()
  (tmp_path / "MAFW" / "data" / "frames").mkdir(parents=True)
  config = _mafw_config(tmp_path / "lists")
  config.openset.splits = (4,)
  own = config.data.train_list
  _, _, seen = _protocol(tmp_path / "run_lists", monkeypatch, config)
  assert seen.data.train_list == own
  config.openset.clips = "hesp_mafw"
  config.data.root = str(tmp_path / "MAFW")
  _, _, seen = _protocol(tmp_path / "run_hesp", monkeypatch, config)
  train = Path(seen.data.train_list).read_text().splitlines()
  test = Path(seen.data.test_list).read_text().splitlines()
  assert (len(train), len(test)) == (4088, 1022)
  assert train[0] == f"data/frames/09314 83 {class_orders.DFERCLIP_11.index('anger')}"
  assert Path(seen.data.train_list).parent == tmp_path / "run_hesp" / "hesp_mafw_lists"


def test_hesp_method_scores_by_the_ensemble_logits(built):
  """openset.method="hesp" scores a split by its ensemble logits, raw (max = known-ness), not by
  a softmax as the baselines: ACC, AUROC and OSCR recomputed here in numpy from the model's
  logits on the evaluated clips (pairs counted by hand). Planted: run_hesp evaluating with
  use_softmax=True (the baselines' scoring) -> a different AUROC."""
  _, model, variables, result, eval_videos = built
  known_video, unknown_video = [v for n, v in eval_videos if n != 1]
  known_video, unknown_video = known_video[:4], unknown_video[:2]  # the rest is padding
  logits = lambda video: F64(model.apply(variables, video)["logits"])
  known, unknown = logits(known_video), logits(unknown_video)
  labels = np.array([0, 1, 0, 1])  # clips 0, 1, 3, 4 (happiness, sadness, ...)
  assert (known_video[:, 0, 0, 0, 1] == 40 + 100 * labels).all()

  want = open_set_scores(known, unknown, labels)
  for key, value in want.items():
    assert result[key] == pytest.approx(value, abs=1e-6), key
  log_softmax = lambda z: z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
  softmax_scored = open_set_scores(log_softmax(known), log_softmax(unknown), labels)  # the planted scoring
  assert abs(softmax_scored["openset/auroc"] - want["openset/auroc"]) >= 10.0


def test_zeroshot_clip_method_scores_by_the_max_softmax(tmp_path, monkeypatch, clip_tokenizer_dir):
  """openset.method="zeroshot_clip" scores by the maximum softmax probability of zero-shot CLIP's
  logits: ACC, AUROC and OSCR recomputed here in numpy (softmax by hand, pairs counted) from the
  model's logits on the evaluated clips. Planted: run_zeroshot_clip scoring the raw logits
  (use_softmax=False, HESP's scoring) -> a different AUROC."""
  import shutil
  from dferclip_jax.data.sources import FolderSource
  from dferclip_jax.models import clip_config, zeroshot
  from dferclip_jax.models.clip import init_clip_params
  from dferclip_jax.models.clip_checkpoint import save_clip
  arch = clip_config.tiny(image_size=16, patch_size=8, width=16, layers=1, projection_dim=16)
  params = jax.tree.map(np.asarray, init_clip_params(CLIP(arch), jax.random.PRNGKey(3)))
  clip_dir = save_clip(tmp_path / "clip", arch, params, formats=("msgpack",))
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(clip_tokenizer_dir / name, clip_dir / name)
  config = hesp_demo.get_config("method=zeroshot_clip")
  config.model.clip, config.progress_bars = str(clip_dir), False
  records = write_clips(tmp_path / "clips", num_clips=9, num_frames=9, num_classes=3)
  source = FolderSource(records)  # labels 0, 1, 2: happiness, sadness, neutral of the demo order
  data = splits.split_sources(source, source, config.class_names, ("happiness", "sadness"))
  built_, videos = {}, []
  real_build, real_eval = zeroshot.build_zeroshot, pipeline.eval_batches

  def build(*args, **kwargs):
    built_["model"], built_["variables"] = real_build(*args, **kwargs)
    return built_["model"], built_["variables"]

  def recording_eval(*args, **kwargs):
    for batch in real_eval(*args, **kwargs):
      videos.append(batch["video"].copy())
      yield batch

  monkeypatch.setattr(zeroshot, "build_zeroshot", build)
  monkeypatch.setattr(experiment.pipeline, "eval_batches", recording_eval)
  result = experiment.run_zeroshot_clip(config, tmp_path / "run", data,
                                        sharding_lib.make_mesh(config.mesh, num_devices=1))
  assert len(videos) == 2  # one batch of the 6 known, one of the 3 unknown test clips
  model, variables = built_["model"], built_["variables"]
  known = F64(model.apply(variables, videos[0][:6]))
  unknown = F64(model.apply(variables, videos[1][:3]))
  labels = np.array([0, 1, 0, 1, 0, 1])  # clips 0, 1, 3, 4, 6, 7

  softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
  want = open_set_scores(softmax(known), softmax(unknown), labels)
  for key, value in want.items():
    assert result[key] == pytest.approx(value, abs=1e-6), key
  raw = open_set_scores(known, unknown, labels)  # the planted scoring
  assert abs(raw["openset/auroc"] - want["openset/auroc"]) >= 10.0
