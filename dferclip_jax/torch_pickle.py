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

The rules (limits, dtype tables, allowed globals, inert records) are in ``torch_pickle_rules``,
the opcode interpreter in ``pickle_interpreter``; this module reads the archive and builds the
arrays.
"""

from __future__ import annotations

import collections
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dferclip_jax import storage
from dferclip_jax.pickle_interpreter import Pickle
from dferclip_jax.torch_pickle_rules import (
    CONTAINERS, LEAVES, MAX_CENTRAL_DIRECTORY_BYTES, MAX_MEMBERS, MAX_PICKLE_BYTES,
    MAX_SMALL_MEMBER_BYTES, STORAGE_TYPES, VIEW_BYTES_ALLOWANCE, VIEW_BYTES_FACTOR, Global,
    PendingArray, PendingDtype, RecorderMeterStub, StorageRef, TensorRef, TorchCheckpointError,
    clean, short, storage_dtype)

__all__ = ["RecorderMeterStub", "TorchCheckpointError", "load"]

# ----------------------------------------------------------------------------- the tree


def _path_text(path) -> str:
  """A path kept as nested (parent, separator, key) tuples -> 'state_dict.conv1.weight[0]'."""
  parts = []
  while path is not None:
    path, sep, key = path
    text = clean(str(key), 200) if isinstance(key, (str, int)) else short(key)
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


def _survey(tree, source: str) -> list[tuple[TensorRef, Any]]:
  """-> every distinct tensor with the first key path that reaches it; refuses the first value
  that must not be in a checkpoint's tree (an invalid view, a bare global or storage, ...)."""
  tensors, seen, todo = [], set(), [(None, tree)]
  while todo:
    path, node = todo.pop()
    if isinstance(node, LEAVES):
      continue
    if id(node) in seen:
      continue
    seen.add(id(node))
    problem = None
    if isinstance(node, CONTAINERS):
      todo.extend(reversed(_children(node, path)))
    elif isinstance(node, TensorRef):
      if node.problem:
        raise TorchCheckpointError(f"{source}: tensor {_path_text(path)!r} is not a valid view of "
                                   f"its storage: {node.problem}")
      tensors.append((node, path))
    elif isinstance(node, StorageRef):
      problem = f"a bare storage ({node.entry}): only tensors are read"
    elif isinstance(node, Global):
      problem = f"the global {node} itself, not a value"
    elif isinstance(node, PendingDtype) and node.dtype is None:
      problem = f"a numpy dtype {node.code!r} whose state never came"
    elif isinstance(node, PendingArray) and node.array is None:
      problem = "a numpy array whose state never came"
    if problem:
      raise TorchCheckpointError(f"{source}: {_path_text(path)!r} is {problem}")
  return tensors


def _is_whole(ref: TensorRef) -> bool:
  """True when ``ref`` is its whole storage in C order (then it needs no copy)."""
  if ref.offset != 0 or ref.count != ref.storage.numel:
    return False
  expected = 1
  for k, s in zip(reversed(ref.size), reversed(ref.stride)):
    if k != 1 and s != expected:
      return False
    expected *= k
  return True


def _materialize(ref: TensorRef, storage: np.ndarray, owner: bool) -> np.ndarray:
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
  if isinstance(node, LEAVES):
    return node
  if id(node) in done:
    return done[id(node)]
  if isinstance(node, TensorRef):
    out = tensors[id(node)]
  elif isinstance(node, PendingArray):
    out = node.array
  elif isinstance(node, PendingDtype):
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
    raise TorchCheckpointError(f"{source}: member {clean(info.filename, 200)}: {message}")

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
    raise TorchCheckpointError(f"{source}: member {clean(info.filename, 200)}: {message}")

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
      raise TorchCheckpointError(f"{source}: member {clean(info.filename, 200)!r}: an unsafe "
                                 f"name (absolute, or with '..', '\\' or a drive)")
    if info.filename in members:
      raise TorchCheckpointError(f"{source}: member {clean(info.filename, 200)}: in the archive "
                                 f"twice")
    members[info.filename] = info
  pickles = [n for n in members if n.endswith("data.pkl")]
  if len(pickles) != 1 or pickles[0].count("/") > 1 or pickles[0].split("/")[-1] != "data.pkl":
    raise TorchCheckpointError(f"{source}: expected one <name>/data.pkl in the archive, found "
                               f"{[clean(n) for n in pickles[:10]]}")
  prefix = pickles[0][:-len("data.pkl")]
  byteorder = members.get(f"{prefix}byteorder")
  if byteorder is not None:
    order = bytes(_read_member(f, byteorder, file_size, MAX_SMALL_MEMBER_BYTES, source))
    if order.strip() != b"little":
      raise TorchCheckpointError(f"{source}: big-endian checkpoints are not supported")
  data = bytes(_read_member(f, members[pickles[0]], file_size, MAX_PICKLE_BYTES, source))
  try:
    tree = Pickle(data, source, pickles[0], prefix).run()
  except TorchCheckpointError:
    raise
  except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:  # a case missed above
    raise TorchCheckpointError(f"{source}: corrupt or truncated checkpoint: {pickles[0]}: "
                               f"{type(e).__name__}: {e}") from e
  del data
  tensors = _survey(tree, source)

  # Storages: each must be there, stored, of exactly the bytes its type and count need; together
  # no more than the file holds. Then one budget for every tensor, before any is read.
  used: dict[str, StorageRef] = {}
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
    arrays[key] = np.frombuffer(raw, storage_dtype(storage.type_name))
  materialized = {id(ref): _materialize(ref, arrays[ref.storage.key], owners[ref.storage.key] == 1)
                  for ref, _ in tensors}
  return _finish(tree, {}, materialized)
