"""Annotation lists: every bad input gives an error naming file, line and field; skip mode lists."""

import errno
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


# --------------------------------------------------------------- folders that cannot be listed

LOOP = f"a symlink loop ({os.strerror(errno.ELOOP)})"
DENIED = os.strerror(errno.EACCES)


def _loop(path):
  """A symlink to itself: listing it (or examining it) fails with ELOOP, for root too."""
  path.symlink_to(path.name)
  return path


def _deny(monkeypatch, folder):
  """Permission denied on listing ``folder``. The tests run as root, whom mode bits do not stop,
  so ``os.scandir`` is made to fail the way it does for a user without read permission."""
  real = os.scandir

  def scandir(path="."):
    if os.fspath(path) == str(folder):
      raise PermissionError(errno.EACCES, DENIED, os.fspath(path))
    return real(path)

  monkeypatch.setattr(os, "scandir", scandir)


def test_a_symlink_loop_folder_is_an_error_naming_the_list_line(data, tmp_path):
  loop = _loop(data / "clips/loop")
  path = _write(tmp_path / "train.txt", "clips/c 16 1\nclips/loop 3 0\n")
  with pytest.raises(AnnotationError) as err:
    read_annotation_list(path, 7, root=data)
  assert str(err.value) == (f"{path}:2: field frames_dir: folder {loop} cannot be listed: {LOOP} "
                            f"(listed as 'clips/loop')")


def test_a_symlink_loop_frame_is_an_error_naming_the_entry(data, tmp_path):
  folder = _clip(data, "clips/d", 2)
  _loop(folder / "00002.jpg")
  path = _write(tmp_path / "train.txt", "clips/d 2 1\n")
  with pytest.raises(AnnotationError) as err:
    read_annotation_list(path, 7, root=data)
  assert str(err.value) == (f"{path}:1: field frames_dir: folder {folder} cannot be listed: its "
                            f"entry 00002.jpg: {LOOP} (listed as 'clips/d')")


def test_a_folder_without_read_permission_is_an_error_naming_the_list_line(data, tmp_path,
                                                                            monkeypatch):
  _deny(monkeypatch, data / "clips/b")
  path = _write(tmp_path / "train.txt", "clips/a 20 0\nclips/b 5 1\n")
  with pytest.raises(AnnotationError) as err:
    read_annotation_list(path, 7, root=data)
  assert str(err.value) == (f"{path}:2: field frames_dir: folder {data / 'clips/b'} cannot be "
                            f"listed: {DENIED} (listed as 'clips/b')")


def test_skip_mode_skips_and_records_folders_that_cannot_be_listed(data, tmp_path, monkeypatch):
  loop = _loop(data / "clips/loop")
  _deny(monkeypatch, data / "clips/b")
  many = ""
  for i in range(40):  # enough folders for the listing to run in its thread pool
    _clip(data, f"clips/more{i}", 2)
    many += f"clips/more{i} 2 {i % 7}\n"
  path = _write(tmp_path / "train.txt", f"clips/a 20 0\nclips/loop 3 1\nclips/b 5 2\n{many}")
  records, skipped = read_annotation_list(path, 7, root=data, on_bad_clip="skip")
  assert [r.line for r in records] == [1] + list(range(4, 44))
  assert [str(s) for s in skipped] == [
      f"{path}:2: field frames_dir: folder {loop} cannot be listed: {LOOP} (listed as 'clips/loop')",
      f"{path}:3: field frames_dir: folder {data / 'clips/b'} cannot be listed: {DENIED} "
      f"(listed as 'clips/b')"]
  assert [(s.line, s.clip) for s in skipped] == [(2, "clips/loop"), (3, "clips/b")]


def test_a_source_over_a_folder_that_cannot_be_listed_names_the_record(data):
  from dferclip_jax.data.records import ClipRecord
  from dferclip_jax.data.sources import ClipDataError, FolderSource
  loop = _loop(data / "clips/loop")
  with pytest.raises(ClipDataError) as err:
    FolderSource([ClipRecord(str(loop), 3, 0, source="/lists/train.txt", line=7)])
  assert str(err.value) == f"/lists/train.txt:7: folder {loop} cannot be listed: {LOOP}"


