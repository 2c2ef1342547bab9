"""--mode=reproduce: DFER-CLIP's table from tiny DFEW and MAFW replicas in their publishers' layouts.

The acceptance run: ``main.py --mode=reproduce`` is killed (SIGKILL) during its third run, started
again to finish the rest, and then invoked once more, which must train nothing and write the same
table. The table's mean +- std are checked against ``statistics`` on each run's results.json.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dferclip_jax import crossval, reproduce
from dferclip_jax.data import class_orders

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = '''
import ml_collections
from configs import common

def get_config(arg=None):
  c = common.dataset_config("dfew", 1)
  c.model.clip = ""
  c.model.clip_arch = ml_collections.ConfigDict(dict(image_size=16, patch_size=8, width=16, layers=1,
                                                     projection_dim=16))
  c.model.n_ctx = 2
  c.model.text_type = "class_names"
  c.model.temporal_heads = 2
  c.model.temporal_dim_head = 8
  c.model.temporal_mlp_dim = 32
  c.data.num_frames = 4
  c.optim.milestones = (20, 25)
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_epochs = 30           # 2 steps per epoch: 60 steps, so that a kill lands mid-run
  c.eval_every_epochs = 10
  c.checkpoint_every = 20         # the kill waits for the first, at step 20 of 60
  c.log_every = 10
  c.progress_bars = False
  return c
'''


def _frames(folder: Path, count: int, value: int, suffix: str) -> None:
  folder.mkdir(parents=True)
  for i in range(1, count + 1):
    pixels = np.full((8, 8, 3), (value * 23 + i * 7) % 256, np.uint8)
    Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")


def make_dfew(root: Path) -> Path:
  """21 clips (3 per class), DFEW's README labels 1..7; fold k tests the clips with i % 5 == k-1."""
  for i in range(1, 22):
    _frames(root / "Clip/clip_224x224" / f"{i:05d}", 5 + i % 3, i, ".jpg")
  for k in range(1, 6):
    for split, keep in (("train", lambda i: i % 5 != k - 1), ("test", lambda i: i % 5 == k - 1)):
      rows = [f"{i},{(i - 1) % 7 + 1}" for i in range(1, 22) if keep(i)]
      path = root / f"EmoLabel_DataSplit/{split}(single-labeled)/set_{k}.csv"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("video_name,label\n" + "\n".join(rows) + "\n")
  return root


