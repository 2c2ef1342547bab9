"""DFEW, FERV39k and MAFW as their publishers ship them, on miniature replicas built in tmp_path.

The replicas use the real folder and file names, the publishers' CSV/TXT formats and label
vocabularies, and the untidiness found in real copies (CRLF, BOM, unpadded ids, ``.mp4``
suffixes, trailing blanks). Expected lists are written out by hand, not recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dferclip_jax.cli import prepare
from dferclip_jax.data import class_orders
from dferclip_jax.data import datasets
from dferclip_jax.data import native

REPO = Path(__file__).resolve().parents[1]

# DFEW's README numbering, as in its split CSVs.
DFEW_HAPPY, DFEW_SAD, DFEW_NEUTRAL, DFEW_ANGRY, DFEW_SURPRISE, DFEW_DISGUST, DFEW_FEAR = range(1, 8)


def _frames(folder: Path, n: int, *, jpeg: bool = False, name: str = "{clip}_{i}.jpg") -> None:
  folder.mkdir(parents=True)
  for i in range(1, n + 1):
    path = folder / name.format(clip=folder.name, i=i)
    if jpeg:
      Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(path)
    else:
      path.touch()


def _write(path: Path, text: str, *, newline: str = "\n", bom: bool = False) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  data = text.replace("\n", newline).encode()
  path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


# ------------------------------------------------------------------------------------------------
# DFEW: clips 1..14, clip i has label (i-1)%7+1 and 3+i%4 real JPEG frames; fold k tests the
# clips with i%5 == k-1. Clip 15 is listed (train, every fold) but absent; clip 16 is an empty
# folder listed in fold 1's test set.
# ------------------------------------------------------------------------------------------------


def _dfew_label(i: int) -> int:
  return (i - 1) % 7 + 1


def make_dfew(root: Path) -> Path:
  for i in range(1, 15):
    _frames(root / "Clip/clip_224x224" / f"{i:05d}", 3 + i % 4, jpeg=True)
    _frames(root / "Clip/clip_224x224_16f" / f"{i:05d}", 16, name="{i}.jpg")  # as DFEW names them
  (root / "Clip/clip_224x224/00016").mkdir()
  (root / "Clip/clip_224x224/00016/Thumbs.db").touch()  # not a frame
  for k in range(1, 6):
    test = [i for i in range(1, 15) if i % 5 == k - 1]
    train = [i for i in range(1, 15) if i % 5 != k - 1] + [15]
    if k == 1:
      test.append(16)
    for split, ids in (("train", train), ("test", test)):
      # Ids as the publisher writes them (unpadded), a few zero-padded; a trailing blank line.
      rows = [f"{i:05d},{_dfew_label(i)}" if i % 3 == 0 else f"{i},{_dfew_label(i)} " for i in ids]
      _write(root / f"EmoLabel_DataSplit/{split}(single-labeled)/set_{k}.csv",
             "video_name,label\n" + "\n".join(rows) + "\n\n", newline="\r\n" if k == 1 else "\n",
             bom=(k == 2))
  return root


DFEW_FOLD1_TRAIN = """\
Clip/clip_224x224/00001 4 0
Clip/clip_224x224/00002 5 1
Clip/clip_224x224/00003 6 2
Clip/clip_224x224/00004 3 3
Clip/clip_224x224/00006 5 5
Clip/clip_224x224/00007 6 6
Clip/clip_224x224/00008 3 0
Clip/clip_224x224/00009 4 1
Clip/clip_224x224/00011 6 3
Clip/clip_224x224/00012 3 4
Clip/clip_224x224/00013 4 5
Clip/clip_224x224/00014 5 6
"""
DFEW_FOLD1_TEST = """\
Clip/clip_224x224/00005 4 4
Clip/clip_224x224/00010 5 2
"""


def test_dfew_fold1_lists_frames_and_labels(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  assert native.is_native_layout("dfew", root)
  splits = native.read_native("dfew", root, fold=1)
  assert splits.class_names == class_orders.DFERCLIP_7
  assert prepare.format_list(splits.train) == DFEW_FOLD1_TRAIN
  assert prepare.format_list(splits.test) == DFEW_FOLD1_TEST
  # Counts are the JPEGs on disk, and the frames really are images.
  for record in splits.train + splits.test:
    files = sorted(Path(splits.abspath(record)).iterdir())
    assert len(files) == record.num_frames
    assert Image.open(files[0]).size == (8, 8)
  # Each record names the CSV line (1-based, the header is line 1) that listed it.
  first = splits.train[0]
  assert first.source.endswith(os.path.join("train(single-labeled)", "set_1.csv")) and first.line == 2
  assert splits.test[1].line == 3


def test_dfew_label_mapping_follows_the_readme_numbering(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  records = {r.path[-5:]: r for r in native.read_native("dfew", root, fold=1).train}
  names = class_orders.DFERCLIP_7
  assert _dfew_label(4) == DFEW_ANGRY and names[records["00004"].label] == "anger"
  assert _dfew_label(6) == DFEW_DISGUST and names[records["00006"].label] == "disgust"
  assert _dfew_label(7) == DFEW_FEAR and names[records["00007"].label] == "fear"
  assert _dfew_label(8) == DFEW_HAPPY and names[records["00008"].label] == "happiness"


def test_dfew_fold_sizes_and_problems(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  sizes = {}
  for k in native.folds("dfew"):
    s = native.read_native("dfew", root, fold=k)
    sizes[k] = (len(s.train), len(s.test))
    kinds = sorted((p.split, p.kind, p.clip) for p in s.problems)
    expected = [("train", "missing", "Clip/clip_224x224/00015")]
    if k == 1:
      expected.append(("test", "empty", "Clip/clip_224x224/00016"))
    assert kinds == sorted(expected), k
    assert {r.path for r in s.train}.isdisjoint(r.path for r in s.test)
  assert sizes == {1: (12, 2), 2: (11, 3), 3: (11, 3), 4: (11, 3), 5: (11, 3)}
  missing = next(p for p in native.read_native("dfew", root, fold=3).problems)
  assert missing.line == 13 and str(missing).startswith(missing.source + ":13: ")


def test_dfew_16_frame_variant(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  splits = native.read_native("dfew", root, fold=2, dfew_frames="clip_224x224_16f")
  assert [r.path for r in splits.test] == [f"Clip/clip_224x224_16f/{i:05d}" for i in (1, 6, 11)]
  assert {r.num_frames for r in splits.train + splits.test} == {16}
  assert [p.clip for p in splits.problems] == ["Clip/clip_224x224_16f/00015"]


def test_unpadded_frame_names_are_read_in_numeric_order_and_reported(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  listed: dict = {}
  splits = native.read_native("dfew", root, fold=2, dfew_frames="clip_224x224_16f",
                              frame_names=listed)
  assert listed["Clip/clip_224x224_16f/00001"] == tuple(f"{i}.jpg" for i in range(1, 17))
  assert splits.reordered == [r.path for r in splits.train + splits.test]
  # The all-frames rendering names its frames 00001_1.jpg ... 00001_6.jpg: one digit, no reorder.
  assert native.read_native("dfew", root, fold=2).reordered == []
  report = prepare.prepare("dfew", str(root), str(tmp_path / "out"), (1, 2),
                           dfew_frames="clip_224x224_16f")
  assert report["reordered"] == [f"Clip/clip_224x224_16f/{i:05d}" for i in (1, 2, 3, 4, 6, 7, 8, 9,
                                                                            11, 12, 13, 14, 5, 10)]
  text = (tmp_path / "out" / "report.txt").read_text()
  assert "14 clip folders number their frames without zero padding" in text
  assert "\n  Clip/clip_224x224_16f/00010" in text


def test_dfew_bad_label_names_file_line_and_field(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  _write(root / "EmoLabel_DataSplit/test(single-labeled)/set_4.csv", "video_name,label\n3,4\n8,0\n")
  with pytest.raises(native.SplitFileError,
                     match=r"set_4\.csv:3: field label: '0' is not a DFEW label"):
    native.read_native("dfew", root, fold=4)
  _write(root / "EmoLabel_DataSplit/test(single-labeled)/set_4.csv", "clip,emotion\n3,4\n")
  with pytest.raises(native.SplitFileError, match=r"set_4\.csv:1: header .*video_name,label"):
    native.read_native("dfew", root, fold=4)


def test_dfew_duplicates_missing_fold_file_and_empty_file(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  _write(root / "EmoLabel_DataSplit/test(single-labeled)/set_4.csv",
         "video_name,label\n3,3\n00003,3\n8,1\n")
  splits = native.read_native("dfew", root, fold=4)
  assert [r.path[-5:] for r in splits.test] == ["00003", "00008"]
  duplicate = [p for p in splits.problems if p.kind == "duplicate"]
  assert [(p.line, p.reason) for p in duplicate] == [(3, "first listed at line 2")]
  _write(root / "EmoLabel_DataSplit/test(single-labeled)/set_4.csv", "video_name,label\n")
  with pytest.raises(native.SplitFileError, match=r"set_4\.csv: lists no clips"):
    native.read_native("dfew", root, fold=4)
  (root / "EmoLabel_DataSplit/test(single-labeled)/set_3.csv").unlink()
  with pytest.raises(native.LayoutError, match=r"test\(single-labeled\)/set_3\.csv or "):
    native.read_native("dfew", root, fold=1)  # every fold's files are checked up front


# ------------------------------------------------------------------------------------------------
# FERV39k: one clip per class in each of two scenarios; Action trains, Business tests.
# ------------------------------------------------------------------------------------------------

FERV_CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")


def make_ferv39k(root: Path) -> Path:
  for s, scenario in enumerate(("Action", "Business")):
    for c, name in enumerate(FERV_CLASSES):
      _frames(root / "2_ClipsforFaceCrop" / scenario / name / f"{c + 1:04d}", 8 + c + s)
  train = [f"Action/{name}/{c + 1:04d} {name}" for c, name in enumerate(FERV_CLASSES)]
  train[3] = "Action\\Angry\\0004 Angry"  # a list saved on Windows
  train[4] = "Action/Surprise/0005 surprise"  # hand-edited capitalisation
  test = [f"Business/{name}/{c + 1:04d} {name}" for c, name in enumerate(FERV_CLASSES)]
  test.append("Business/Fear/0099 Fear")            # listed, never released
  test.append("Business/Happy/0001 Sad")            # label disagrees with its folder
  _write(root / "4_setups/All_scenes/train_All.csv", "\n".join(train) + "\n", newline="\r\n")
  _write(root / "4_setups/All_scenes/test_All.csv", "\n".join(test) + "\n")
  return root


def test_ferv39k_lists_and_labels(tmp_path):
  root = make_ferv39k(tmp_path / "FERV39k")
  assert native.is_native_layout("ferv39k", root)
  assert native.folds("ferv39k") == (None,)
  splits = native.read_native("ferv39k", root)
  assert prepare.format_list(splits.train) == """\
