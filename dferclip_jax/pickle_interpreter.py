"""The pickle interpreter of the ``torch.save`` reader (``torch_pickle``): it runs the opcodes of
one ``data.pkl`` over plain values and the inert records of ``torch_pickle_rules``, so nothing
the file names is imported or called; every size it declares is checked before it is allocated.
"""

from __future__ import annotations

import collections
import pickle
import re
import struct
from typing import Any

import numpy as np

from dferclip_jax.torch_pickle_rules import (
    ALLOWED_GLOBALS, CONTAINERS, MAX_INT_BYTES, MAX_LINE_BYTES, MAX_NESTING, MAX_PICKLE_OPS,
    MAX_STRING_BYTES, MAX_TREE_VALUES, NUMERIC_CODES, NUMPY_DTYPES, STORAGE_TYPES, Global,
    PendingArray, PendingDtype, RecorderMeterStub, StorageRef, TensorRef, TorchCheckpointError,
    clean, is_int, prod, shape_problem, short, view_problem)


# ----------------------------------------------------------------------------- the interpreter

_OPCODE_NAMES = {getattr(pickle, n)[0]: n for n in dir(pickle)
                 if n.isupper() and isinstance(getattr(pickle, n), bytes)
                 and len(getattr(pickle, n)) == 1}
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