def make_mafw(root: Path) -> Path:
  """22 clips (2 per class) named by MAFW's words; fold k tests the clips with i % 5 == k-1."""
  names = class_orders.DFERCLIP_11
  for i in range(1, 23):
    _frames(root / "data/frames" / f"{i:05d}", 5 + i % 2, 3 * i, ".png")
  for k in range(1, 6):
    folder = root / "Train & Test Set/single/no_caption" / f"set_{k}"
    folder.mkdir(parents=True, exist_ok=True)
    for split, keep in (("train", lambda i: i % 5 != k - 1), ("test", lambda i: i % 5 == k - 1)):
      rows = [f"{i:05d}.mp4 {names[(i - 1) % 11]}" for i in range(1, 23) if keep(i)]
      (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
  return root


# ----------------------------------------------------------------------------- the plan


def test_the_runs_of_the_paper_and_their_subsets():
  assert reproduce.plan_runs([], []) == (
      [("dfew", k) for k in range(1, 6)] + [("ferv39k", 0)] + [("mafw", k) for k in range(1, 6)])
  assert reproduce.plan_runs(["mafw", "dfew"], [2, 4]) == [("dfew", 2), ("dfew", 4), ("mafw", 2), ("mafw", 4)]
  assert reproduce.plan_runs(["ferv39k", "dfew"], [3]) == [("dfew", 3), ("ferv39k", 0)]
  assert reproduce.plan_runs(["FERV39k"], [0]) == [("ferv39k", 0)]  # a SLURM array's "ferv39k:0"
  assert reproduce.plan_runs([], [0]) == [("ferv39k", 0)]
  assert reproduce.plan_runs([], [0, 5]) == [("dfew", 5), ("ferv39k", 0), ("mafw", 5)]
  with pytest.raises(reproduce.ReproduceError, match=r"^--folds: fold 6 is not a fold of dfew, mafw "
                     r"\(dfew folds 1\.\.5; mafw folds 1\.\.5; FERV39k has one split, fold 0\)$"):
    reproduce.plan_runs([], [6])
  with pytest.raises(reproduce.ReproduceError, match=r"^--folds: fold 0 is not a fold of dfew "):
    reproduce.plan_runs(["dfew"], [0])
  with pytest.raises(reproduce.ReproduceError, match=r"^--datasets: afew not in DFER-CLIP's table"):
    reproduce.plan_runs(["dfew", "afew"], [])


def test_a_run_config_changes_only_the_datasets_facts(tmp_path):
  base = crossval.load_config_file("configs/dfew.py:fold=2")
  base.optim.lr.temporal = 0.5
  base.data.augmentation = "none"
  c = reproduce.run_config(base, "mafw", 3, "/data/MAFW", tmp_path / "lists", {})
  assert (c.dataset, c.fold, c.class_names) == ("mafw", 3, class_orders.DFERCLIP_11)
  assert c.data.train_list == str(tmp_path / "lists/set_3_train.txt")
  assert c.data.test_list == str(tmp_path / "lists/set_3_test.txt")
  assert (c.data.root, c.data.augmentation, c.optim.lr.temporal) == ("/data/MAFW", "mafw", 0.5)
  kept = reproduce.run_config(base, "ferv39k", 0, "/data/F", None, {"data.augmentation": "none"})
  assert (kept.data.train_list, kept.data.augmentation) == ("annotations/ferv39k/train.txt", "none")
  assert base.dataset == "dfew" and base.fold == 2  # the config given is not changed
  with pytest.raises(reproduce.ReproduceError, match=r"^--mode=reproduce sets --config\.data\.root, "
                     r"--config\.fold itself for each dataset and fold; drop them \(data roots: --dfew_root"):
    reproduce.check_overrides({"fold": 3, "data.root": "/x", "batch_size": 4})


def test_a_missing_root_is_named_before_anything_runs(tmp_path):
  base = crossval.load_config_file("configs/dfew.py")
  never = lambda *a: pytest.fail("trained")
  with pytest.raises(reproduce.ReproduceError, match=r"^--mode=reproduce needs --ferv39k_root and --mafw_root"):
    reproduce.run_reproduce(base, tmp_path, roots={"dfew": str(tmp_path)}, train_fn=never)
  with pytest.raises(reproduce.ReproduceError, match=r"^--mafw_root=/no/such: no such directory$"):
    reproduce.run_reproduce(base, tmp_path, selected=["mafw"], roots={"mafw": "/no/such"}, train_fn=never)
  assert not (tmp_path / reproduce.TABLE_MD).exists()


# ----------------------------------------------------------------------------- the acceptance run


def _main(tmp_path, work, **popen):
  config = tmp_path / "tiny_dfer.py"
  config.write_text(TINY_CONFIG)
  cmd = [sys.executable, str(REPO / "main.py"), "--mode=reproduce", f"--config={config}",
         f"--workdir={work}", "--datasets=dfew,mafw", f"--dfew_root={tmp_path / 'DFEW'}",
         f"--mafw_root={tmp_path / 'MAFW'}"]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **popen)


def _hand_summary(work: Path, dataset: str) -> dict:
  out = {}
  results = [json.loads((work / dataset / f"fold_{k}" / "results.json").read_text()) for k in range(1, 6)]
  for selection in reproduce.SELECTIONS:
    for metric in ("uar", "war"):
      values = [r[selection][metric] for r in results]
      out[f"{selection}/{metric}"] = (statistics.fmean(values), statistics.pstdev(values))
  return out