2_ClipsforFaceCrop/Action/Happy/0001 8 0
2_ClipsforFaceCrop/Action/Sad/0002 9 1
2_ClipsforFaceCrop/Action/Neutral/0003 10 2
2_ClipsforFaceCrop/Action/Angry/0004 11 3
2_ClipsforFaceCrop/Action/Surprise/0005 12 4
2_ClipsforFaceCrop/Action/Disgust/0006 13 5
2_ClipsforFaceCrop/Action/Fear/0007 14 6
"""
  assert [r.num_frames for r in splits.test] == list(range(9, 16))
  assert [(p.line, p.kind) for p in splits.problems] == [(8, "missing"), (9, "label_mismatch")]
  assert "sits in the class folder 'Happy'" in splits.problems[1].reason


def test_ferv39k_unknown_class_names_file_and_line(tmp_path):
  root = make_ferv39k(tmp_path / "FERV39k")
  _write(root / "4_setups/All_scenes/test_All.csv",
         "Business/Happy/0001 Happy\nBusiness/Sad/0002 Sadness\n")
  with pytest.raises(native.SplitFileError,
                     match=r"test_All\.csv:2: field label: unknown class name 'Sadness'"):
    native.read_native("ferv39k", root)
  with pytest.raises(ValueError, match="single train/test split"):
    native.read_native("ferv39k", root, fold=1)


# ------------------------------------------------------------------------------------------------
# MAFW: two clips per class (ids 1..22, 5-digit folders); fold k tests clips with i%5 == k-1.
# ------------------------------------------------------------------------------------------------


def make_mafw(root: Path, *, frames: str = "data/frames", split_dir: str = "Train & Test Set") -> Path:
  """MAFW as published (``data/frames`` PNG, ``Train & Test Set/``) or as some copies hold it
  (``data/faces`` JPEG, MAE-DFER's ``split/``)."""
  suffix = "png" if frames == "data/frames" else "jpg"
  for i in range(1, 23):
    _frames(root / frames / f"{i:05d}", 2 + i % 3, name="{i}." + suffix)
  (root / frames / "00023").mkdir()  # face detection found nothing
  for k in range(1, 6):
    test = [i for i in range(1, 23) if i % 5 == k - 1]
    train = [i for i in range(1, 23) if i % 5 != k - 1]
    if k == 2:
      test.append(23)
    for split, ids in (("train", train), ("test", test)):
      rows = [f"{i:05d}.mp4 {class_orders.DFERCLIP_11[(i - 1) % 11]}" for i in ids]
      if k == 1:
        rows[0] = rows[0].replace("00001.mp4", "1.mp4") + "\t"  # unpadded, trailing tab
      _write(root / split_dir / f"single/no_caption/set_{k}/{split}.txt", "\n".join(rows) + "\n",
             newline="\r\n" if k == 3 else "\n")
  return root


def test_mafw_lists_and_labels(tmp_path):
  root = make_mafw(tmp_path / "MAFW")
  assert native.is_native_layout("mafw", root)
  splits = native.read_native("mafw", root, fold=1)
  assert splits.class_names == class_orders.DFERCLIP_11
  assert prepare.format_list(splits.test) == """\
data/frames/00005 4 4
data/frames/00010 3 9
data/frames/00015 2 3
data/frames/00020 4 8
"""
  assert splits.train[0].path == "data/frames/00001" and splits.train[0].label == 0
  assert splits.problems == []
  sizes = [tuple(map(len, (s.train, s.test))) for s in
           (native.read_native("mafw", root, fold=k) for k in native.folds("mafw"))]
  assert sizes == [(18, 4), (17, 5), (17, 5), (18, 4), (18, 4)]


def test_mafw_problems_and_bad_label(tmp_path):
  root = make_mafw(tmp_path / "MAFW")
  splits = native.read_native("mafw", root, fold=2)
  assert [(p.split, p.kind, p.clip, p.line) for p in splits.problems] == [
      ("test", "empty", "data/frames/00023", 6)]
  _write(root / "Train & Test Set/single/no_caption/set_5/train.txt", "00001.mp4 happiness\n00002.mp4 angry\n")
  with pytest.raises(native.SplitFileError,
                     match=r"set_5/train\.txt:2: field label: unknown class name 'angry'"):
    native.read_native("mafw", root, fold=5)


def test_mafw_both_folder_variants_prepare_into_the_same_lists(tmp_path):
  published = make_mafw(tmp_path / "published")
  copy = make_mafw(tmp_path / "copy", frames="data/faces", split_dir="split")
  assert native.frames_dir("mafw", published) == "data/frames"
  assert native.frames_dir("mafw", copy) == "data/faces"
  reports = [prepare.prepare("mafw", str(root), str(tmp_path / name / "out"), native.folds("mafw"))
             for name, root in (("a", published), ("b", copy))]
  assert [r["frames_dir"] for r in reports] == ["data/frames", "data/faces"]
  for k in native.folds("mafw"):
    for split in ("train", "test"):
      a = (tmp_path / "a/out" / f"set_{k}_{split}.txt").read_text()
      b = (tmp_path / "b/out" / f"set_{k}_{split}.txt").read_text()
      assert a.startswith("data/frames/000") and a == b.replace("data/faces/", "data/frames/")
  assert reports[0]["reordered"] == reports[1]["reordered"] == []  # at most 4 frames a clip


def test_mafw_publisher_spellings_are_found_first(tmp_path):
  root = make_mafw(tmp_path / "MAFW")
  assert native.split_file_candidates("mafw", 1, "test") == (
      "Train & Test Set/single/no_caption/set_1/test.txt", "split/single/no_caption/set_1/test.txt")
  # A renamed copy beside the original, listing other clips, and a data/faces beside data/frames.
  for k in range(1, 6):
    for split in ("train", "test"):
      _write(root / f"split/single/no_caption/set_{k}/{split}.txt", "00002.mp4 sadness\n")
  _frames(root / "data/faces/00002", 9)
  splits = native.read_native("mafw", root, fold=1)
  assert [r.path for r in splits.test] == [f"data/frames/{i:05d}" for i in (5, 10, 15, 20)]
  assert splits.test[0].source.endswith(os.path.join("Train & Test Set", "single", "no_caption",
                                                     "set_1", "test.txt"))


# ------------------------------------------------------------------------------------------------
# Layout detection.
# ------------------------------------------------------------------------------------------------


def test_layout_errors_say_what_was_expected_and_found(tmp_path):
  dfew = make_dfew(tmp_path / "DFEW")
  assert not native.is_native_layout("ferv39k", dfew)
  with pytest.raises(native.LayoutError) as err:
    native.check_layout("mafw", dfew)
  message = str(err.value)
  assert "data/frames/ or data/faces/" in message
  assert "Train & Test Set/single/no_caption/set_<k>/train.txt or split/" in message
  assert "for k = 1..5" in message
  assert "found in" in message and "EmoLabel_DataSplit" in message
  # Pointed one level too high, or at the wrong rendering: the message says what to do.
  with pytest.raises(native.LayoutError, match=r"DFEW has the expected layout"):
    native.check_layout("dfew", tmp_path)
  shutil.rmtree(dfew / "Clip/clip_224x224")
  with pytest.raises(native.LayoutError, match=r"--dfew_frames=clip_224x224_16f"):
    native.read_native("dfew", dfew, fold=1)
  assert native.is_native_layout("dfew", dfew, dfew_frames="clip_224x224_16f")
  with pytest.raises(ValueError, match="folds 1..5"):
    native.read_native("dfew", dfew, fold=None, dfew_frames="clip_224x224_16f")


# ------------------------------------------------------------------------------------------------
# The prepare command.
# ------------------------------------------------------------------------------------------------


def _run_prepare(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "dferclip_jax.cli.prepare", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_prepare_command_end_to_end(tmp_path):
  root = make_dfew(tmp_path / "DFEW")
  out = tmp_path / "annotations" / "dfew"
  result = _run_prepare("--dataset=dfew", f"--root={root}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert "fold 1: train 12 clips" in result.stdout
  assert "Clip/clip_224x224/00015: missing" in result.stdout
  expected = {f"set_{k}_{s}.txt" for k in range(1, 6) for s in ("train", "test")}
  assert expected | {"classes.txt", "report.json", "report.txt"} == {p.name for p in out.iterdir()}
  assert (out / "set_1_train.txt").read_text() == DFEW_FOLD1_TRAIN
  assert (out / "set_1_test.txt").read_text() == DFEW_FOLD1_TEST
  assert class_orders.read_classes_file(out / "classes.txt") == class_orders.DFERCLIP_7
  assert class_orders.check_classes_beside(out / "set_1_train.txt", class_orders.DFERCLIP_7)
  report = json.loads((out / "report.json").read_text())
  assert [(f["fold"], f["train"]["clips"], f["test"]["clips"]) for f in report["folds"]] == [
      (1, 12, 2), (2, 11, 3), (3, 11, 3), (4, 11, 3), (5, 11, 3)]
  assert report["folds"][0]["test"]["problems"] == {"empty": 1}
  assert report["folds"][0]["test"]["per_class"] == {"neutral": 1, "surprise": 1, **{
      n: 0 for n in ("happiness", "sadness", "anger", "disgust", "fear")}}
  first = report["problems"][0]
  assert (first["source"], first["line"], first["kind"]) == (
      os.path.join("EmoLabel_DataSplit", "train(single-labeled)", "set_1.csv"), 14, "missing")
  assert "00016: empty" in (out / "report.txt").read_text()
  # The data fingerprint, printed and in the report: what a run on these lists will record.
  from dferclip_jax.data import fingerprint, sources
  from dferclip_jax.data.annotations import read_annotation_list
  assert "data fingerprint" in result.stdout
  records, _ = read_annotation_list(out / "set_1_train.txt", 7, root=root)
  source = sources.FolderSource(records)
  printed = report["folds"][0]["train"]["fingerprint"]
  assert printed == fingerprint.split_fingerprint(source.records, source.frame_names, str(root))
  assert printed["clips"] == 12 and printed["list_sha256"][:16] in result.stdout
  # The lists resolve under the root: the config's data.root=<root> is all training needs.
  for line in (out / "set_3_test.txt").read_text().splitlines():
    path, frames, _ = line.split(" ")
    assert len(os.listdir(root / path)) == int(frames)


def test_prepare_one_fold_and_ferv39k(tmp_path):
  mafw = make_mafw(tmp_path / "MAFW")
  report = prepare.prepare("mafw", str(mafw), str(tmp_path / "mafw"), prepare.parse_folds("mafw", "2"))
  assert sorted(os.listdir(tmp_path / "mafw")) == [
      "classes.txt", "report.json", "report.txt", "set_2_test.txt", "set_2_train.txt"]
  assert report["folds"][0]["test"]["problems"] == {"empty": 1}
  ferv = make_ferv39k(tmp_path / "FERV39k")
  prepare.prepare("ferv39k", str(ferv), str(tmp_path / "ferv"), prepare.parse_folds("ferv39k", "all"))
  first_line = (tmp_path / "ferv" / "train.txt").read_text().splitlines()[0]
  assert first_line == "2_ClipsforFaceCrop/Action/Happy/0001 8 0"
  assert (tmp_path / "ferv" / "test.txt").exists()
  with pytest.raises(ValueError, match="single train/test split"):
    prepare.parse_folds("ferv39k", "1")
  with pytest.raises(ValueError, match="expected 'all' or one of 1, 2, 3, 4, 5"):
    prepare.parse_folds("dfew", "6")


def test_prepare_refuses_a_root_of_the_wrong_layout(tmp_path):
  ferv = make_ferv39k(tmp_path / "FERV39k")
  result = _run_prepare("--dataset=dfew", f"--root={ferv}", f"--out={tmp_path / 'out'}")
  assert result.returncode == 1
  assert "not the native dfew layout" in result.stderr and "Clip/clip_224x224/" in result.stderr
  assert "found in" in result.stderr and "2_ClipsforFaceCrop" in result.stderr
  assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# Class orders.
# ------------------------------------------------------------------------------------------------

# HESP (cosinehuang/HESP): split.py lists known-class index sets; its MAFW lists pair each index
# with a name ("/.../Train/Angry/09314 83 0 Angry"). A few of each, transcribed.
HESP_MAFW_LIST_NAMES = {0: "Angry", 1: "Disgust", 2: "Fear", 3: "Happy", 4: "Neutral", 5: "Sad",
                        6: "Surprise", 7: "Contempt", 8: "Anxiety", 9: "Helplessness",
                        10: "Disappointment"}
HESP_SPLITS = [
    # (dataset, known indices in HESP's order, class names, DFER-CLIP labels)
    ("MAFW", [10, 5, 6], ("disappointment", "sadness", "surprise"), (10, 1, 4)),
    ("MAFW", [2, 8, 9], ("fear", "anxiety", "helplessness"), (6, 8, 9)),
    ("MAFW", [1, 10, 3, 7, 4], ("disgust", "disappointment", "happiness", "contempt", "neutral"),
     (5, 10, 0, 7, 2)),
    ("DFEW", [6, 1], ("surprise", "disgust"), (4, 5)),
    ("DFEW", [4, 0, 1, 5, 6], ("neutral", "anger", "disgust", "sadness", "surprise"), (2, 3, 5, 1, 4)),
]


def test_hesp_order_matches_hesp_lists():
  ours = {"Angry": "anger", "Happy": "happiness", "Sad": "sadness"}
  assert class_orders.HESP_11 == tuple(ours.get(n, n.lower()) for n in HESP_MAFW_LIST_NAMES.values())
  assert class_orders.HESP_7 == class_orders.HESP_11[:7]


@pytest.mark.parametrize("dataset,known,names,labels", HESP_SPLITS)
def test_hesp_split_indices_map_to_dferclip(dataset, known, names, labels):
  hesp, ours = {"MAFW": (class_orders.HESP_11, class_orders.DFERCLIP_11),
                "DFEW": (class_orders.HESP_7, class_orders.DFERCLIP_7)}[dataset]
  assert class_orders.names_of(known, hesp) == names
  assert class_orders.convert_labels(known, hesp, ours) == labels
  assert class_orders.names_of(labels, ours) == names


def test_class_order_tables_and_mapping_errors():
  assert datasets.get("mafw").class_names[:7] == class_orders.DFERCLIP_7
  assert sorted(class_orders.HESP_11) == sorted(class_orders.DFERCLIP_11)
  assert class_orders.index_map(class_orders.DFERCLIP_7, class_orders.HESP_7) == (3, 5, 4, 0, 6, 1, 2)
  assert [class_orders.FERV39K_NATIVE[n] for n in FERV_CLASSES] == list(class_orders.DFERCLIP_7)
  assert [class_orders.DFEW_NATIVE[k] for k in range(1, 8)] == list(class_orders.DFERCLIP_7)
  assert class_orders.convert_labels([3, 0], class_orders.DFERCLIP_11, class_orders.HESP_7) == (0, 3)
  with pytest.raises(ValueError, match=r"label 7 \('contempt'\) has no place in the target order"):
    class_orders.convert_labels([0, 7], class_orders.DFERCLIP_11, class_orders.DFERCLIP_7)
  with pytest.raises(ValueError, match=r"\['contempt', 'anxiety', .*not in the target order"):
    class_orders.index_map(class_orders.DFERCLIP_11, class_orders.DFERCLIP_7)
  with pytest.raises(ValueError, match="outside the source order"):
    class_orders.convert_labels([7], class_orders.DFERCLIP_7, class_orders.HESP_7)
  with pytest.raises(ValueError, match="unknown dataset 'afew'"):  # no native layout
    native.folds("afew")
  assert class_orders.order_by_name("hesp_11") == class_orders.HESP_11
  with pytest.raises(ValueError, match="unknown class order 'alphabetical'"):
    class_orders.order_by_name("alphabetical")


def test_classes_file_refuses_a_permuted_order(tmp_path):
  path = tmp_path / "classes.txt"
  class_orders.write_classes_file(path, class_orders.HESP_7)
  assert class_orders.read_classes_file(path) == class_orders.HESP_7
  class_orders.check_classes_file(path, class_orders.HESP_7)
  with pytest.raises(ValueError,
                     match=r"classes\.txt:1: label 0 is 'anger' here but 'happiness'.*permuted"):
    class_orders.check_classes_file(path, class_orders.DFERCLIP_7)
  with pytest.raises(ValueError, match="differ from the configured classes"):
    class_orders.check_classes_file(path, class_orders.HESP_11)
  assert not class_orders.check_classes_beside(tmp_path / "sub" / "train.txt", class_orders.HESP_7)
  path.write_bytes(b"anger\r\ndisgust\r\n\r\nfear\r\n")
  with pytest.raises(ValueError, match=r"classes\.txt:3: empty class name"):
    class_orders.read_classes_file(path)
