"""``config.hesp.official=True``, the points of the official code (github cosinehuang/HESP at
37b1bed) that the switch tests do not cover: the official loader's epochs (ceil(N / batch) steps,
the partial last batch masked), the frames of a clip in plain string order, the attention peak's
red band and largest external contour, and HESP's own best-epoch row.

Each test counts its expectation by hand or from the official formula; the docstrings name the
bug planted (in a copy) that the test was checked to catch.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dferclip_jax.data import pipeline
from dferclip_jax.openset import hesp_train
from dferclip_jax.train import reporting
from dferclip_jax.train import sharding as sharding_lib

from test_openset_switches import frame_index, reference_parts, tiny_config, tiny_model, write_clips


# ----------------------------------------------------------------------------- epochs and lr


def test_official_epochs_keep_the_partial_last_batch_and_drop_the_lr_there(tmp_path, monkeypatch):
  """5 clips, batch 2, 3 epochs, milestones (1, 2): the official DataLoader (drop_last=False)
  makes ceil(5 / 2) = 3 steps an epoch, the last with 1 clip, 9 steps in all, and MultiStepLR
  (stepped per epoch) drops the lr after steps 3 and 6. With momentum and weight decay 0, the
  radius's gradient is -weight_pl at every step (every margin active; the masked mean over the
  real clips keeps it so on the one-clip batch), so step k moves it by exactly lr_k * weight_pl:
  0.05 * 0.3 at steps 1-3, 0.005 * 0.3 at 4-6, 0.0005 * 0.3 at 7-9. Each epoch reads every clip
  once. The batch is sharded over 2 devices: the padding keeps one shape on the mesh.
  Planted: floor(N / batch) steps (6 steps, drops after 2 and 4); milestones at the closed-set
  trainer's floor-based steps (drops after steps 2 and 4); the contrastive loss's log of a zero
  denominator (the one-clip batch: NaN gradient, the run stops at step 3). (The padding in the margin mean does
  not move this radius, every margin being active: the padded-batch test below catches it.)"""
  records = write_clips(tmp_path / "clips", num_clips=5, num_frames=9)
  config = tiny_config(official=True, batch_size=2, epochs=3, milestones=(1, 2), lr=0.05,
                       momentum=0.0, weight_decay=0.0, weight_pl=0.3, eval_every_epochs=1,
                       num_frames=3)
  assert hesp_train.training_length(config, 5) == (3, 9)
  model, variables = tiny_model(config)
  seen = []
  real_batches = pipeline.train_batches

  def recording_batches(*args, **kwargs):
    for batch in real_batches(*args, **kwargs):
      seen.append({k: np.array(v) for k, v in batch.items()})
      yield batch

  monkeypatch.setattr(hesp_train.pipeline, "train_batches", recording_batches)
  evaluated = []
  mesh = sharding_lib.make_mesh(config.mesh, num_devices=2)
  hesp_train.train_hesp(config, tmp_path / "run", model, variables, records, mesh,
                        on_eval=lambda step, v: evaluated.append(step) or {})

  logged = [r for r in reporting.read_metrics(tmp_path / "run") if "train/radius" in r]
  assert [r["step"] for r in logged] == list(range(1, 10))
  assert evaluated == [3, 6, 9]
  masks = [b["mask"].tolist() for b in seen[:9]]
  assert masks == [[True, True], [True, True], [True, False]] * 3
  for epoch in range(3):  # every clip once per epoch (blue tells the clips apart: 30 + 25 c)
    batches = seen[3 * epoch:3 * epoch + 3]
    clips = [int(b["video"][i, 0, 0, 0, 2] - 30) // 25 for b in batches for i in range(2) if b["mask"][i]]
    assert sorted(clips) == [0, 1, 2, 3, 4], clips
  radius = np.array([0.0] + [r["train/radius"] for r in logged])
  want = np.array([0.05] * 3 + [0.005] * 3 + [0.0005] * 3) * 0.3
  np.testing.assert_allclose(np.diff(radius), want, rtol=1e-4, atol=1e-8)


def test_closed_set_epochs_stay_without_official(tmp_path):
  """official=False keeps the closed-set trainer's full batches: floor(5 / 2) = 2 steps an epoch,
  and its batches carry no mask. Planted: ceil without the switch."""
  config = tiny_config(official=False, batch_size=2, epochs=3)
  assert hesp_train.training_length(config, 5) == (2, 6)
  records = write_clips(tmp_path / "clips", num_clips=5, num_frames=4)
  batch = next(pipeline.train_batches(records, augmentation="mafw", batch_size=2, image_size=16,
                                      num_frames=2, seed=0))
  assert set(batch) == {"video", "label"}


def test_padded_batch_loss_and_gradient_equal_those_of_its_real_clips():
  """A batch of 3 real clips padded to 4 (the padding a copy of clip 0, same label), masked:
  every loss term, and the gradient, equal those of the 3 real clips alone, computed by the
  reference formulas of the switch tests (HESP's ConLoss, CE, ARPL written out).
  Planted: the mask ignored in the contrastive loss (the copy adds a positive to clip 0); in
  the CE (the copy is counted twice); the padding row left in the contrastive denominators."""
  config = tiny_config(official=True, contrastive_temperature=0.2, temperature=2.0, weight_pl=0.3)
  h = config.hesp
  model, variables = tiny_model(config)
  rng = np.random.default_rng(0)
  real = rng.random((3, 2, 16, 16, 3)).astype(np.float32)
  labels = np.array([0, 1, 0], np.int32)
  video = np.concatenate([real, real[:1]])
  padded_labels = np.concatenate([labels, labels[:1]])
  mask = np.array([True, True, True, False])

  got = hesp_train.loss_parts(model.apply(variables, video), padded_labels, h, mask)
  want = reference_parts(model, variables, real, labels, h)
  for key in want:
    np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-5, atol=1e-6, err_msg=key)

  def total(params, v, y, m):
    out = model.apply({**variables, "params": params}, v)
    return sum(hesp_train.loss_parts(out, y, h, m).values())

  g_padded = jax.grad(total)(variables["params"], video, padded_labels, mask)
  g_real = jax.grad(total)(variables["params"], real, labels, None)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_padded), jax.tree_util.tree_leaves(g_real)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- frame order


# The official loader's order of frames 1..12 named without zero padding: glob + sort(), by hand.
STRING_ORDER = ["1.png", "10.png", "11.png", "12.png", "2.png", "3.png", "4.png", "5.png",
                "6.png", "7.png", "8.png", "9.png"]


def _run_hesp_recording(tmp_path, official: bool):
  """run_hesp on 12-frame clips (frames 1.png .. 12.png), 4 frames a clip, training replaced by
  a recorder -> (the training source it was handed, the first evaluation batch's frame indices)."""
  from dferclip_jax.data.sources import FolderSource
  from dferclip_jax.openset import experiment, splits
  records = write_clips(tmp_path / "clips", num_clips=4, num_frames=12)
  config = tiny_config(official=official, num_frames=4)
  config.class_names = ("happiness", "sadness")
  source = FolderSource(records)
  data = splits.split_sources(source, source, config.class_names, ("happiness",))
  handed, evaluated = {}, []
  real_eval = pipeline.eval_batches

  def fake_train(config_, workdir, model, variables, train, mesh, on_eval):
    handed["train"] = train
    return variables

  def recording_eval(*args, **kwargs):
    for batch in real_eval(*args, **kwargs):
      if kwargs.get("num_frames") == 4:  # not the attention peak's one-frame read
        evaluated.append(frame_index(batch["video"][0]).tolist())
      yield batch

  mp = pytest.MonkeyPatch()
  mp.setattr(hesp_train, "train_hesp", fake_train)
  mp.setattr(experiment.pipeline, "eval_batches", recording_eval)
  mp.setattr(experiment, "test_selected", lambda workdir: {})
  try:
    experiment.run_hesp(config, tmp_path / "run", data, sharding_lib.make_mesh(config.mesh, num_devices=1))
  finally:
    mp.undo()
  return handed["train"], evaluated[0], tmp_path / "clips" / "clip0"


def test_official_frames_are_read_in_plain_string_order(tmp_path):
  """Frames 1..12 without zero padding: with official=True the HESP path reads them as the
  official loader does (glob + sorted(): 1, 10, 11, 12, 2, ..., 9, which is sorted(os.listdir)),
  in training and in evaluation: the test sampler's frames 1, 4, 7, 10 of a 12-frame clip at 4
  frames (tick 3) are the files 10.png, 2.png, 5.png, 8.png, i.e. frame indices 9, 1, 4, 7.
  Planted: run_hesp not reordering (natural order 0, 3, 6, 9); a numeric sort key."""
  train, first, folder = _run_hesp_recording(tmp_path, official=True)
  assert sorted(os.listdir(folder)) == STRING_ORDER
  assert [os.path.basename(p) for p, _ in train.clip_frames(0)] == STRING_ORDER
  assert first == [9, 1, 4, 7]


def test_frames_stay_in_natural_order_without_official(tmp_path):
  """official=False keeps our natural order (2.png before 10.png). Planted: reordering always."""
  train, first, _ = _run_hesp_recording(tmp_path, official=False)
  assert [os.path.basename(p) for p, _ in train.clip_frames(0)] == [f"{i}.png" for i in range(1, 13)]
  assert first == [1, 4, 7, 10]


# ----------------------------------------------------------------------------- the attention peak


def test_jet_red_band_is_levels_201_up_by_hand():
  """OpenCV's JET is red = 255, blue = 0, green = 4 (223 - level) on its upper part; its 8-bit
  hue is round(30 G / 255); hue <= 10 from level 201 up (level 200: G 92, hue 11). Planted:
  JET_RED_LEVEL 202 (the float rule's 0.7917 * 255 = 201.9, rounded up)."""
  from dferclip_jax.openset import contours
  red = [level for level in range(160, 256)
         if round(30 * 4 * max(223 - level, 0) / 255) <= 10]
  assert red == list(range(contours.JET_RED_LEVEL, 256)) == list(range(201, 256))


def test_jet_red_band_against_opencv():
  """cv2.applyColorMap(JET) of every uint8 level, cv2.cvtColor(BGR2HSV), cv2.inRange((0, 50, 50),
  (10, 255, 255)), the official chain: red exactly at levels 201..255. Planted: JET_RED_LEVEL 202."""
  cv2 = pytest.importorskip("cv2")
  from dferclip_jax.openset import contours
  levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
  hsv = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2HSV)
  red = cv2.inRange(hsv, np.array([0, 50, 50]), np.array([10, 255, 255])).reshape(-1) > 0
  np.testing.assert_array_equal(np.nonzero(red)[0], np.arange(contours.JET_RED_LEVEL, 256))


def _heat(shape, *regions):
  heat = np.zeros(shape, np.uint8)
  for rows, cols in regions:
    heat[rows, cols] = 230  # red (>= 201)
  return heat


def test_official_peak_takes_the_largest_contour_area_not_the_most_pixels():
  """Hand-built red bands (x = col, y = row; a contour runs through the pixel centres):
  * a hollow 7 x 7 ring, rows/cols 5..11 (24 pixels; contour area 6 x 6 = 36, centroid (8, 8))
    and a filled 5 x 5 square, rows 30..34, cols 40..44 (25 pixels; area 4 x 4 = 16): the most
    pixels is the square, the largest contour the ring -> (8, 8);
  * a 3 x 3 square, rows/cols 10..12, with a one-pixel tail along row 11, cols 13..18: the tail
    has no area, so the contour's centroid is the square's (11, 11), where the pixels' mean
    column is (9 * 11 + 13 + ... + 18) / 15 = 12.8 -> (11, 12);
  (A region inside a hole, which RETR_EXTERNAL leaves out, could never win: the contour around
  the hole encloses it.) Planted: regions ranked by pixel count; the centroid as the mean of
  the region's pixels."""
  from dferclip_jax.openset import hesp
  ring = _heat((64, 64), (slice(5, 12), slice(5, 12)))
  ring[6:11, 6:11] = 0
  ring[30:35, 40:45] = 230
  np.testing.assert_array_equal(hesp.red_band_peak(ring), [8, 8])
  tail = _heat((32, 32), (slice(10, 13), slice(10, 13)), (11, slice(13, 19)))
  np.testing.assert_array_equal(hesp.red_band_peak(tail), [11, 11])


def test_official_peak_chain_against_opencv():
  """On random uint8 maps (a 7 x 7 map resized to 224, as the official CAM is, and random masks
  with many regions): our resize equals cv2.resize(INTER_LINEAR_EXACT), and the red band's
  largest contour by cv2.contourArea and its cv2.moments centroid, int(m01 / m00),
  int(m10 / m00), equal ours. Planted: contours in raster order (ties between equal areas go
  the other way); the moments' orientation sign dropped (negative areas never win)."""
  cv2 = pytest.importorskip("cv2")
  from dferclip_jax.openset import contours, hesp
  rng = np.random.default_rng(0)

  def official(heat):
    mask = cv2.inRange(cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2HSV),
                       np.array([0, 50, 50]), np.array([10, 255, 255]))
    found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    best, best_area = None, 0
    for contour in found:
      if cv2.contourArea(contour) > best_area:
        best, best_area = contour, cv2.contourArea(contour)
    if best is None:
      return None
    m = cv2.moments(best)
    return [int(m["m01"] / m["m00"]), int(m["m10"] / m["m00"])]

  for trial in range(6):
    cam = rng.integers(0, 256, (7, 7), dtype=np.uint8)
    heat = contours.resize_bilinear_uint8(cam, 224)
    np.testing.assert_array_equal(heat, cv2.resize(cam, (224, 224), interpolation=cv2.INTER_LINEAR_EXACT))
    assert hesp.red_band_peak(heat).tolist() == official(heat)
  for trial in range(60):
    h, w = rng.integers(4, 24, 2)
    heat = np.where(rng.random((h, w)) < rng.uniform(0.3, 0.7), 230, 0).astype(np.uint8)
    if trial % 3 == 0:  # equal squares: the first in OpenCV's order wins
      heat[:] = 0
      heat[1:4, 1:4] = heat[h - 4:h - 1, w - 4:w - 1] = 230
    want = official(heat)
    if want is not None:
      assert hesp.red_band_peak(heat).tolist() == want, trial


