"""What the ``torch.save`` reader (``torch_pickle``) allows: the size limits, the dtype tables, the
globals a checkpoint may name, the inert records the interpreter builds instead of objects, and
the checks of a tensor's view of its storage. Data only, and pure functions over it.
"""

from __future__ import annotations

import numpy as np

MiB = 2 ** 20

# ----------------------------------------------------------------------------- limits
# The real checkpoints (DFER-CLIP ViT-B/16 with optimizer and RecorderMeter, ~600 MB) need a
# few hundred storages, a data.pkl under 1 MB, some 20,000 pickle opcodes and nesting depth 4.
# Each bound leaves a wide margin over that and keeps a hostile file well inside 2 GiB.

# data.pkl is read whole: only the raw storages are big.
MAX_PICKLE_BYTES = 64 * MiB
# Every opcode makes at most one new value or moves values already made, so this bounds the
# interpreter's memory (about 200 bytes an opcode at worst).
MAX_PICKLE_OPS = 1_000_000
# Values the tree holds when shared containers are counted once per place they appear: what a
# caller walking the tree will visit (a pickle can share a list inside itself 2^60 times).
MAX_TREE_VALUES = 1_000_000
# Containers inside containers. Bounded while the tree is built, so nothing here or in a caller
# walking it recurses deeper than this.
MAX_NESTING = 100
MAX_STRING_BYTES = 16 * MiB  # one str or bytes value
MAX_LINE_BYTES = 256  # a text opcode's argument (GLOBAL's module and name, INT, FLOAT, PUT, GET)
MAX_INT_BYTES = 32  # LONG1/LONG4 arguments: checkpoint integers fit in 64 bits
MAX_MEMBERS = 100_000  # zip members; read before any member
MAX_CENTRAL_DIRECTORY_BYTES = 32 * MiB
MAX_SMALL_MEMBER_BYTES = 64  # byteorder
# One tensor may repeat storage elements (zero strides), but not into more than this many
# elements, whatever its storage's size.
MAX_REPEATED_VIEW_ELEMENTS = 2 ** 24
# All tensors together may need at most VIEW_BYTES_FACTOR times the storage bytes the file really
# holds, plus VIEW_BYTES_ALLOWANCE. A state dict reads each storage once (factor 1); a second view
# of the same storage (a transpose or a slice saved beside the original) fits in factor 2; the
# allowance is for small expanded buffers. So a file can make this reader allocate about
# 3 x its own size + 64 MiB, never more: 200 stride-0 views of one 8-byte storage are refused.
VIEW_BYTES_FACTOR = 2
VIEW_BYTES_ALLOWANCE = 64 * MiB
MAX_DIMS = 64
# Elements in any array counting only its non-zero dimensions (an empty [0, 2^62] is no array).
MAX_ELEMENTS = 2 ** 48

# ----------------------------------------------------------------------------- dtype tables

# torch typed storage class -> (name, numpy dtype string, itemsize). torch.save writes
# little-endian storages; bfloat16 comes from ml_dtypes (which jax ships), imported when needed.
STORAGE_TYPES = {
    "FloatStorage": ("float32", "<f4", 4), "DoubleStorage": ("float64", "<f8", 8),
    "HalfStorage": ("float16", "<f2", 2), "BFloat16Storage": ("bfloat16", "bfloat16", 2),
    "LongStorage": ("int64", "<i8", 8), "IntStorage": ("int32", "<i4", 4),
    "ShortStorage": ("int16", "<i2", 2), "CharStorage": ("int8", "|i1", 1),
    "ByteStorage": ("uint8", "|u1", 1), "BoolStorage": ("bool", "|b1", 1),
}
# Pickled numpy values: the dtype code numpy pickles (``dtype('f4', False, True)``) with the byte
# order of its state -> the dtype. Plain numbers only: no objects, strings, records or subarrays.
NUMERIC_CODES = ("b1", "i1", "u1", "i2", "u2", "f2", "i4", "u4", "f4", "i8", "u8", "f8", "c8",
                  "c16")
NUMPY_DTYPES = {
    (order, code): np.dtype(order + code)
    for code in NUMERIC_CODES
    for order in (("|",) if code in ("b1", "i1", "u1") else ("<", ">"))
}


def storage_dtype(type_name: str) -> np.dtype:
  spelling = STORAGE_TYPES[type_name][1]
  if spelling == "bfloat16":
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(spelling)


class TorchCheckpointError(ValueError):
  """The file is not a checkpoint this reader can (or may) read."""


class RecorderMeterStub:
  """Stands in for the official ``main.RecorderMeter`` (training curves): its attributes, as
  plain values (numbers, strings, numpy arrays of a table dtype), and no code."""

  def __repr__(self):
    return f"RecorderMeterStub({', '.join(sorted(vars(self)))})"


# ----------------------------------------------------------------------------- inert records


class Global:
  """An allowed global, by name: what it does is decided by ``Pickle``, never by calling it."""
  __slots__ = ("module", "name", "kind")

  def __init__(self, module, name, kind):
    self.module, self.name, self.kind = module, name, kind

  def __str__(self):
    return f"{clean(self.module)}.{clean(self.name)}"


