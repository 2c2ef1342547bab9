"""Reading ``torch.save`` checkpoints without torch, without running anything they name, and
without letting them decide what is allocated.

A ``torch.save`` file (torch >= 1.6) is a zip: ``<name>/data.pkl`` (a pickle of the object tree)
and ``<name>/data/<key>`` (raw tensor storages). Nothing here hands the file to ``pickle`` or to a
numpy constructor whose arguments the file controls. ``_Pickle``, a small interpreter of pickle
opcodes, builds the tree from plain Python values and inert records, and it alone decides what
the few allowed globals mean:

* a tensor (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``) is recorded as a view of
  a storage and checked against it; tensors are read only once the whole tree is known, under
  one byte budget for all of them together;
* a dtype is looked up in the fixed tables below (``STORAGE_TYPES`` for torch storages,
  ``NUMPY_DTYPES`` for pickled numpy values): a pickled ``numpy.dtype``'s state is compared with
  the one a plain numeric dtype has, never given to ``numpy.dtype``, and there are no object
  arrays;
* a pickled numpy array or scalar (the official ``RecorderMeter`` holds some) is parsed here: a
  shape, a table dtype and exactly ``prod(shape) * itemsize`` raw bytes;
* the official ``main.RecorderMeter`` becomes an inert ``RecorderMeterStub`` holding plain values.

Any other global, and every opcode that makes instances of arbitrary classes, is refused with an
error naming it. Every size the file declares is checked before anything of that size is
allocated (the ``MAX_*`` constants; ``docs/model.md`` says why each is what it is). Any failure is
one ``TorchCheckpointError`` naming the member, the byte of data.pkl, or the key at fault.
Tensors come back as numpy arrays.
"""

from __future__ import annotations

import collections
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dferclip_jax import storage

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
_NUMERIC_CODES = ("b1", "i1", "u1", "i2", "u2", "f2", "i4", "u4", "f4", "i8", "u8", "f8", "c8",
                  "c16")
NUMPY_DTYPES = {
    (order, code): np.dtype(order + code)
    for code in _NUMERIC_CODES
    for order in (("|",) if code in ("b1", "i1", "u1") else ("<", ">"))
}


def _storage_dtype(type_name: str) -> np.dtype:
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


class _Global:
  """An allowed global, by name: what it does is decided by ``_Pickle``, never by calling it."""
  __slots__ = ("module", "name", "kind")

  def __init__(self, module, name, kind):
    self.module, self.name, self.kind = module, name, kind

  def __str__(self):
    return f"{_clean(self.module)}.{_clean(self.name)}"


def _allowed_globals() -> dict[tuple[str, str], str]:
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


_ALLOWED_GLOBALS = _allowed_globals()


class _StorageRef:
  """``<prefix>data/<key>``: ``numel`` elements of a ``STORAGE_TYPES`` type, not yet read."""

  def __init__(self, key, entry, type_name, numel):
    self.key, self.entry, self.type_name, self.numel = key, entry, type_name, numel


class _TensorRef:
  """A checked view of a storage (``problem`` says why it is not one), not yet read."""

  def __init__(self, storage, offset, size, stride, problem):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
    self.problem = problem
    self.count = 0 if problem else _prod(size)


class _PendingDtype:
  """A ``numpy.dtype(code)`` whose BUILD state has not come yet; ``dtype`` once it has."""

  def __init__(self, code):
    self.code, self.dtype = code, None


class _PendingArray:
  """A ``numpy.core.multiarray._reconstruct`` result whose BUILD state has not come yet."""

  def __init__(self):
    self.array = None


_LEAVES = (type(None), bool, int, float, complex, str, bytes, np.ndarray, np.generic, np.dtype)
_CONTAINERS = (list, tuple, dict, RecorderMeterStub)


def _prod(values) -> int:
  out = 1
  for v in values:
    out *= int(v)
  return out


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _clean(text: str, limit: int = 100) -> str:
  """A name from the file as it may appear in a message: printable, and bounded."""
  text = text if len(text) <= limit else text[:limit] + "..."
  return text if text.isprintable() and text.isascii() else repr(text)[1:-1]


def _short(value) -> str:
  """A bounded description of a value from the file, for an error message."""
  if isinstance(value, _Global):
    return f"the global {value}"
  if isinstance(value, (str, bytes)):
    return repr(value[:60]) + ("..." if len(value) > 60 else "")
  if isinstance(value, int) and not isinstance(value, bool):
    return repr(value) if value.bit_length() <= 256 else f"a {value.bit_length()}-bit integer"
  if value is None or isinstance(value, (bool, float)):
    return repr(value)
  if isinstance(value, tuple) and len(value) <= 8 and all(isinstance(v, (int, str, type(None)))
                                                          for v in value):
    return "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return f"a {type(value).__name__.lstrip('_')}"


def _shape_problem(shape) -> str | None:
  if not isinstance(shape, (tuple, list)):
    return f"shape {_short(shape)} is not a tuple"
  if len(shape) > MAX_DIMS:
    return f"a shape of {len(shape)} dimensions (at most {MAX_DIMS})"
  if not all(_is_int(v) for v in shape):
    return f"shape {_short(tuple(shape))} must be integers"
  if min(shape, default=0) < 0:
    return f"negative size in shape {tuple(shape)}"
  if _prod(v for v in shape if v) > MAX_ELEMENTS:
    return f"shape {tuple(shape)} is absurd (more than 2^48 elements)"
  return None


