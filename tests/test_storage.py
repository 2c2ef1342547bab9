"""storage.py without a bucket: which path type a string becomes, what the emulator variable
sets, and local atomic writes (the bucket side is tests/test_gcs.py, against an emulator)."""

import os
import pathlib

import pytest

from dferclip_jax import storage


def test_local_paths_stay_pathlib_and_other_schemes_are_refused(tmp_path):
  assert storage.path("~/x") == pathlib.Path.home() / "x"
  assert type(storage.path("runs/a")) is pathlib.PosixPath
  assert storage.path(f"file://{tmp_path}") == tmp_path
  assert not storage.is_remote("runs/gs://x") and storage.is_remote("gs://b/x")
  with pytest.raises(ValueError, match=r"^s3://b/x: only local paths and gs:// paths are supported$"):
    storage.path("s3://b/x")


def test_a_gs_path_is_an_epath_over_gcsfs():
  pytest.importorskip("gcsfs")
  from etils import epath
  p = storage.path("gs://bkt/run") / "checkpoints"
  assert isinstance(p, epath.Path) and os.fspath(p) == "gs://bkt/run/checkpoints"
  assert storage.absolute("gs://bkt/run") == storage.path("gs://bkt/run")
  assert os.environ["EPATH_USE_TF"] == "false"  # gcsfs, not TensorFlow's client, with or without an emulator


@pytest.mark.parametrize("host, url", [("http://127.0.0.1:9023", "http://127.0.0.1:9023"),
                                       ("localhost:9023", "http://localhost:9023")])
def test_the_emulator_variable_points_tensorstore_there(host, url):
  env = {"STORAGE_EMULATOR_HOST": host}
  storage.configure_emulator(env)
  assert env == {"STORAGE_EMULATOR_HOST": host, "TENSORSTORE_GCS_HTTP_URL": url,
                 "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
  mine = {"STORAGE_EMULATOR_HOST": host, "TENSORSTORE_GCS_HTTP_URL": "http://elsewhere:1"}
  storage.configure_emulator(mine)
  assert mine["TENSORSTORE_GCS_HTTP_URL"] == "http://elsewhere:1"  # a user's own setting wins
  unset = {}
  storage.configure_emulator(unset)
  assert unset == {}  # real GCS: nothing set


def test_local_atomic_write_leaves_the_whole_file_and_no_temporary(tmp_path):
  target = tmp_path / "sub" / "results.json"
  storage.write_text_atomic(target, "one")
  storage.write_text_atomic(target, "two")
  assert target.read_text() == "two" and os.listdir(target.parent) == ["results.json"]


def test_read_json_bounds_a_file_before_reading_it(tmp_path):
  path = tmp_path / "some.json"
  assert storage.read_json(path) is None  # absent
  path.write_text('{"a": [1, 2.5, null]}')
  assert storage.read_json(path) == {"a": [1, 2.5, None]}
  for broken, error in ((b'{"a": tr', r"^Expecting value"), (b'{"\xff": 1}', r"'utf-8' codec")):
    path.write_bytes(broken)
    with pytest.raises(ValueError, match=error):
      storage.read_json(path)
  # Past the bound, refused by its size before a byte is read: a sparse file of NULs would be a
  # JSON error if it were read.
  with open(path, "wb") as f:
    f.truncate(storage.MAX_JSON_BYTES + 1)
  with pytest.raises(ValueError, match=rf"^{storage.MAX_JSON_BYTES + 1} bytes, over the "
                     rf"{storage.MAX_JSON_BYTES} a JSON file may have$"):
    storage.read_json(path)
  path.write_bytes(b"[7]" + b" " * (storage.MAX_JSON_BYTES - 3))  # exactly at the bound: read
  assert storage.read_json(path) == [7]
  path.write_bytes(b"[7]   ")
  with pytest.raises(ValueError, match=r"^6 bytes, over the 5 a JSON file may have$"):
    storage.read_json(path, max_bytes=5)