def test_reproduce_killed_in_its_third_run_finishes_and_tables_by_hand(tmp_path):
  make_dfew(tmp_path / "DFEW")
  make_mafw(tmp_path / "MAFW")
  work = tmp_path / "paper"

  # 1. Killed during the third run (DFEW fold 3), once it has saved a checkpoint mid-run.
  first = _main(tmp_path, work)
  third = work / "dfew" / "fold_3"
  deadline = time.monotonic() + 900
  while not any(p.name.isdigit() for p in (third / "checkpoints").glob("*")):
    assert first.poll() is None, first.stdout.read()
    assert time.monotonic() < deadline, "the third run saved no checkpoint"
    time.sleep(0.01)
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert [(work / "dfew" / f"fold_{k}" / "results.json").is_file() for k in (1, 2)] == [True, True]
  killed_third = third / "results.json"
  assert not (killed_third.is_file() and json.loads(killed_third.read_text()).get("complete")), (
      "the third run finished before the kill: lengthen TINY_CONFIG's num_epochs")
  finished = {k: (work / "dfew" / f"fold_{k}" / "results.json").read_text() for k in (1, 2)}

  # 2. Started again: the two finished runs are not trained again, the rest are.
  second = _main(tmp_path, work)
  log, _ = second.communicate(timeout=900)
  assert second.returncode == 0, log
  assert {k: (work / "dfew" / f"fold_{k}" / "results.json").read_text() for k in (1, 2)} == finished
  assert "run 1/10, dfew fold 1: finished" in log and "run 3/10, dfew fold 3: training" in log
  assert "resumed from step" in log, log  # the third run went on from its checkpoint
  table = json.loads((work / reproduce.TABLE_JSON).read_text())
  markdown = (work / reproduce.TABLE_MD).read_text()

  # The table's figures, by hand from each run's results.json.
  for dataset, published in (("dfew", (59.61, 71.25)), ("mafw", (39.89, 52.55))):
    entry = table["datasets"][dataset]
    assert entry["folds_done"] == [1, 2, 3, 4, 5] and entry["folds_missing"] == []
    assert (entry["published"]["uar"], entry["published"]["war"]) == published
    for key, (mean, std) in _hand_summary(work, dataset).items():
      assert entry["summary"][key]["mean"] == pytest.approx(mean, abs=1e-9)
      assert entry["summary"][key]["std"] == pytest.approx(std, abs=1e-9)
      metric = key.split("/")[1]
      assert entry["difference"][key] == pytest.approx(mean - published[metric == "war"], abs=1e-9)
    u, w = _hand_summary(work, dataset)["test_selected/uar"], _hand_summary(work, dataset)["test_selected/war"]
    du, dw = u[0] - published[0], w[0] - published[1]
    row = (f"| {dataset.upper()} | 5/5 | test_selected | {u[0]:.2f} +- {u[1]:.2f} | {w[0]:.2f} +- {w[1]:.2f} | "
           f"{published[0]:.2f} / {published[1]:.2f} | {du:+.2f} / {dw:+.2f} |")
    assert row in markdown.splitlines(), markdown
    # A row per run with the data it saw: counts and hash prefixes straight from its results.json.
    for k in range(1, 6):
      results = json.loads((work / dataset / f"fold_{k}" / "results.json").read_text())
      f = results["data_fingerprint"]
      tr, te = f["splits"]["train"], f["splits"]["test"]
      assert (f"| {dataset} fold {k} | {results['test_selected']['uar']:.2f} / "
              f"{results['test_selected']['war']:.2f} | {tr['clips']} / {tr['frames']}: "
              f"{tr['list_sha256'][:12]} / {tr['first_frames_sha256'][:12]} | {te['clips']} / "
              f"{te['frames']}: {te['list_sha256'][:12]} / {te['first_frames_sha256'][:12]} | "
              f"{f['commit'][:12]} |") in markdown.splitlines(), markdown
    # Every run saw its own fold's lists: five different test fingerprints.
    tests = {r["data_fingerprint"]["splits"]["test"]["list_sha256"] for r in entry["runs"]}
    assert len(tests) == 5
  assert table["datasets"]["ferv39k"]["folds_missing"] == [0]
  assert "| FERV39K | 0/1 | (no finished run) |" in markdown and "Not yet finished: ferv39k fold 0." in markdown
  # The lists were prepared from the publishers' layouts, once.
  assert (work / "dfew" / "lists" / "set_5_test.txt").read_text().splitlines()[0] == "Clip/clip_224x224/00004 6 3"

  # 3. A third invocation trains nothing and writes the same table.
  def never(config, where):
    raise AssertionError(f"trained {where} again")

  base = crossval.load_config_file(str(tmp_path / "tiny_dfer.py"))
  again = reproduce.run_reproduce(base, work, selected=["dfew", "mafw"],
                                  roots={"dfew": str(tmp_path / "DFEW"), "mafw": str(tmp_path / "MAFW")},
                                  train_fn=never)
  assert again == table and table["config_differs"] == []
  assert (work / reproduce.TABLE_MD).read_text() == markdown
  # The same workdir under a changed recipe: nothing is retrained, and the table says so.
  base.optim.lr.temporal = 0.5
  changed = reproduce.run_reproduce(base, work, selected=["mafw"], folds=[2, 4],
                                    roots={"mafw": str(tmp_path / "MAFW")}, train_fn=never)
  assert changed["config_differs"] == ["mafw fold 2", "mafw fold 4"]
  assert ("Trained with another config than this command's (a changed recipe in the same workdir; "
          "results.json's config_sha256): mafw fold 2, mafw fold 4.") in (
              work / reproduce.TABLE_MD).read_text().splitlines()