def test_run_hesp_finds_the_peak_by_the_official_chain(tmp_path, monkeypatch):
  """run_hesp hands hesp.official to attention_peak. Planted: the flag not passed."""
  from dferclip_jax.openset import hesp
  seen = []
  real = hesp.attention_peak
  monkeypatch.setattr(hesp, "attention_peak", lambda *a, **k: seen.append(k.get("official")) or real(*a, **k))
  _run_hesp_recording(tmp_path / "on", official=True)
  _run_hesp_recording(tmp_path / "off", official=False)
  assert seen == [True, False]


# ----------------------------------------------------------------------------- the tables


# Per split: (final model, exact), (test-selected epoch, exact), (that epoch, HESP's metrics).
SPLIT_SCORES = {
    4: ((50.0, 60.0, 40.0), (52.0, 65.0, 45.0), (64.0, 44.0)),
    0: ((70.0, 80.0, 55.0), (71.0, 82.0, 58.0), (81.5, 57.0)),
    7: ((30.0, 61.0, 20.0), (35.0, 66.0, 24.0), (65.0, 23.5)),
}


def _protocol_run(tmp_path, monkeypatch, official: bool = True):
  """run_openset on MAFW splits 4, 0, 7 with the data and run_hesp replaced: each split's result
  from SPLIT_SCORES -> (results, the splits run_hesp trained, the printed output)."""
  from dferclip_jax.openset import experiment
  from test_openset_switches import FakeSource, _mafw_config
  from dferclip_jax.data.records import ClipRecord
  (tmp_path / "lists").mkdir(exist_ok=True)
  config = _mafw_config(tmp_path / "lists")
  config.openset.splits = (4, 0, 7)
  config.hesp.official = official
  names = tuple(config.class_names)
  records = [ClipRecord(f"c{i}", 8, i % len(names)) for i in range(2 * len(names))]

  class Bundle:
    train_source, test_source = FakeSource(records), FakeSource(records)

  trained = []

  def run_hesp(config_, workdir, data, mesh):
    split = int(workdir.name.split("_")[1])
    trained.append(split)
    final, best, best_official = SPLIT_SCORES[split]
    keys = ("openset/acc", "openset/auroc", "openset/oscr")
    selected = {"step": 10, **dict(zip(keys, best))}
    out = dict(zip(keys, final))
    if config_.hesp.official:
      selected.update(zip(experiment.OFFICIAL_SCORES, best_official))
      out.update(zip(experiment.OFFICIAL_SCORES, (0.0, 0.0)))
    return {**out, "test_selected": selected}

  monkeypatch.setattr(experiment.data_setup, "open_data", lambda config_, workdir: Bundle())
  monkeypatch.setattr(experiment, "run_hesp", run_hesp)
  return experiment.run_openset(config, tmp_path / "run"), trained