def _view_problem(storage, storage_offset, size, stride) -> str | None:
  """Why ``storage[offset + sum(i_k * stride_k)]`` over ``size`` would read outside ``storage``
  (or is not a tensor view at all); None for a valid view. Every element read must lie at
  ``offset + sum((size_k - 1) * stride_k) < numel``, with nothing negative."""
  if not isinstance(storage, _StorageRef):
    return f"its storage is a {type(storage).__name__.lstrip('_')}, not a tensor storage"
  if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
    return f"size {_short(size)} and stride {_short(stride)} must be tuples"
  if len(size) != len(stride) or len(size) > MAX_DIMS:
    return f"size and stride have different or absurd lengths ({len(size)} and {len(stride)})"
  if not all(_is_int(v) for v in (storage_offset, *size, *stride)):
    return (f"offset {_short(storage_offset)}, size {_short(tuple(size))}, "
            f"stride {_short(tuple(stride))} must be integers")
  size, stride, storage_offset = tuple(map(int, size)), tuple(map(int, stride)), int(storage_offset)
  if storage_offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
    return (f"negative offset, size or stride (offset {storage_offset}, size {size}, "
            f"stride {stride})")
  n = storage.numel
  count = _prod(size)
  if count == 0:
    if storage_offset > n:
      return f"offset {storage_offset} is past the {n}-element storage"
    return _shape_problem(size)
  last = storage_offset + sum((k - 1) * s for k, s in zip(size, stride))
  if last >= n:
    return (f"size {size}, stride {stride} at offset {storage_offset} reads element {last} of a "
            f"{n}-element storage")
  if count > max(n, MAX_REPEATED_VIEW_ELEMENTS):
    return f"size {size} ({count} elements) is absurd for a {n}-element storage"
  return None


# ----------------------------------------------------------------------------- the interpreter

_OPCODE_NAMES = {getattr(pickle, n)[0]: n for n in dir(pickle)
                 if n.isupper() and isinstance(getattr(pickle, n), bytes)
                 and len(getattr(pickle, n)) == 1}
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


