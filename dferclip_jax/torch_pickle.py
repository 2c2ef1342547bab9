"""Reading ``torch.save`` checkpoints without torch, and without running anything they name.

A ``torch.save`` file (torch >= 1.6) is a zip: ``<name>/data.pkl`` (a pickle of the object tree)
and ``<name>/data/<key>`` (raw tensor storages). The pickle is read by an unpickler whose
``find_class`` admits a short allowlist — tensor rebuilding, typed storages, ``OrderedDict``,
the numpy pieces a pickled numpy array needs, and an inert stand-in for the ``RecorderMeter``
the official DFER-CLIP ``main.py`` pickles into its checkpoints. Any other global is refused
with an error naming it, before it is imported: a malicious file cannot execute code here.
Tensors come back as numpy arrays.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# torch's typed storages -> numpy dtypes (bfloat16 through ml_dtypes, which jax ships).
def _storage_dtypes() -> dict[str, np.dtype]:
  import ml_dtypes
  return {
      "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
      "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
      "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
      "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
      "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
  }


class TorchCheckpointError(ValueError):
  """The file is not a checkpoint this reader can (or may) read."""


class RecorderMeterStub:
  """Stands in for the official ``main.RecorderMeter`` (training curves): state kept, no code."""

  def __setstate__(self, state):
    self.__dict__.update(state if isinstance(state, dict) else {"state": state})


class _StorageType:
  def __init__(self, name: str, dtype: np.dtype):
    self.name, self.dtype = name, dtype


# A view may repeat storage elements (zero strides), but not into more than this many elements: no
# checkpoint tensor needs it, and an 8-byte file could otherwise ask for terabytes.
MAX_REPEATED_VIEW_ELEMENTS = 2 ** 24
_MAX_DIMS = 64


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def view_problem(storage, storage_offset, size, stride) -> str | None:
  """Why ``storage[offset + sum(i_k * stride_k)]`` over ``size`` would read outside ``storage``
  (or is not a tensor view at all); None for a valid view. Every element read must lie at
  ``offset + sum((size_k - 1) * stride_k) < len(storage)``, with nothing negative."""
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    return f"its storage is a {type(storage).__name__}, not a tensor storage"
  if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
    return f"size {size!r} and stride {stride!r} must be tuples"
  if not all(_is_int(v) for v in (storage_offset, *size, *stride)):
    return f"offset {storage_offset!r}, size {tuple(size)!r}, stride {tuple(stride)!r} must be integers"
  if len(size) != len(stride) or len(size) > _MAX_DIMS:
    return f"size {tuple(size)} and stride {tuple(stride)} have different or absurd lengths"
  if storage_offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
    return f"negative offset, size or stride (offset {storage_offset}, size {tuple(size)}, stride {tuple(stride)})"
  n = storage.shape[0]
  count = int(np.prod([int(v) for v in size], dtype=object)) if size else 1
  if count == 0:
    return None if storage_offset <= n else f"offset {storage_offset} is past the {n}-element storage"
  last = int(storage_offset) + sum((int(k) - 1) * int(s) for k, s in zip(size, stride))
  if last >= n:
    return (f"size {tuple(size)}, stride {tuple(stride)} at offset {storage_offset} reads element "
            f"{last} of a {n}-element storage")
  if count > max(n, MAX_REPEATED_VIEW_ELEMENTS):
    return f"size {tuple(size)} ({count} elements) is absurd for a {n}-element storage"
  return None


class _InvalidTensor:
  """Left in the object tree where a tensor view failed its checks, so that ``load`` can name the
  key holding it before refusing the file."""

  def __init__(self, problem: str):
    self.problem = problem


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
  del requires_grad, backward_hooks, metadata
  problem = view_problem(storage, storage_offset, size, stride)
  if problem is not None:
    return _InvalidTensor(problem)
  size, stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)
  storage_offset = int(storage_offset)
  if not size:
    return np.array(storage[storage_offset])  # a 0-d array, not a numpy scalar
  if 0 in size:
    return np.zeros(size, storage.dtype)
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # a copy: contiguous, and detached from the shared storage


def _find_invalid(tree, path: str = ""):
  """-> (key path, _InvalidTensor) of the first invalid tensor in the unpickled tree, or None."""
  if isinstance(tree, _InvalidTensor):
    return path or "<root>", tree
  if isinstance(tree, dict):
    children = ((f"{path}.{k}" if path else str(k), v) for k, v in tree.items())
  elif isinstance(tree, (list, tuple)):
    children = ((f"{path}[{i}]", v) for i, v in enumerate(tree))
  elif isinstance(tree, RecorderMeterStub):
    children = ((f"{path}.{k}" if path else str(k), v) for k, v in vars(tree).items())
  else:
    return None
  for child_path, child in children:
    found = _find_invalid(child, child_path)
    if found is not None:
      return found
  return None


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _latin1_encode(text, encoding="utf-8"):
  """Protocol-2 pickles of numpy arrays carry their bytes as ``_codecs.encode(str, 'latin1')``;
  only that codec is allowed (a codec name is a module lookup)."""
  if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
    raise TorchCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
  return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
  allowed = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("__main__", "RecorderMeter"): RecorderMeterStub,
      ("main", "RecorderMeter"): RecorderMeterStub,
      # What a pickled numpy array or scalar needs (the RecorderMeter holds arrays).
      ("numpy", "ndarray"): np.ndarray,
      ("numpy", "dtype"): np.dtype,
      ("_codecs", "encode"): _latin1_encode,
  }
  try:  # numpy 2 moved the module; pickles name either spelling
    from numpy._core import multiarray
  except ImportError:
    from numpy.core import multiarray
  for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(core, "_reconstruct")] = multiarray._reconstruct
    allowed[(core, "scalar")] = multiarray.scalar
  for name, dtype in _storage_dtypes().items():
    allowed[("torch", name)] = _StorageType(name, dtype)
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._source = archive, prefix, source
    self._allowed = _allowed_globals()
    self._allowed[("torch._utils", "_rebuild_tensor_v2")] = self._rebuild_tensor
    self._storages: dict[str, np.ndarray] = {}
    self.invalid: list[_InvalidTensor] = []

  def _rebuild_tensor(self, *args, **kwargs):
    tensor = _rebuild_tensor(*args, **kwargs)
    if isinstance(tensor, _InvalidTensor):
      self.invalid.append(tensor)
    return tensor

  def find_class(self, module, name):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise TorchCheckpointError(
          f"{self._source}: refusing to load the global {module}.{name}: it is not a tensor, a "
          f"storage or a known checkpoint class, and unpickling it could run arbitrary code") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise TorchCheckpointError(f"{self._source}: unknown persistent id {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]  # pid[3]: the device
    entry = f"{self._prefix}data/{key}"
    if not isinstance(storage_type, _StorageType):
      raise TorchCheckpointError(f"{self._source}: storage {entry} has unsupported type {storage_type!r}")
    if not _is_int(numel) or numel < 0:
      raise TorchCheckpointError(f"{self._source}: storage {entry} declares {numel!r} elements")
    if key in self._storages:
      cached = self._storages[key]
      if cached.dtype != storage_type.dtype or cached.shape[0] != numel:
        raise TorchCheckpointError(
            f"{self._source}: storage {entry} is read as {cached.shape[0]} x {cached.dtype} and as "
            f"{numel} x {storage_type.name}: a dtype/storage mismatch")
      return cached
    try:
      raw = self._archive.read(entry)
    except KeyError:
      raise TorchCheckpointError(f"{self._source}: storage {entry} is missing from the archive") from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
      raise TorchCheckpointError(f"{self._source}: storage {entry} is unreadable ({e})") from e
    if len(raw) != numel * storage_type.dtype.itemsize:
      raise TorchCheckpointError(f"{self._source}: storage {entry} holds {len(raw)} bytes, but "
                                 f"{numel} x {storage_type.name} is {numel * storage_type.dtype.itemsize}: "
                                 f"a dtype/storage mismatch")
    self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype, count=numel)
    return self._storages[key]


_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def load(path: str | Path) -> Any:
  """A ``torch.save`` zip file -> its object tree, tensors as numpy arrays."""
  path = Path(path)
  source = str(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  with path.open("rb") as f:
    head = f.read(len(_LEGACY_MAGIC))
  if head == _LEGACY_MAGIC:
    raise TorchCheckpointError(f"{path}: a legacy (pre-1.6, non-zip) torch.save file; re-save it "
                               f"with a current torch (torch.save(torch.load(f), g))")
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise TorchCheckpointError(f"{path}: not a torch.save zip archive, or truncated ({e})") from e
  with archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise TorchCheckpointError(f"{path}: expected one data.pkl in the archive, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little",):
      raise TorchCheckpointError(f"{path}: big-endian checkpoints are not supported")
    try:
      data = archive.read(pickles[0])
      unpickler = _RestrictedUnpickler(data, archive, prefix, source)
      tree = unpickler.load()
    except TorchCheckpointError:
      raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError,
            IndexError, AttributeError) as e:
      raise TorchCheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from e
  if unpickler.invalid:
    key, tensor = _find_invalid(tree) or ("<unknown>", unpickler.invalid[0])
    raise TorchCheckpointError(f"{path}: tensor {key!r} is not a valid view of its storage: {tensor.problem}")
  return tree