def test_best_epoch_row_in_hesp_metrics(tmp_path, monkeypatch, capsys):
  """official=True: the printed table and the json have the row the official code prints, its
  best epoch (best AUROC + OSCR on the test clips) in its own metrics: ACC of that epoch, HESP's
  AUROC and OSCR. By hand over splits 4, 0, 7: ACC (52 + 71 + 35) / 3 = 52.67, AUROC (64 + 81.5
  + 65) / 3 = 70.17, OSCR (44 + 57 + 23.5) / 3 = 41.50. Planted: the row in our metrics
  (AUROC 71.00); the row missing."""
  results, _ = _protocol_run(tmp_path, monkeypatch)
  s = results["summary"]
  assert s["hesp_figure/openset/acc"]["values"] == [52.0, 71.0, 35.0]
  assert s["hesp_figure/openset/auroc"]["values"] == [64.0, 81.5, 65.0]
  assert s["hesp_figure/openset/oscr"]["values"] == [44.0, 57.0, 23.5]
  printed = capsys.readouterr().out
  row = next(line for line in printed.splitlines() if "best epoch, HESP's metrics" in line)
  assert "ACC 52.67" in row and "AUROC 70.17" in row and "OSCR 41.50" in row, row


def test_paper_table_by_hand_and_rewritten_unchanged(tmp_path, monkeypatch):
  """paper_table.json / .md: mean +- std (population, ddof 0) over the splits, from each split's
  openset.json, computed here with numpy: our final model in the exact metrics, HESP's figure
  (test-selected epoch, HESP's metrics with official=True, ours without); HESP's published
  numbers "not found" (none were read). A second run_openset trains nothing and writes the same
  files. Planted: std with ddof 1; HESP's figure from the final model; the official row read
  from our metrics; the table left unwritten on the second call."""
  import json
  for official in (True, False):
    work = tmp_path / str(official)
    work.mkdir()
    _, trained = _protocol_run(work, monkeypatch, official)
    assert sorted(trained) == [0, 4, 7]
    run = work / "run"
    table = json.loads((run / "paper_table.json").read_text())
    splits = [json.loads((run / f"split_{k:02d}" / "openset.json").read_text()) for k in (4, 0, 7)]
    assert table["splits"] == [4, 0, 7]
    final, figure = table["rows"]
    figure_keys = (("openset/acc", "openset/auroc_official", "openset/oscr_official") if official
                   else ("openset/acc", "openset/auroc", "openset/oscr"))
    for key, fig_key in zip(("openset/acc", "openset/auroc", "openset/oscr"), figure_keys):
      ours = np.array([s[key] for s in splits])
      hesp_ = np.array([s["test_selected"][fig_key] for s in splits])
      assert final[key] == pytest.approx({"mean": ours.mean(), "std": ours.std(ddof=0)}, abs=1e-12)
      assert figure[key] == pytest.approx({"mean": hesp_.mean(), "std": hesp_.std(ddof=0)}, abs=1e-12)
    assert ("HESP's metrics" in figure["name"]) == official
    assert table["published"]["numbers"] == "not found"
    markdown = (run / "paper_table.md").read_text()
    assert f"| {final['name']} | 50.00 ± 16.33 | 67.00 ± 9.20 | 38.33 ± 14.34 |" in markdown
    assert "| HESP published | not found | not found | not found |" in markdown
    before = {p: (run / p).read_bytes() for p in ("paper_table.json", "paper_table.md")}
    for p in before:
      (run / p).unlink()
    _, again = _protocol_run(work, monkeypatch, official)
    assert again == []
    assert {p: (run / p).read_bytes() for p in before} == before