def test_an_unreadable_list_file_names_the_file(data, tmp_path):
  loop = _loop(tmp_path / "train.txt")
  with pytest.raises(AnnotationError, match=f"{loop}: no such annotation list"):
    read_annotation_list(loop, 7, root=data)  # isfile is False for a loop: refused up front
  from dferclip_jax.data import textfiles
  with pytest.raises(AnnotationError) as err:
    textfiles.read_lines(str(loop), AnnotationError)
  assert str(err.value) == f"{loop}: cannot be read ({os.strerror(errno.ELOOP)})"


# --------------------------------------------------------------- a folder listed twice

TWICE = ("a clip listed twice is weighted twice in training and counted twice in testing; list "
         "each folder once, or set data.duplicate_clips='warn' to read the list as written")


@pytest.mark.parametrize("again", ["clips/a", "clips/./a", "clips/a/", "clips/x/../a", "clips/link"])
@pytest.mark.parametrize("on_bad_clip", ["error", "skip"])
def test_a_folder_listed_twice_is_an_error_naming_both_lines(data, tmp_path, again, on_bad_clip):
  (data / "clips/link").symlink_to("a")
  (data / "clips/x").mkdir()
  path = _write(tmp_path / "train.txt", f"clips/a 20 0\nclips/c 16 1\n{again} 20 4\n")
  a = data / "clips/a"
  listed = data / "clips/link" if again == "clips/link" else a
  alias = f" (listed there as {a}; both resolve to {os.path.realpath(a)})" if listed != a else ""
  with pytest.raises(AnnotationError) as err:
    read_annotation_list(path, 7, root=data, on_bad_clip=on_bad_clip)  # skip mode skips no duplicate
  assert str(err.value) == (f"{path}:3: folder {listed} is already listed at {path}:1, with label 0 "
                            f"there and 4 here{alias}: {TWICE}")


def test_the_same_label_twice_is_the_same_error_and_every_duplicate_is_counted(data, tmp_path):
  path = _write(tmp_path / "train.txt", "clips/a 20 0\nclips/a 20 0\nclips/c 16 1\nclips/c 16 2\n")
  with pytest.raises(AnnotationError) as err:
    read_annotation_list(path, 7, root=data)
  assert str(err.value) == (f"{path}:2: folder {data / 'clips/a'} is already listed at {path}:1, "
                            f"with the same label 0 (2 duplicate lines in {path}): {TWICE}")


def test_duplicate_clips_warn_logs_both_lines_and_reads_the_list_as_written(data, tmp_path, caplog):
  caplog.set_level("WARNING")
  path = _write(tmp_path / "train.txt", "clips/a 20 0\nclips/c 16 1\nclips/./a 20 4\n")
  records, skipped = read_annotation_list(path, 7, root=data, duplicate_clips="warn")
  assert [(r.line, r.label) for r in records] == [(1, 0), (2, 1), (3, 4)] and skipped == []
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warnings == [f"duplicate clip (data.duplicate_clips='warn': both lines kept): {path}:3: "
                      f"folder {data / 'clips/a'} is already listed at {path}:1, with label 0 "
                      f"there and 4 here"]


def test_an_unknown_duplicate_clips_value_fails(data, tmp_path):
  path = _write(tmp_path / "train.txt", "clips/a 20 0\n")
  with pytest.raises(AnnotationError, match=r"duplicate_clips='ignore': expected one of \('error', 'warn'\)"):
    read_annotation_list(path, 7, root=data, duplicate_clips="ignore")


def test_overlapping_train_and_test_lists_are_a_warning_naming_both_lines(data, tmp_path, caplog):
  caplog.set_level("WARNING")
  (data / "clips/link").symlink_to("c")
  train, _ = read_annotation_list(_write(tmp_path / "train.txt", "clips/a 20 0\nclips/c 16 1\n"), 7,
                                  root=data)
  test, _ = read_annotation_list(_write(tmp_path / "test.txt", "clips/b 5 2\nclips/link 16 1\n"), 7,
                                 root=data)
  found = annotations.warn_overlap(train, test)
  assert [(first.line, again.line) for first, again, _ in found] == [(2, 2)]
  [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warning == (f"1 of 2 test clips are also training clips: the test metrics are inflated by "
                     f"clips the model was trained on\n  test {tmp_path / 'test.txt'}:2 is train "
                     f"{tmp_path / 'train.txt'}:2: {data / 'clips/link'}")
  caplog.clear()
  assert annotations.warn_overlap(train, test[:1]) == [] and not caplog.records