def allowed_globals() -> dict[tuple[str, str], str]:
  allowed = {
      ("collections", "OrderedDict"): "OrderedDict",
      ("torch._utils", "_rebuild_tensor_v2"): "tensor",
      ("torch._utils", "_rebuild_parameter"): "parameter",
      ("__main__", "RecorderMeter"): "RecorderMeter",
      ("main", "RecorderMeter"): "RecorderMeter",
      ("numpy", "ndarray"): "ndarray",
      ("numpy", "dtype"): "dtype",
      ("_codecs", "encode"): "encode",
      # Protocol 2 writes b"" as bytes() (Python 2's name for the module with fix_imports).
      ("builtins", "bytes"): "bytes",
      ("__builtin__", "bytes"): "bytes",
  }
  for core in ("numpy.core", "numpy._core"):  # numpy 2 moved the module; pickles name either
    allowed[(f"{core}.multiarray", "_reconstruct")] = "reconstruct"
    allowed[(f"{core}.multiarray", "scalar")] = "scalar"
    allowed[(f"{core}.numeric", "_frombuffer")] = "frombuffer"  # pickle protocol 5
  for name in STORAGE_TYPES:
    allowed[("torch", name)] = "storage"
  return allowed


ALLOWED_GLOBALS = allowed_globals()


class StorageRef:
  """``<prefix>data/<key>``: ``numel`` elements of a ``STORAGE_TYPES`` type, not yet read."""

  def __init__(self, key, entry, type_name, numel):
    self.key, self.entry, self.type_name, self.numel = key, entry, type_name, numel


class TensorRef:
  """A checked view of a storage (``problem`` says why it is not one), not yet read."""

  def __init__(self, storage, offset, size, stride, problem):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
    self.problem = problem
    self.count = 0 if problem else prod(size)


class PendingDtype:
  """A ``numpy.dtype(code)`` whose BUILD state has not come yet; ``dtype`` once it has."""

  def __init__(self, code):
    self.code, self.dtype = code, None


class PendingArray:
  """A ``numpy.core.multiarray._reconstruct`` result whose BUILD state has not come yet."""

  def __init__(self):
    self.array = None


LEAVES = (type(None), bool, int, float, complex, str, bytes, np.ndarray, np.generic, np.dtype)
CONTAINERS = (list, tuple, dict, RecorderMeterStub)


def prod(values) -> int:
  out = 1
  for v in values:
    out *= int(v)
  return out


def is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def clean(text: str, limit: int = 100) -> str:
  """A name from the file as it may appear in a message: printable, and bounded."""
  text = text if len(text) <= limit else text[:limit] + "..."
  return text if text.isprintable() and text.isascii() else repr(text)[1:-1]


def short(value) -> str:
  """A bounded description of a value from the file, for an error message."""
  if isinstance(value, Global):
    return f"the global {value}"
  if isinstance(value, (str, bytes)):
    return repr(value[:60]) + ("..." if len(value) > 60 else "")
  if isinstance(value, int) and not isinstance(value, bool):
    return repr(value) if value.bit_length() <= 256 else f"a {value.bit_length()}-bit integer"
  if value is None or isinstance(value, (bool, float)):
    return repr(value)
  if isinstance(value, tuple) and len(value) <= 8 and all(isinstance(v, (int, str, type(None)))
                                                          for v in value):
    return "(" + ", ".join(short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return f"a {type(value).__name__.lstrip('_')}"


def shape_problem(shape) -> str | None:
  if not isinstance(shape, (tuple, list)):
    return f"shape {short(shape)} is not a tuple"
  if len(shape) > MAX_DIMS:
    return f"a shape of {len(shape)} dimensions (at most {MAX_DIMS})"
  if not all(is_int(v) for v in shape):
    return f"shape {short(tuple(shape))} must be integers"
  if min(shape, default=0) < 0:
    return f"negative size in shape {tuple(shape)}"
  if prod(v for v in shape if v) > MAX_ELEMENTS:
    return f"shape {tuple(shape)} is absurd (more than 2^48 elements)"
  return None


def view_problem(storage, storage_offset, size, stride) -> str | None:
  """Why ``storage[offset + sum(i_k * stride_k)]`` over ``size`` would read outside ``storage``
  (or is not a tensor view at all); None for a valid view. Every element read must lie at
  ``offset + sum((size_k - 1) * stride_k) < numel``, with nothing negative."""
  if not isinstance(storage, StorageRef):
    return f"its storage is a {type(storage).__name__.lstrip('_')}, not a tensor storage"
  if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
    return f"size {short(size)} and stride {short(stride)} must be tuples"
  if len(size) != len(stride) or len(size) > MAX_DIMS:
    return f"size and stride have different or absurd lengths ({len(size)} and {len(stride)})"
  if not all(is_int(v) for v in (storage_offset, *size, *stride)):
    return (f"offset {short(storage_offset)}, size {short(tuple(size))}, "
            f"stride {short(tuple(stride))} must be integers")
  size, stride, storage_offset = tuple(map(int, size)), tuple(map(int, stride)), int(storage_offset)
  if storage_offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
    return (f"negative offset, size or stride (offset {storage_offset}, size {size}, "
            f"stride {stride})")
  n = storage.numel
  count = prod(size)
  if count == 0:
    if storage_offset > n:
      return f"offset {storage_offset} is past the {n}-element storage"
    return shape_problem(size)
  last = storage_offset + sum((k - 1) * s for k, s in zip(size, stride))
  if last >= n:
    return (f"size {size}, stride {stride} at offset {storage_offset} reads element {last} of a "
            f"{n}-element storage")
  if count > max(n, MAX_REPEATED_VIEW_ELEMENTS):
    return f"size {size} ({count} elements) is absurd for a {n}-element storage"
  return None