class _Pickle:
  """Runs the opcodes of one pickle over plain values and inert records; see the module doc.

  The file's containers can only be filled while nothing holds them yet: a list or dict placed
  inside another value is final (anything else would be a cycle, which no checkpoint has). So a
  container's nesting depth and expanded size are known when it is placed, and bounded there.
  """

  def __init__(self, data: bytes, source: str, where: str, prefix: str):
    self.data, self.source, self.where, self.prefix = data, source, where, prefix
    self.pos = self.op_pos = 0
    self.stack: list = []
    self.marks: list[int] = []
    self.memo: dict[int, Any] = {}
    self.placed: dict[int, Any] = {}  # id -> container now inside another value (kept alive)
    self.shape: dict[int, tuple[Any, int, int]] = {}  # id -> (container, depth, values)
    self.storages: dict[str, _StorageRef] = {}

  # -- errors and reading

  def refuse(self, message: str):
    raise TorchCheckpointError(f"{self.source}: {self.where} at byte {self.op_pos}: {message}")

  def corrupt(self, message: str):
    raise TorchCheckpointError(f"{self.source}: corrupt or truncated checkpoint: {self.where} at "
                               f"byte {self.op_pos}: {message}")

  def take(self, n: int) -> bytes:
    if n > len(self.data) - self.pos:
      self.corrupt(f"truncated: needs {n} bytes, {len(self.data) - self.pos} are left")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def unpack(self, fmt: str):
    return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

  def line(self) -> bytes:
    end = self.data.find(b"\n", self.pos, self.pos + MAX_LINE_BYTES + 1)
    if end < 0:
      self.corrupt(f"no end of line within {MAX_LINE_BYTES} bytes")
    out = self.data[self.pos:end]
    self.pos = end + 1
    return out

  def text(self, raw: bytes) -> str:
    try:
      return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as e:
      self.corrupt(f"a string that is not UTF-8 ({e.reason} at its byte {e.start})")

  def sized(self, n: int, what: str) -> bytes:
    if n > MAX_STRING_BYTES:
      self.refuse(f"a {n}-byte {what}: more than the {MAX_STRING_BYTES} allowed (MAX_STRING_BYTES)")
    return self.take(n)

  # -- the stack

  def push(self, value):
    self.stack.append(value)

  def pop(self):
    if len(self.stack) <= (self.marks[-1] if self.marks else 0):
      self.corrupt("stack underflow")
    return self.stack.pop()

  def top(self):
    if len(self.stack) <= (self.marks[-1] if self.marks else 0):
      self.corrupt("stack underflow")
    return self.stack[-1]

  def pop_mark(self) -> list:
    if not self.marks:
      self.corrupt("no MARK to pop to")
    mark = self.marks.pop()
    items = self.stack[mark:]
    del self.stack[mark:]
    return items

  # -- containers

  def place(self, container, children):
    """Puts ``children`` into ``container`` (already done by the caller for a new tuple): they
    are final from now on, and the container's depth and size grow by theirs."""
    for child in children:
      if isinstance(child, (list, dict, RecorderMeterStub)):
        self.placed[id(child)] = child
    if id(container) in self.placed:
      self.refuse(f"a {type(container).__name__} is changed after it was put inside another value "
                  f"(a cycle, or a shared container edited): no checkpoint does that")
    _, depth, values = self.shape.get(id(container), (container, 1, 1))
    for child in children:
      if isinstance(child, _CONTAINERS):
        _, child_depth, child_values = self.shape.get(id(child), (child, 1, 1))
      else:
        child_depth, child_values = 0, 1
      depth, values = max(depth, child_depth + 1), values + child_values
    if depth > MAX_NESTING:
      self.refuse(f"containers nested more than {MAX_NESTING} deep (MAX_NESTING)")
    if values > MAX_TREE_VALUES:
      self.refuse(f"the object tree holds more than {MAX_TREE_VALUES} values when shared parts are "
                  f"counted where they appear (MAX_TREE_VALUES)")
    self.shape[id(container)] = (container, depth, values)

  def new_tuple(self, items):
    t = tuple(items)
    self.place(t, t)
    self.push(t)

  def key(self, k):
    if not isinstance(k, (str, int, float, bytes, type(None))):
      self.refuse(f"a dict key that is {_short(k)}: only str, int, float, bytes and None keys are "
                  f"read")
    return k

  def set_items(self, target, items):
    if not isinstance(target, dict):
      self.corrupt(f"SETITEM on {_short(target)}")
    if len(items) % 2:
      self.corrupt("SETITEMS with an odd number of items")
    keys = [self.key(k) for k in items[0::2]]
    self.place(target, items[1::2])
    for k, v in zip(keys, items[1::2]):
      target[k] = v

  def append(self, target, items):
    if not isinstance(target, list):
      self.corrupt(f"APPEND to {_short(target)}")
    self.place(target, items)
    target.extend(items)

  # -- globals and calls

  def find_global(self, module: str, name: str) -> _Global:
    kind = _ALLOWED_GLOBALS.get((module, name))
    if kind is None:
      self.refuse(f"refusing to load the global {_clean(module)}.{_clean(name)}: it is not a "
                  f"tensor, a storage or a known checkpoint class, and unpickling it could run "
                  f"arbitrary code")
    return _Global(module, name, kind)

  def reduce(self, func, args):
    if not isinstance(func, _Global):
      self.refuse(f"REDUCE calls {_short(func)}: only the allowed globals are called")
    if not isinstance(args, tuple):
      self.corrupt(f"REDUCE with arguments {_short(args)}, not a tuple")
    kind = func.kind
    if kind == "OrderedDict":
      if args:
        self.refuse("collections.OrderedDict is only read empty, then filled by SETITEMS")
      return collections.OrderedDict()
    if kind == "tensor":
      if not 4 <= len(args) <= 7:
        self.corrupt(f"{func} takes 4 to 7 arguments, got {len(args)}")
      storage, offset, size, stride = args[:4]
      return _TensorRef(storage, offset, size, stride, _view_problem(storage, offset, size, stride))
    if kind == "parameter":
      if not 1 <= len(args) <= 3:
        self.corrupt(f"{func} takes 1 to 3 arguments, got {len(args)}")
      if not isinstance(args[0], _TensorRef):
        self.refuse(f"{func} of {_short(args[0])}, not a tensor")
      return args[0]
    if kind == "dtype":
      code = args[0] if args else None
      if not 1 <= len(args) <= 3 or not isinstance(code, str) or code not in _NUMERIC_CODES:
        self.refuse(f"numpy dtype {_short(code)} is not one of the plain numeric types "
                    f"({', '.join(_NUMERIC_CODES)}): object, string and record dtypes are never "
                    f"read")
      return _PendingDtype(code)
    if kind == "reconstruct":
      if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].kind == "ndarray"):
        self.refuse(f"{func} is only read as numpy pickles arrays: "
                    f"_reconstruct(numpy.ndarray, (0,), b'b')")
      return _PendingArray()
    if kind == "scalar":
      if len(args) != 2:
        self.refuse(f"{func} takes a dtype and its bytes")
      return self.array(args[1], self.dtype(args[0]), (), False, "a numpy scalar")[()]
    if kind == "frombuffer":
      if len(args) != 4 or not isinstance(args[3], str) or args[3] not in ("C", "F"):
        self.refuse(f"{func} takes bytes, a dtype, a shape and 'C' or 'F'")
      return self.array(args[0], self.dtype(args[1]), args[2], args[3] == "F", "a numpy array")
    if kind == "bytes":
      if args:
        self.refuse(f"{func} is only read without arguments (an empty bytes)")
      return b""
    if kind == "encode":
      if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str) \
          or args[1] not in ("latin1", "latin-1"):
        self.refuse(f"{func} is only read with a str and the latin1 codec (a codec name is a "
                    f"module lookup), not {_short(args[1] if len(args) > 1 else None)}")
      try:
        return args[0].encode("latin1")
      except UnicodeEncodeError:
        self.corrupt("_codecs.encode of a str that is not latin1")
    self.refuse(f"{func} is not callable here")

  def dtype(self, value) -> np.dtype:
    if not isinstance(value, _PendingDtype):
      self.refuse(f"a numpy dtype that is {_short(value)}")
    if value.dtype is None:
      self.refuse(f"numpy dtype {value.code!r} is used before its state was set")
    return value.dtype

  def array(self, raw, dtype: np.dtype, shape, fortran, what: str) -> np.ndarray:
    """``raw`` as ``shape`` of ``dtype`` (a table dtype): a copy, allocated only once the bytes
    are known to be exactly what the shape needs."""
    problem = _shape_problem(shape)
    if problem:
      self.refuse(f"{what}: {problem}")
    if not isinstance(raw, bytes):
      self.refuse(f"{what} whose data is {_short(raw)}, not bytes: only plain numbers are read")
    if not isinstance(fortran, bool):
      self.corrupt(f"{what} with order flag {_short(fortran)}")
    need = _prod(shape) * dtype.itemsize
    if len(raw) != need:
      self.refuse(f"{what} of shape {tuple(shape)} and dtype {dtype.str} needs {need} bytes, its "
                  f"pickle holds {len(raw)}")
    if dtype.kind == "b":  # any byte but 0 or 1 is no bool
      flat = np.frombuffer(raw, np.uint8) != 0
    else:
      flat = np.frombuffer(raw, dtype).copy()
    return flat.reshape(tuple(int(v) for v in shape), order="F" if fortran else "C")

  def build(self, obj, state):
    if isinstance(obj, _PendingDtype):
      if obj.dtype is not None:
        self.refuse(f"numpy dtype {obj.code!r} given a state twice")
      # The state numpy pickles for a plain numeric dtype, and nothing else: no subarray, field
      # names, fields, item size, alignment or flags of the file's choosing.
      plain = (isinstance(state, tuple) and len(state) == 8 and isinstance(state[1], str)
               and all(type(v) is int for v in state[0:1] + state[5:])
               and state[0] == 3 and state[2] is None and state[3] is None and state[4] is None
               and state[5:] == (-1, -1, 0))
      order = ("<" if state[1] == "=" else state[1]) if plain else None
      if not plain or (order, obj.code) not in NUMPY_DTYPES:
        self.refuse(f"numpy dtype {obj.code!r} with state {_short(state)}: only the state of a "
                    f"plain numeric dtype, (3, '<' or '>' or '|', None, None, None, -1, -1, 0), "
                    f"is read")
      obj.dtype = NUMPY_DTYPES[(order, obj.code)]
    elif isinstance(obj, _PendingArray):
      if obj.array is not None:
        self.refuse("a numpy array given a state twice")
      if not isinstance(state, tuple) or len(state) not in (4, 5) or (
          len(state) == 5 and not (type(state[0]) is int and state[0] == 1)):
        self.refuse(f"a numpy array with state {_short(state)}: expected (1, shape, dtype, "
                    f"fortran, bytes)")
      shape, dtype, fortran, raw = state[-4:]
      obj.array = self.array(raw, self.dtype(dtype), shape, fortran, "a numpy array")
    elif isinstance(obj, RecorderMeterStub):
      if not isinstance(state, dict) or not all(isinstance(k, str) and _ATTRIBUTE.fullmatch(k)
                                                and not k.startswith("__") for k in state):
        self.refuse(f"a RecorderMeter whose state is {_short(state)}, not a dict of attribute "
                    f"names")
      self.place(obj, state.values())
      vars(obj).update(state)
    elif isinstance(obj, collections.OrderedDict):
      # torch's state_dict() carries `_metadata` (module versions): read, then dropped.
      if state is not None and not isinstance(state, dict):
        self.refuse(f"an OrderedDict with state {_short(state)}")
    elif isinstance(obj, _Global):
      self.refuse(f"refusing BUILD on the global {obj}: a global's state is never set from the "
                  f"file")
    else:
      self.refuse(f"BUILD on {_short(obj)}: only numpy dtypes and arrays, the RecorderMeter and "
                  f"OrderedDict take a state")

  def persistent(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[0], str)
            and pid[0] == "storage"):
      self.refuse(f"unknown persistent id {_short(pid)}: only torch storages "
                  f"('storage', type, key, device, numel) are read")
    storage_type, key, device, numel = pid[1:]
    if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
      self.refuse(f"storage key {_short(key)} is not a plain name (letters, digits, _)")
    entry = f"{self.prefix}data/{key}"
    if not (isinstance(storage_type, _Global) and storage_type.kind == "storage"):
      self.refuse(f"storage {entry} has unsupported type {_short(storage_type)}")
    if not isinstance(device, str):
      self.corrupt(f"storage {entry} on device {_short(device)}")
    if not _is_int(numel) or numel < 0:
      self.refuse(f"storage {entry} declares {_short(numel)} elements")
    numel = int(numel)
    known = self.storages.get(key)
    if known is None:
      known = self.storages[key] = _StorageRef(key, entry, storage_type.name, numel)
    elif known.type_name != storage_type.name or known.numel != numel:
      self.refuse(f"storage {entry} is read as {known.numel} x "
                  f"{STORAGE_TYPES[known.type_name][0]} and as {numel} x {storage_type.name}: a "
                  f"dtype/storage mismatch")
    return known

  # -- the loop

  def run(self):
    data, ops = self.data, 0
    while True:
      ops += 1
      if ops > MAX_PICKLE_OPS:
        self.refuse(f"more than {MAX_PICKLE_OPS} pickle opcodes (MAX_PICKLE_OPS)")
      self.op_pos = self.pos
      if self.pos >= len(data):
        self.corrupt("truncated: ends without STOP")
      code = data[self.pos]
      self.pos += 1
      handler = _HANDLERS.get(code)
      if handler is None:
        name = _OPCODE_NAMES.get(code)
        why = " here: it creates objects of arbitrary classes" if name in _OBJECT_OPCODES else ""
        self.refuse(f"pickle opcode {name or 'byte'} ({bytes([code])!r}) is not allowed{why}")
      if handler(self):  # STOP
        break
    if len(self.stack) != 1 or self.marks:
      self.corrupt(f"STOP with {len(self.stack)} values and {len(self.marks)} open MARKs on the "
                   f"stack")
    return self.stack[0]


