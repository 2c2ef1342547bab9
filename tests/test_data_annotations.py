"""Annotation lists: every bad input gives an error naming file, line and field; skip mode lists."""

import os

import pytest

from dferclip_jax.data import annotations, class_orders
from dferclip_jax.data.annotations import AnnotationError, read_annotation_list


def _clip(root, name, frames, extra=()):
  folder = root / name
  folder.mkdir(parents=True)
  for i in range(frames):
    (folder / f"{i:05d}.jpg").write_bytes(b"")  # the list reader counts frames, never decodes
  for other in extra:
    (folder / other).write_bytes(b"")
  return folder


@pytest.fixture
def data(tmp_path):
  root = tmp_path / "data"
  _clip(root, "clips/a", 20)
  _clip(root, "clips/b", 5, extra=("Thumbs.db", ".hidden.jpg", "notes.txt"))
  _clip(root, "clips/c", 16)
  return root


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_reads_relative_paths_against_root(data, tmp_path):
  cache = {}
  path = _write(tmp_path / "train.txt", "clips/a 20 0\n\nclips/b 5 6\r\nclips/c 12 3\n")
  records, skipped = read_annotation_list(path, 7, root=data, frame_names=cache)
  assert skipped == []
  assert [(r.path, r.num_frames, r.label, r.line) for r in records] == [
      (str(data / "clips/a"), 20, 0, 1), (str(data / "clips/b"), 5, 6, 3),
      (str(data / "clips/c"), 12, 3, 4)]
  assert records[0].source == str(tmp_path / "train.txt")
  # Only .jpg/.jpeg/.png files not starting with a dot are frames, sorted by name.
  assert cache[str(data / "clips/b")] == tuple(f"{i:05d}.jpg" for i in range(5))


def test_root_none_is_the_current_directory(data, tmp_path, monkeypatch):
  path = _write(tmp_path / "train.txt", "clips/a 20 0\n")
  monkeypatch.chdir(data)
  records, _ = read_annotation_list(path, 7)
  assert records[0].path == str(data / "clips/a")


@pytest.mark.parametrize("line, message", [
    ("clips/a 20", r"train.txt:2: malformed line 'clips/a 20': expected 3 fields"),
    ("clips/a 20 0 extra", r"train.txt:2: malformed line .* found 4"),
    ("clips/a twenty 0", r"train.txt:2: field num_frames: 'twenty' is not a positive integer"),
    ("clips/a 0 0", r"train.txt:2: field num_frames: '0'"),
    ("clips/a 20 x", r"train.txt:2: field label: 'x' is not an integer"),
    ("clips/a 20 7", r"train.txt:2: field label: 7 is outside \[0, 7\)"),
    ("clips/a 20 -1", r"train.txt:2: field label: -1 is outside"),
    ("clips/zzz 20 0", r"train.txt:2: field frames_dir: folder .*clips/zzz does not exist"),
    ("clips/b 6 0", r"train.txt:2: field num_frames: 6 frames declared but .*clips/b holds 5"),
])
def test_each_bad_line_names_file_line_and_field(data, tmp_path, line, message):
  path = _write(tmp_path / "train.txt", f"clips/c 16 1\n{line}\n")
  with pytest.raises(AnnotationError, match=message):
    read_annotation_list(path, 7, root=data)


def test_label_range_error_names_the_classes(data, tmp_path):
  path = _write(tmp_path / "train.txt", "clips/a 20 9\n")
  with pytest.raises(AnnotationError, match="happiness, sadness"):
    read_annotation_list(path, 7, root=data, class_names=class_orders.DFERCLIP_7)


def test_path_map_rewrites_published_absolute_paths(data, tmp_path):
  text = "/data/EECS/DFEW_Frame_Face/a 20 0\n/data/EECS/DFEW_Frame_Face/b 5 1\n"
  path = _write(tmp_path / "train.txt", text)
  for path_map in (f"/data/EECS/DFEW_Frame_Face={data}/clips",
                   [f"/data/EECS={tmp_path}/nowhere", f"/data/EECS/DFEW_Frame_Face={data}/clips"]):
    records, _ = read_annotation_list(path, 7, path_map=path_map)  # longest prefix wins
    assert [r.path for r in records] == [str(data / "clips/a"), str(data / "clips/b")]


def test_unmapped_absolute_paths_suggest_the_path_map(data, tmp_path):
  path = _write(tmp_path / "train.txt", "/data/EECS/DFEW_Frame_Face/a 20 0\n")
  with pytest.raises(AnnotationError, match=r"train.txt:1: .*does not exist.*need data.path_map"):
    read_annotation_list(path, 7)
  with pytest.raises(AnnotationError, match=r"no path_map prefix \('/elsewhere'\) matched"):
    read_annotation_list(path, 7, path_map="/elsewhere=/x")
  with pytest.raises(AnnotationError, match=r"path_map gave '/mnt/x/a'"):
    read_annotation_list(path, 7, path_map="/data/EECS/DFEW_Frame_Face=/mnt/x")


