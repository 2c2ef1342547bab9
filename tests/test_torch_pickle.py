"""The restricted ``torch.save`` reader against crafted files: every tensor view is checked against
its storage (no out-of-bounds read, no crash), and each refusal names the key at fault."""

import collections
import io
import pickle
import zipfile

import numpy as np
import pytest

from dferclip_jax import torch_pickle

torch = pytest.importorskip("torch")  # only to name torch's globals in the crafted pickles


class Storage:
  """A reference to ``data/<key>``, pickled as torch does: a persistent id."""

  def __init__(self, key="0", storage_type=None, numel=4):
    self.key, self.numel = key, numel
    self.storage_type = storage_type or torch.FloatStorage


class View:
  """A tensor as torch pickles it: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    return torch._utils._rebuild_tensor_v2, self.args


class CraftingPickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, Storage):
      return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
    return None


def write(tmp_path, tree, storages=None, name="crafted.pth"):
  """A torch.save-shaped zip; ``storages``: key -> raw bytes (default: data/0 = float32 [0, 1, 2, 3])."""
  storages = {"0": np.arange(4, dtype=np.float32).tobytes()} if storages is None else storages
  buffer = io.BytesIO()
  CraftingPickler(buffer, protocol=2).dump(tree)
  path = tmp_path / name
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
    archive.writestr("archive/byteorder", "little")
    for key, raw in storages.items():
      archive.writestr(f"archive/data/{key}", raw)
  return path


def test_valid_views_read_what_torch_reads(tmp_path):
  s = Storage()
  path = write(tmp_path, {"state_dict": collections.OrderedDict(
      transposed=View(s, 0, (2, 2), (1, 2)), tail=View(s, 2, (2,), (1,)), scalar=View(s, 3, (), ()),
      repeated=View(s, 1, (3,), (0,)), empty=View(s, 4, (0,), (1,)))})
  sd = torch_pickle.load(path)["state_dict"]
  np.testing.assert_array_equal(sd["transposed"], [[0, 2], [1, 3]])
  np.testing.assert_array_equal(sd["tail"], [2, 3])
  assert sd["scalar"].shape == () and sd["scalar"] == 3
  np.testing.assert_array_equal(sd["repeated"], [1, 1, 1])
  assert sd["empty"].shape == (0,)
  # And the same numbers from torch itself, on a file torch wrote.
  t = torch.arange(4, dtype=torch.float32)
  torch.save({"transposed": t.view(2, 2).t(), "tail": t[2:]}, tmp_path / "real.pth")
  real = torch_pickle.load(tmp_path / "real.pth")
  np.testing.assert_array_equal(real["transposed"], [[0, 2], [1, 3]])
  np.testing.assert_array_equal(real["tail"], [2, 3])


# Each crafted view of the 4-element storage, and what the error must say about it.
BAD_VIEWS = {
    "size_past_the_end": ((0, (100,), (1,)), "reads element 99 of a 4-element storage"),
    "large_stride": ((0, (2,), (1000,)), "reads element 1000 of a 4-element storage"),
    "huge_stride_2d": ((1, (2, 2), (1, 2 ** 40)), r"reads element 1099511627778 of a 4-element"),
    "offset_past_the_end": ((4, (1,), (1,)), "reads element 4 of a 4-element storage"),
    "scalar_past_the_end": ((4, (), ()), "reads element 4 of a 4-element storage"),
    "negative_offset": ((-2, (2,), (1,)), "negative offset, size or stride"),
    "negative_stride": ((3, (2,), (-1,)), "negative offset, size or stride"),
    "negative_size": ((0, (-1,), (1,)), "negative offset, size or stride"),
    "absurd_size": ((0, (2 ** 20, 2 ** 20), (0, 0)), r"\(1099511627776 elements\) is absurd"),
    "mismatched_lengths": ((0, (2, 2), (1,)), "different or absurd lengths"),
    "float_size": ((0, (2.5,), (1,)), "must be integers"),
    "string_offset": (("0", (2,), (1,)), "must be integers"),
    "empty_past_the_end": ((9, (0,), (1,)), "offset 9 is past the 4-element storage"),
}


@pytest.mark.parametrize("case", sorted(BAD_VIEWS))
def test_crafted_view_is_refused_naming_its_key(tmp_path, case):
  (offset, size, stride), message = BAD_VIEWS[case]
  path = write(tmp_path, {"state_dict": {"good": View(Storage(), 0, (4,), (1,)),
                                         "visual.conv1.weight": View(Storage(), offset, size, stride)}})
  with pytest.raises(torch_pickle.TorchCheckpointError,
                     match=r"tensor 'state_dict\.visual\.conv1\.weight' is not a valid view .*" + message):
    torch_pickle.load(path)


def test_view_nested_in_a_list_is_named_by_index(tmp_path):
  path = write(tmp_path, {"optimizer": {"state": [View(Storage(), 0, (5,), (1,))]}})
  with pytest.raises(torch_pickle.TorchCheckpointError, match=r"tensor 'optimizer\.state\[0\]'"):
    torch_pickle.load(path)


def test_storage_argument_that_is_not_a_storage(tmp_path):
  path = write(tmp_path, {"w": View(7, 0, (1,), (1,))})
  with pytest.raises(torch_pickle.TorchCheckpointError, match="tensor 'w' .*its storage is a int"):
    torch_pickle.load(path)


def test_storage_bytes_that_do_not_match_its_dtype(tmp_path):
  # 4 float32 (16 bytes) declared as 4 int64 (32 bytes).
  path = write(tmp_path, {"w": View(Storage(storage_type=torch.LongStorage), 0, (4,), (1,))})
  with pytest.raises(torch_pickle.TorchCheckpointError,
                     match=r"storage archive/data/0 holds 16 bytes, but 4 x LongStorage is 32: a dtype/storage mismatch"):
    torch_pickle.load(path)
  # More bytes than declared is a mismatch too (torch writes exactly numel * itemsize).
  path = write(tmp_path, {"w": View(Storage(numel=3), 0, (3,), (1,))}, name="long.pth")
  with pytest.raises(torch_pickle.TorchCheckpointError, match="holds 16 bytes, but 3 x FloatStorage is 12"):
    torch_pickle.load(path)


def test_one_storage_read_with_two_dtypes(tmp_path):
  path = write(tmp_path, {"a": View(Storage(), 0, (4,), (1,)),
                          "b": View(Storage(storage_type=torch.IntStorage), 0, (4,), (1,))})
  with pytest.raises(torch_pickle.TorchCheckpointError,
                     match=r"read as 4 x float32 and as 4 x IntStorage: a dtype/storage mismatch"):
    torch_pickle.load(path)


@pytest.mark.parametrize("numel", [-1, "4", 2 ** 62])
def test_absurd_storage_element_counts(tmp_path, numel):
  path = write(tmp_path, {"w": View(Storage(numel=numel), 0, (1,), (1,))})
  with pytest.raises(torch_pickle.TorchCheckpointError, match="storage archive/data/0 (declares|holds)"):
    torch_pickle.load(path)


def test_rebuild_called_with_the_wrong_arguments(tmp_path):
  class Short:
    def __reduce__(self):
      return torch._utils._rebuild_tensor_v2, (1,)

  path = write(tmp_path, {"w": Short()})
  with pytest.raises(torch_pickle.TorchCheckpointError, match="corrupt or truncated checkpoint"):
    torch_pickle.load(path)