_OBJECT_OPCODES = ("INST", "OBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID")


def _op_proto(p):
  version = p.take(1)[0]
  if version > 5:
    p.refuse(f"pickle protocol {version} is not supported (0 to 5 are)")


def _op_inst(p):  # protocol 0's instance creation: the class is named inline
  module, name = p.text(p.line()), p.text(p.line())
  p.find_global(module, name)
  p.refuse(f"pickle opcode INST on {_clean(module)}.{_clean(name)} is not allowed")


def _op_obj(p):
  items = p.pop_mark()
  target = items[0] if items else None
  p.refuse(f"pickle opcode OBJ on {_short(target)} is not allowed")


def _op_newobj(p):
  args, cls = p.pop(), p.pop()
  if (isinstance(cls, _Global) and cls.kind == "RecorderMeter" and isinstance(args, tuple)
      and not args):
    p.push(RecorderMeterStub())
  else:
    p.refuse(f"NEWOBJ of {_short(cls)} is not allowed: only the RecorderMeter is made by NEWOBJ")


def _op_global(p):
  module, name = p.text(p.line()), p.text(p.line())
  p.push(p.find_global(module, name))


def _op_stack_global(p):
  name, module = p.pop(), p.pop()
  if not isinstance(module, str) or not isinstance(name, str):
    p.corrupt("STACK_GLOBAL of values that are not strings")
  p.push(p.find_global(module, name))