@pytest.mark.parametrize("path_map, message", [
    ("no-equals-sign", "path_map entry 'no-equals-sign': expected 'old_prefix=new_prefix'"),
    ("=/new", "path_map entry '=/new'"),
    (["/a=/b", "/a=/c"], "maps the prefix '/a' twice"),
    ([3], "path_map entry 3"),
])
def test_bad_path_map_fails(data, tmp_path, path_map, message):
  path = _write(tmp_path / "train.txt", "clips/a 20 0\n")
  with pytest.raises(AnnotationError, match=message):
    read_annotation_list(path, 7, root=data, path_map=path_map)


def test_skip_mode_counts_and_lists_bad_clips(data, tmp_path):
  text = "clips/a 20 0\nclips/zzz 3 1\nclips/b 9 2\nclips/c 16\nclips/c 16 4\n"
  path = _write(tmp_path / "train.txt", text)
  records, skipped = read_annotation_list(path, 7, root=data, on_bad_clip="skip")
  assert [r.line for r in records] == [1, 5]
  assert [(s.line, s.clip) for s in skipped] == [(2, "clips/zzz"), (3, "clips/b"), (4, "clips/c")]
  assert "does not exist" in skipped[0].reason and "9 frames declared" in skipped[1].reason
  assert str(skipped[2]).startswith(f"{tmp_path / 'train.txt'}:4: malformed line")
  summary = annotations.format_skipped(skipped, limit=2)
  assert summary.splitlines()[0] == "3 clip(s) skipped:" and "and 1 more" in summary


def test_nothing_usable_is_an_error_even_when_skipping(data, tmp_path):
  path = _write(tmp_path / "train.txt", "clips/zzz 3 1\n")
  with pytest.raises(AnnotationError, match=r"lists no usable clips; all 1 lines were skipped"):
    read_annotation_list(path, 7, root=data, on_bad_clip="skip")
  with pytest.raises(AnnotationError, match="lists no usable clips"):
    read_annotation_list(_write(tmp_path / "empty.txt", "\n"), 7, root=data)


def test_bad_options_fail(data, tmp_path):
  path = _write(tmp_path / "train.txt", "clips/a 20 0\n")
  with pytest.raises(AnnotationError, match="on_bad_clip='ignore'"):
    read_annotation_list(path, 7, root=data, on_bad_clip="ignore")
  with pytest.raises(AnnotationError, match="no such annotation list"):
    read_annotation_list(tmp_path / "missing.txt", 7, root=data)
  with pytest.raises(AnnotationError, match="is not a directory"):
    read_annotation_list(path, 7, root=tmp_path / "nowhere")


def test_classes_file_beside_the_list_must_agree(data, tmp_path):
  path = _write(tmp_path / "train.txt", "clips/a 20 0\n")
  class_orders.write_classes_file(tmp_path / "classes.txt", class_orders.HESP_7)
  with pytest.raises(ValueError, match="permuted order"):
    read_annotation_list(path, 7, root=data, class_names=class_orders.DFERCLIP_7)
  os.remove(tmp_path / "classes.txt")
  class_orders.write_classes_file(tmp_path / "classes.txt", class_orders.DFERCLIP_7)
  records, _ = read_annotation_list(path, 7, root=data, class_names=class_orders.DFERCLIP_7)
  assert len(records) == 1


def test_validation_hold_out_is_stratified_seeded_and_disjoint():
  from dferclip_jax.data import holdout
  from dferclip_jax.data.records import ClipRecord
  counts = {0: 10, 1: 5, 2: 1, 3: 2}
  records = [ClipRecord(f"/c{label}_{i}", 8, label) for label, n in counts.items() for i in range(n)]
  train, val = holdout.split_validation(records, 0.3, seed=1)
  # round(0.3 * n), halves up, at least one training clip per class: 3, 2 (1.5), 0, 1 (0.6).
  assert {c: sum(r.label == c for r in val) for c in counts} == {0: 3, 1: 2, 2: 0, 3: 1}
  assert not set(train) & set(val) and len(train) + len(val) == len(records)
  assert [r for r in records if r in set(val)] == val  # list order kept
  assert holdout.split_validation(records, 0.3, seed=1)[1] == val
  assert any(holdout.split_validation(records, 0.3, seed=s)[1] != val for s in (2, 3, 4))
  with pytest.raises(ValueError, match="holds out no clip"):
    holdout.split_validation(records[:1], 0.3, seed=1)
