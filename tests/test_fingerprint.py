"""The data fingerprint (data/fingerprint.py): by hand on three clips, equal for the same data
under another root, changed by one frame count, one label or one first frame."""

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from dferclip_jax.data import fingerprint
from dferclip_jax.data.records import ClipRecord


def make_clips(root):
  """Clips b (3 frames, label 2), a (2 frames, label 0), c/d (4 frames, label 1): listed out of
  order, one nested, with different frame counts and labels."""
  rng = np.random.default_rng(0)
  layout = {"b": (3, 2), "a": (2, 0), "c/d": (4, 1)}
  records = []
  for name, (count, label) in layout.items():
    folder = root / name
    folder.mkdir(parents=True)
    for t in range(count):
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{t:05d}.png")
    records.append(ClipRecord(str(folder), count, label))
  names = {r.path: [f"{t:05d}.png" for t in range(r.num_frames)] for r in records}
  return records, names


def by_hand(root):
  """The fingerprint of make_clips(root) as the spec says: lines sorted by clip id."""
  rows = [("a", 2, 0), ("b", 3, 2), ("c/d", 4, 1)]
  lines = "".join(f"{cid}\t{n}\t{label}\n" for cid, n, label in rows)
  firsts = "".join(f"{cid}\t{hashlib.sha256((root / cid / '00000.png').read_bytes()).hexdigest()}\n"
                   for cid, _, _ in rows)
  return {"clips": 3, "frames": 9, "list_sha256": hashlib.sha256(lines.encode()).hexdigest(),
          "first_frames_sha256": hashlib.sha256(firsts.encode()).hexdigest()}


def test_a_split_by_hand(tmp_path):
  records, names = make_clips(tmp_path / "data")
  assert fingerprint.split_fingerprint(records, names, str(tmp_path / "data")) == by_hand(tmp_path / "data")


def test_the_same_data_under_another_root_has_the_same_fingerprint(tmp_path):
  records, names = make_clips(tmp_path / "lab_a" / "DFEW")
  shutil.copytree(tmp_path / "lab_a", tmp_path / "mnt" / "lab_b")
  moved = [ClipRecord(r.path.replace(str(tmp_path / "lab_a"), str(tmp_path / "mnt" / "lab_b")),
                      r.num_frames, r.label) for r in records]
  moved_names = {m.path: names[r.path] for r, m in zip(records, moved)}
  a = fingerprint.split_fingerprint(records, names, fingerprint.id_base(records, None))
  b = fingerprint.split_fingerprint(moved, moved_names, fingerprint.id_base(moved, None))
  assert a == b == by_hand(tmp_path / "lab_a" / "DFEW")  # no root: ids below the clips' common folder
  assert fingerprint.id_base(records, str(tmp_path / "lab_a" / "DFEW")) == str(tmp_path / "lab_a" / "DFEW")


@pytest.mark.parametrize("change", ["frame_count", "label", "first_frame"])
def test_one_change_changes_the_fingerprint(tmp_path, change):
  root = tmp_path / "data"
  records, names = make_clips(root)
  before = fingerprint.split_fingerprint(records, names, str(root))
  if change == "frame_count":
    records[0] = ClipRecord(records[0].path, records[0].num_frames - 1, records[0].label)
  elif change == "label":
    records[1] = ClipRecord(records[1].path, records[1].num_frames, 1)
  else:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "c" / "d" / "00000.png")
  after = fingerprint.split_fingerprint(records, names, str(root))
  changed = {k for k in before if before[k] != after[k]}
  assert changed == {"frame_count": {"frames", "list_sha256"}, "label": {"list_sha256"},
                     "first_frame": {"first_frames_sha256"}}[change]


def test_config_hash_follows_every_key():
  from configs import demo
  a, b = demo.get_config(None), demo.get_config(None)
  assert fingerprint.config_sha256(a) == fingerprint.config_sha256(b)
  b.optim.lr.temporal = 0.5
  assert fingerprint.config_sha256(a) != fingerprint.config_sha256(b)


def test_an_unreadable_first_frame_is_named(tmp_path):
  records, names = make_clips(tmp_path / "data")
  (tmp_path / "data" / "a" / "00000.png").unlink()  # listed, then gone
  with pytest.raises(ValueError, match=r"a/00000.png: cannot read this clip's first frame"):
    fingerprint.split_fingerprint(records, names, str(tmp_path / "data"))