def _op_int(p):
  raw = p.line()
  if raw in (b"00", b"01"):
    p.push(raw == b"01")
    return
  try:
    p.push(int(raw))
  except ValueError:
    p.corrupt(f"INT {_short(raw)}")


def _op_long(p):
  raw = p.line()
  try:
    p.push(int(raw[:-1] if raw.endswith(b"L") else raw))
  except ValueError:
    p.corrupt(f"LONG {_short(raw)}")


def _op_float(p):
  raw = p.line()
  try:
    p.push(float(raw))
  except ValueError:
    p.corrupt(f"FLOAT {_short(raw)}")


def _op_long_n(fmt):
  def op(p):
    n = p.unpack(fmt)
    if not 0 <= n <= MAX_INT_BYTES:
      p.refuse(f"a {n}-byte integer (at most {MAX_INT_BYTES}: MAX_INT_BYTES)")
    p.push(int.from_bytes(p.take(n), "little", signed=True))
  return op


def _op_unicode(fmt):
  def op(p):
    p.push(p.text(p.sized(p.unpack(fmt), "string")))
  return op


def _op_bytes(fmt):
  def op(p):
    p.push(bytes(p.sized(p.unpack(fmt), "bytes value")))
  return op


def _op_tuple_n(n):
  def op(p):
    items = [p.pop() for _ in range(n)][::-1]
    p.new_tuple(items)
  return op


def _op_empty(make):
  def op(p):
    p.push(make())
  return op


def _op_list(p):
  items = p.pop_mark()
  target = []
  p.append(target, items)
  p.push(target)


def _op_dict(p):
  items = p.pop_mark()
  target = {}
  p.set_items(target, items)
  p.push(target)


def _op_append(p):
  value = p.pop()
  p.append(p.top(), [value])


def _op_appends(p):
  items = p.pop_mark()
  p.append(p.top(), items)


def _op_setitem(p):
  value, key = p.pop(), p.pop()
  p.set_items(p.top(), [key, value])


def _op_setitems(p):
  items = p.pop_mark()
  p.set_items(p.top(), items)


def _op_reduce(p):
  args, func = p.pop(), p.pop()
  p.push(p.reduce(func, args))


def _op_build(p):
  state = p.pop()
  p.build(p.top(), state)


def _op_binpersid(p):
  p.push(p.persistent(p.pop()))


def _memo_key(p, raw: bytes) -> int:
  try:
    return int(raw)
  except ValueError:
    p.corrupt(f"memo key {_short(raw)}")


def _put(p, index):
  if index not in p.memo and len(p.memo) >= MAX_PICKLE_OPS:
    p.refuse("too many memo entries")
  p.memo[index] = p.top()


def _get(p, index):
  if index not in p.memo:
    p.corrupt(f"memo key {index} was never stored")
  p.push(p.memo[index])


def _op_pop(p):
  if len(p.stack) > (p.marks[-1] if p.marks else 0):
    p.stack.pop()
  elif p.marks:  # as pickle does: POP right after a MARK discards the mark
    p.marks.pop()
  else:
    p.corrupt("stack underflow")


def _op_stop(p):
  return True


def _op_mark(p):
  p.marks.append(len(p.stack))


def _op_pop_mark(p):
  p.pop_mark()