class Pickle:
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
    self.storages: dict[str, StorageRef] = {}

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
      if isinstance(child, CONTAINERS):
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
      self.refuse(f"a dict key that is {short(k)}: only str, int, float, bytes and None keys are "
                  f"read")
    return k

  def set_items(self, target, items):
    if not isinstance(target, dict):
      self.corrupt(f"SETITEM on {short(target)}")
    if len(items) % 2:
      self.corrupt("SETITEMS with an odd number of items")
    keys = [self.key(k) for k in items[0::2]]
    self.place(target, items[1::2])
    for k, v in zip(keys, items[1::2]):
      target[k] = v

  def append(self, target, items):
    if not isinstance(target, list):
      self.corrupt(f"APPEND to {short(target)}")
    self.place(target, items)
    target.extend(items)

  # -- globals and calls

  def find_global(self, module: str, name: str) -> Global:
    kind = ALLOWED_GLOBALS.get((module, name))
    if kind is None:
      self.refuse(f"refusing to load the global {clean(module)}.{clean(name)}: it is not a "
                  f"tensor, a storage or a known checkpoint class, and unpickling it could run "
                  f"arbitrary code")
    return Global(module, name, kind)

  def reduce(self, func, args):
    if not isinstance(func, Global):
      self.refuse(f"REDUCE calls {short(func)}: only the allowed globals are called")
    if not isinstance(args, tuple):
      self.corrupt(f"REDUCE with arguments {short(args)}, not a tuple")
    kind = func.kind
    if kind == "OrderedDict":
      if args:
        self.refuse("collections.OrderedDict is only read empty, then filled by SETITEMS")
      return collections.OrderedDict()
    if kind == "tensor":
      if not 4 <= len(args) <= 7:
        self.corrupt(f"{func} takes 4 to 7 arguments, got {len(args)}")
      storage, offset, size, stride = args[:4]
      return TensorRef(storage, offset, size, stride, view_problem(storage, offset, size, stride))
    if kind == "parameter":
      if not 1 <= len(args) <= 3:
        self.corrupt(f"{func} takes 1 to 3 arguments, got {len(args)}")
      if not isinstance(args[0], TensorRef):
        self.refuse(f"{func} of {short(args[0])}, not a tensor")
      return args[0]
    if kind == "dtype":
      code = args[0] if args else None
      if not 1 <= len(args) <= 3 or not isinstance(code, str) or code not in NUMERIC_CODES:
        self.refuse(f"numpy dtype {short(code)} is not one of the plain numeric types "
                    f"({', '.join(NUMERIC_CODES)}): object, string and record dtypes are never "
                    f"read")
      return PendingDtype(code)
    if kind == "reconstruct":
      if len(args) != 3 or not (isinstance(args[0], Global) and args[0].kind == "ndarray"):
        self.refuse(f"{func} is only read as numpy pickles arrays: "
                    f"_reconstruct(numpy.ndarray, (0,), b'b')")
      return PendingArray()
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
                    f"module lookup), not {short(args[1] if len(args) > 1 else None)}")
      try:
        return args[0].encode("latin1")
      except UnicodeEncodeError:
        self.corrupt("_codecs.encode of a str that is not latin1")
    self.refuse(f"{func} is not callable here")

  def dtype(self, value) -> np.dtype:
    if not isinstance(value, PendingDtype):
      self.refuse(f"a numpy dtype that is {short(value)}")
    if value.dtype is None:
      self.refuse(f"numpy dtype {value.code!r} is used before its state was set")
    return value.dtype

  def array(self, raw, dtype: np.dtype, shape, fortran, what: str) -> np.ndarray:
    """``raw`` as ``shape`` of ``dtype`` (a table dtype): a copy, allocated only once the bytes
    are known to be exactly what the shape needs."""
    problem = shape_problem(shape)
    if problem:
      self.refuse(f"{what}: {problem}")
    if not isinstance(raw, bytes):
      self.refuse(f"{what} whose data is {short(raw)}, not bytes: only plain numbers are read")
    if not isinstance(fortran, bool):
      self.corrupt(f"{what} with order flag {short(fortran)}")
    need = prod(shape) * dtype.itemsize
    if len(raw) != need:
      self.refuse(f"{what} of shape {tuple(shape)} and dtype {dtype.str} needs {need} bytes, its "
                  f"pickle holds {len(raw)}")
    if dtype.kind == "b":  # any byte but 0 or 1 is no bool
      flat = np.frombuffer(raw, np.uint8) != 0
    else:
      flat = np.frombuffer(raw, dtype).copy()
    return flat.reshape(tuple(int(v) for v in shape), order="F" if fortran else "C")

  def build(self, obj, state):
    if isinstance(obj, PendingDtype):
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
        self.refuse(f"numpy dtype {obj.code!r} with state {short(state)}: only the state of a "
                    f"plain numeric dtype, (3, '<' or '>' or '|', None, None, None, -1, -1, 0), "
                    f"is read")
      obj.dtype = NUMPY_DTYPES[(order, obj.code)]
    elif isinstance(obj, PendingArray):
      if obj.array is not None:
        self.refuse("a numpy array given a state twice")
      if not isinstance(state, tuple) or len(state) not in (4, 5) or (
          len(state) == 5 and not (type(state[0]) is int and state[0] == 1)):
        self.refuse(f"a numpy array with state {short(state)}: expected (1, shape, dtype, "
                    f"fortran, bytes)")
      shape, dtype, fortran, raw = state[-4:]
      obj.array = self.array(raw, self.dtype(dtype), shape, fortran, "a numpy array")
    elif isinstance(obj, RecorderMeterStub):
      if not isinstance(state, dict) or not all(isinstance(k, str) and _ATTRIBUTE.fullmatch(k)
                                                and not k.startswith("__") for k in state):
        self.refuse(f"a RecorderMeter whose state is {short(state)}, not a dict of attribute "
                    f"names")
      self.place(obj, state.values())
      vars(obj).update(state)
    elif isinstance(obj, collections.OrderedDict):
      # torch's state_dict() carries `_metadata` (module versions): read, then dropped.
      if state is not None and not isinstance(state, dict):
        self.refuse(f"an OrderedDict with state {short(state)}")
    elif isinstance(obj, Global):
      self.refuse(f"refusing BUILD on the global {obj}: a global's state is never set from the "
                  f"file")
    else:
      self.refuse(f"BUILD on {short(obj)}: only numpy dtypes and arrays, the RecorderMeter and "
                  f"OrderedDict take a state")

  def persistent(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[0], str)
            and pid[0] == "storage"):
      self.refuse(f"unknown persistent id {short(pid)}: only torch storages "
                  f"('storage', type, key, device, numel) are read")
    storage_type, key, device, numel = pid[1:]
    if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
      self.refuse(f"storage key {short(key)} is not a plain name (letters, digits, _)")
    entry = f"{self.prefix}data/{key}"
    if not (isinstance(storage_type, Global) and storage_type.kind == "storage"):
      self.refuse(f"storage {entry} has unsupported type {short(storage_type)}")
    if not isinstance(device, str):
      self.corrupt(f"storage {entry} on device {short(device)}")
    if not is_int(numel) or numel < 0:
      self.refuse(f"storage {entry} declares {short(numel)} elements")
    numel = int(numel)
    known = self.storages.get(key)
    if known is None:
      known = self.storages[key] = StorageRef(key, entry, storage_type.name, numel)
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
  p.refuse(f"pickle opcode INST on {clean(module)}.{clean(name)} is not allowed")


def _op_obj(p):
  items = p.pop_mark()
  target = items[0] if items else None
  p.refuse(f"pickle opcode OBJ on {short(target)} is not allowed")


def _op_newobj(p):
  args, cls = p.pop(), p.pop()
  if (isinstance(cls, Global) and cls.kind == "RecorderMeter" and isinstance(args, tuple)
      and not args):
    p.push(RecorderMeterStub())
  else:
    p.refuse(f"NEWOBJ of {short(cls)} is not allowed: only the RecorderMeter is made by NEWOBJ")


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
    p.corrupt(f"INT {short(raw)}")


def _op_long(p):
  raw = p.line()
  try:
    p.push(int(raw[:-1] if raw.endswith(b"L") else raw))
  except ValueError:
    p.corrupt(f"LONG {short(raw)}")


def _op_float(p):
  raw = p.line()
  try:
    p.push(float(raw))
  except ValueError:
    p.corrupt(f"FLOAT {short(raw)}")


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
    p.corrupt(f"memo key {short(raw)}")


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