_HANDLERS = {
    pickle.PROTO[0]: _op_proto,
    pickle.FRAME[0]: lambda p: p.take(8) and None,  # frames are only a read-ahead hint
    pickle.STOP[0]: _op_stop,
    pickle.MARK[0]: _op_mark,
    pickle.POP[0]: _op_pop,
    pickle.POP_MARK[0]: _op_pop_mark,
    pickle.DUP[0]: lambda p: p.push(p.top()),
    pickle.NONE[0]: lambda p: p.push(None),
    pickle.NEWTRUE[0]: lambda p: p.push(True),
    pickle.NEWFALSE[0]: lambda p: p.push(False),
    pickle.INT[0]: _op_int,
    pickle.LONG[0]: _op_long,
    pickle.BININT[0]: lambda p: p.push(p.unpack("<i")),
    pickle.BININT1[0]: lambda p: p.push(p.unpack("<B")),
    pickle.BININT2[0]: lambda p: p.push(p.unpack("<H")),
    pickle.LONG1[0]: _op_long_n("<B"),
    pickle.LONG4[0]: _op_long_n("<i"),
    pickle.FLOAT[0]: _op_float,
    pickle.BINFLOAT[0]: lambda p: p.push(p.unpack(">d")),
    pickle.BINUNICODE[0]: _op_unicode("<I"),
    pickle.SHORT_BINUNICODE[0]: _op_unicode("<B"),
    pickle.BINUNICODE8[0]: _op_unicode("<Q"),
    pickle.BINBYTES[0]: _op_bytes("<I"),
    pickle.SHORT_BINBYTES[0]: _op_bytes("<B"),
    pickle.BINBYTES8[0]: _op_bytes("<Q"),
    pickle.BYTEARRAY8[0]: _op_bytes("<Q"),  # read as bytes: only ever array data
    pickle.EMPTY_TUPLE[0]: lambda p: p.push(()),
    pickle.TUPLE[0]: lambda p: p.new_tuple(p.pop_mark()),
    pickle.TUPLE1[0]: _op_tuple_n(1),
    pickle.TUPLE2[0]: _op_tuple_n(2),
    pickle.TUPLE3[0]: _op_tuple_n(3),
    pickle.EMPTY_LIST[0]: _op_empty(list),
    pickle.LIST[0]: _op_list,
    pickle.APPEND[0]: _op_append,
    pickle.APPENDS[0]: _op_appends,
    pickle.EMPTY_DICT[0]: _op_empty(dict),
    pickle.DICT[0]: _op_dict,
    pickle.SETITEM[0]: _op_setitem,
    pickle.SETITEMS[0]: _op_setitems,
    pickle.GLOBAL[0]: _op_global,
    pickle.STACK_GLOBAL[0]: _op_stack_global,
    pickle.REDUCE[0]: _op_reduce,
    pickle.BUILD[0]: _op_build,
    pickle.NEWOBJ[0]: _op_newobj,
    pickle.INST[0]: _op_inst,
    pickle.OBJ[0]: _op_obj,
    pickle.BINPERSID[0]: _op_binpersid,
    pickle.PUT[0]: lambda p: _put(p, _memo_key(p, p.line())),
    pickle.BINPUT[0]: lambda p: _put(p, p.unpack("<B")),
    pickle.LONG_BINPUT[0]: lambda p: _put(p, p.unpack("<I")),
    pickle.MEMOIZE[0]: lambda p: _put(p, len(p.memo)),
    pickle.GET[0]: lambda p: _get(p, _memo_key(p, p.line())),
    pickle.BINGET[0]: lambda p: _get(p, p.unpack("<B")),
    pickle.LONG_BINGET[0]: lambda p: _get(p, p.unpack("<I")),
}

# ----------------------------------------------------------------------------- the tree


def _path_text(path) -> str:
  """A path kept as nested (parent, separator, key) tuples -> 'state_dict.conv1.weight[0]'."""
  parts = []
  while path is not None:
    path, sep, key = path
    text = _clean(str(key), 200) if isinstance(key, (str, int)) else _short(key)
    parts.append(f"[{text}]" if sep == "[" else text)
    if sep == "." and path is not None:
      parts.append(".")
  return "".join(reversed(parts)) or "<root>"


def _children(node, path):
  if isinstance(node, dict):
    return [((path, ".", k), v) for k, v in node.items()]
  if isinstance(node, (list, tuple)):
    return [((path, "[", i), v) for i, v in enumerate(node)]
  return [((path, ".", k), v) for k, v in vars(node).items()]  # RecorderMeterStub


def _survey(tree, source: str) -> list[tuple[_TensorRef, Any]]:
  """-> every distinct tensor with the first key path that reaches it; refuses the first value
  that must not be in a checkpoint's tree (an invalid view, a bare global or storage, ...)."""
  tensors, seen, todo = [], set(), [(None, tree)]
  while todo:
    path, node = todo.pop()
    if isinstance(node, _LEAVES):
      continue
    if id(node) in seen:
      continue
    seen.add(id(node))
    problem = None
    if isinstance(node, _CONTAINERS):
      todo.extend(reversed(_children(node, path)))
    elif isinstance(node, _TensorRef):
      if node.problem:
        raise TorchCheckpointError(f"{source}: tensor {_path_text(path)!r} is not a valid view of "
                                   f"its storage: {node.problem}")
      tensors.append((node, path))
    elif isinstance(node, _StorageRef):
      problem = f"a bare storage ({node.entry}): only tensors are read"
    elif isinstance(node, _Global):
      problem = f"the global {node} itself, not a value"
    elif isinstance(node, _PendingDtype) and node.dtype is None:
      problem = f"a numpy dtype {node.code!r} whose state never came"
    elif isinstance(node, _PendingArray) and node.array is None:
      problem = "a numpy array whose state never came"
    if problem:
      raise TorchCheckpointError(f"{source}: {_path_text(path)!r} is {problem}")
  return tensors


def _is_whole(ref: _TensorRef) -> bool:
  """True when ``ref`` is its whole storage in C order (then it needs no copy)."""
  if ref.offset != 0 or ref.count != ref.storage.numel:
    return False
  expected = 1
  for k, s in zip(reversed(ref.size), reversed(ref.stride)):
    if k != 1 and s != expected:
      return False
    expected *= k
  return True


def _materialize(ref: _TensorRef, storage: np.ndarray, owner: bool) -> np.ndarray:
  size, stride, offset = tuple(map(int, ref.size)), tuple(map(int, ref.stride)), int(ref.offset)
  if not size:
    return np.array(storage[offset])  # a 0-d array, not a numpy scalar
  if 0 in size:
    return np.zeros(size, storage.dtype)
  if owner and _is_whole(ref):
    return storage.reshape(size)  # the only tensor of its storage: the freshly read bytes
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=tuple(s * storage.itemsize for s in stride))
  return np.array(view, order="C")  # a copy: C-contiguous, detached from the shared storage


def _finish(node, done: dict, tensors: dict):
  """The surveyed tree with records replaced by values; shared parts stay shared. Recursion is
  bounded by MAX_NESTING."""
  if isinstance(node, _LEAVES):
    return node
  if id(node) in done:
    return done[id(node)]
  if isinstance(node, _TensorRef):
    out = tensors[id(node)]
  elif isinstance(node, _PendingArray):
    out = node.array
  elif isinstance(node, _PendingDtype):
    out = node.dtype
  elif isinstance(node, dict):
    out = collections.OrderedDict() if isinstance(node, collections.OrderedDict) else {}
    for k, v in node.items():
      out[k] = _finish(v, done, tensors)
  elif isinstance(node, RecorderMeterStub):
    out = RecorderMeterStub()
    for k, v in vars(node).items():
      setattr(out, k, _finish(v, done, tensors))
  else:
    items = []
    for v in node:
      items.append(_finish(v, done, tensors))
    out = tuple(items) if isinstance(node, tuple) else items
  done[id(node)] = out
  return out


# ----------------------------------------------------------------------------- the archive


def _check_directory_size(f, file_size: int, source: str):
  """Bounds the zip's central directory (what ``zipfile`` reads into memory first) from its end
  record, before ``zipfile`` reads it."""
  tail_start = max(0, file_size - (1 << 16) - 22)
  f.seek(tail_start)
  tail = f.read()
  at = tail.rfind(b"PK\x05\x06")
  if at < 0 or len(tail) - at < 22:
    return  # not a zip: zipfile says so
  members, directory = struct.unpack("<HI", tail[at + 10:at + 16])
  locator = tail[at - 20:at] if at >= 20 else b""
  if locator[:4] == b"PK\x06\x07":  # zip64: the true counts are in the zip64 end record
    f.seek(struct.unpack("<Q", locator[8:16])[0])
    record = f.read(56)
    if record[:4] == b"PK\x06\x06" and len(record) == 56:
      members, directory = struct.unpack("<QQ", record[32:48])
  if members > MAX_MEMBERS or directory > MAX_CENTRAL_DIRECTORY_BYTES:
    raise TorchCheckpointError(f"{source}: the zip declares {members} members in a "
                               f"{directory}-byte directory (at most {MAX_MEMBERS} in "
                               f"{MAX_CENTRAL_DIRECTORY_BYTES})")


def _check_stored(info: zipfile.ZipInfo, limit: int, source: str):
  """Refuses a member that is not plainly stored, or declares more than ``limit`` bytes."""

  def refuse(message):
    raise TorchCheckpointError(f"{source}: member {_clean(info.filename, 200)}: {message}")

  if info.flag_bits & 0x1:
    refuse("is encrypted")
  if info.compress_type != zipfile.ZIP_STORED:
    refuse(f"is compressed (zip method {info.compress_type}): torch.save stores members "
           f"uncompressed, and this reader does not inflate (a compressed member can expand "
           f"without bound); re-save the checkpoint with torch.save")
  size = info.file_size
  if size != info.compress_size:
    refuse(f"a stored member declares {size} bytes but occupies {info.compress_size}")
  if size > limit:
    refuse(f"declares {size} bytes, more than the {limit} allowed here")


def _read_member(f, info: zipfile.ZipInfo, file_size: int, limit: int, source: str) -> bytearray:
  """The bytes of a stored member, read here from its local header (not through zipfile): every
  size is checked against ``limit`` and the file before its buffer is allocated."""

  def refuse(message):
    raise TorchCheckpointError(f"{source}: member {_clean(info.filename, 200)}: {message}")

  _check_stored(info, limit, source)
  size = info.file_size
  if not 0 <= info.header_offset < file_size:
    refuse(f"its local header is at offset {info.header_offset}, outside the {file_size}-byte file")
  f.seek(info.header_offset)
  header = f.read(30)
  if len(header) != 30 or header[:4] != b"PK\x03\x04":
    refuse(f"no local header at offset {info.header_offset} (corrupt or truncated)")
  name_length, extra_length = struct.unpack("<HH", header[26:30])
  start = info.header_offset + 30 + name_length + extra_length
  if start + size > file_size:
    refuse(f"declares {size} bytes at offset {start}, past the end of the {file_size}-byte file "
           f"(corrupt or truncated)")
  buffer = bytearray(size)
  f.seek(start)
  if f.readinto(buffer) != size:
    refuse("truncated")
  if zlib.crc32(buffer) != info.CRC:
    refuse("fails its CRC check (corrupt or truncated)")
  return buffer


def _safe_member_name(name: str) -> bool:
  parts = name.split("/")
  return not (name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts
              or ":" in parts[0])


_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def load(path: str | Path) -> Any:
  """A ``torch.save`` zip file -> its object tree, tensors as numpy arrays. A missing file is a
  ``FileNotFoundError``; anything wrong with the file is a ``TorchCheckpointError``."""
  path = storage.path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  try:
    with path.open("rb") as f:
      return _load(f, storage.size(path), str(path))
  except OSError as e:
    raise TorchCheckpointError(f"{path}: unreadable ({e})") from e


def _load(f, file_size: int, source: str) -> Any:
  if f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC:
    raise TorchCheckpointError(f"{source}: a legacy (pre-1.6, non-zip) torch.save file; re-save it "
                               f"with a current torch (torch.save(torch.load(f), g))")
  _check_directory_size(f, file_size, source)
  try:
    with zipfile.ZipFile(f) as archive:
      infos = archive.infolist()
  except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, struct.error,
          NotImplementedError, KeyError, IndexError) as e:
    raise TorchCheckpointError(f"{source}: not a torch.save zip archive, or truncated "
                               f"({type(e).__name__}: {e})") from e
  members = {}
  for info in infos:
    if not _safe_member_name(info.filename):
      raise TorchCheckpointError(f"{source}: member {_clean(info.filename, 200)!r}: an unsafe "
                                 f"name (absolute, or with '..', '\\' or a drive)")
    if info.filename in members:
      raise TorchCheckpointError(f"{source}: member {_clean(info.filename, 200)}: in the archive "
                                 f"twice")
    members[info.filename] = info
  pickles = [n for n in members if n.endswith("data.pkl")]
  if len(pickles) != 1 or pickles[0].count("/") > 1 or pickles[0].split("/")[-1] != "data.pkl":
    raise TorchCheckpointError(f"{source}: expected one <name>/data.pkl in the archive, found "
                               f"{[_clean(n) for n in pickles[:10]]}")
  prefix = pickles[0][:-len("data.pkl")]
  byteorder = members.get(f"{prefix}byteorder")
  if byteorder is not None:
    order = bytes(_read_member(f, byteorder, file_size, MAX_SMALL_MEMBER_BYTES, source))
    if order.strip() != b"little":
      raise TorchCheckpointError(f"{source}: big-endian checkpoints are not supported")
  data = bytes(_read_member(f, members[pickles[0]], file_size, MAX_PICKLE_BYTES, source))
  try:
    tree = _Pickle(data, source, pickles[0], prefix).run()
  except TorchCheckpointError:
    raise
  except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:  # a case missed above
    raise TorchCheckpointError(f"{source}: corrupt or truncated checkpoint: {pickles[0]}: "
                               f"{type(e).__name__}: {e}") from e
  del data
  tensors = _survey(tree, source)

  # Storages: each must be there, stored, of exactly the bytes its type and count need; together
  # no more than the file holds. Then one budget for every tensor, before any is read.
  used: dict[str, _StorageRef] = {}
  owners = collections.Counter(ref.storage.key for ref, _ in tensors)
  storage_bytes = 0
  for ref, path in tensors:
    storage = ref.storage
    if storage.key in used:
      continue
    info = members.get(storage.entry)
    if info is None:
      raise TorchCheckpointError(f"{source}: tensor {_path_text(path)!r}: storage "
                                 f"{storage.entry} is missing from the archive")
    _check_stored(info, file_size, source)
    need = storage.numel * STORAGE_TYPES[storage.type_name][2]
    if info.file_size != need:
      raise TorchCheckpointError(
          f"{source}: tensor {_path_text(path)!r}: storage {storage.entry} holds {info.file_size} "
          f"bytes, but {storage.numel} x {storage.type_name} is {need}: a dtype/storage mismatch")
    used[storage.key] = storage
    storage_bytes += need
  if storage_bytes > file_size:
    raise TorchCheckpointError(f"{source}: the storages declare {storage_bytes} bytes, more than "
                               f"the {file_size}-byte file holds (members that overlap)")
  budget = VIEW_BYTES_FACTOR * storage_bytes + VIEW_BYTES_ALLOWANCE
  total = 0
  for ref, path in tensors:
    total += ref.count * STORAGE_TYPES[ref.storage.type_name][2]
    if total > budget:
      raise TorchCheckpointError(
          f"{source}: tensor {_path_text(path)!r}: the tensors so far need {total} bytes, more "
          f"than {VIEW_BYTES_FACTOR} x the {storage_bytes} storage bytes in the file + "
          f"{VIEW_BYTES_ALLOWANCE} (VIEW_BYTES_FACTOR, VIEW_BYTES_ALLOWANCE): views that repeat "
          f"storage elements")

  arrays = {}
  for key, storage in used.items():
    raw = _read_member(f, members[storage.entry], file_size, file_size, source)
    if storage.type_name == "BoolStorage":  # any byte but 0 or 1 is no bool
      flat = np.frombuffer(raw, np.uint8)
      np.minimum(flat, 1, out=flat)
    arrays[key] = np.frombuffer(raw, _storage_dtype(storage.type_name))
  materialized = {id(ref): _materialize(ref, arrays[ref.storage.key], owners[ref.storage.key] == 1)
                  for ref, _ in tensors}
  return _finish(tree, {}, materialized)
