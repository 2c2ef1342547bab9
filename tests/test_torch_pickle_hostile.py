"""The ``torch.save`` reader against a corpus of hostile files, each read in its own process under
a 2 GiB address-space limit: every one must exit through ``TorchCheckpointError`` naming what is
wrong, never a signal, a MemoryError, a RecursionError or any other exception. And the legitimate
files torch writes (every dtype, views, shared storages, numpy values, a RecorderMeter, an
optimizer, pickle protocols 2 to 5) still read back exactly.

The hostile files are assembled here opcode by opcode (``pickle`` itself would refuse to write
most of them) and zipped by hand where the zip itself lies.
"""

import collections
import io
import os
import pickle
import resource
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from dferclip_jax import torch_pickle

REPO = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 2 * 2 ** 30

# ----------------------------------------------------------------------------- a pickle assembler


def num(v: int) -> bytes:
  if -2 ** 31 <= v < 2 ** 31:
    return b"J" + struct.pack("<i", v)
  raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def text(s: str) -> bytes:
  raw = s.encode("utf-8", "surrogatepass")
  return b"X" + struct.pack("<I", len(raw)) + raw


def raw_bytes(b: bytes) -> bytes:
  return b"B" + struct.pack("<I", len(b)) + b  # BINBYTES


def glob(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def tup(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"


def call(func: bytes, *args: bytes) -> bytes:
  return func + tup(*args) + b"R"


def dict_(**items: bytes) -> bytes:
  return b"}(" + b"".join(text(k) + v for k, v in items.items()) + b"u"


def pkl(body: bytes, protocol: int = 2) -> bytes:
  return b"\x80" + bytes([protocol]) + body + b"."


OD = call(glob("collections", "OrderedDict"))
FALSE, TRUE, NONE = b"\x89", b"\x88", b"N"


def storage(key="0", type_name="FloatStorage", numel=4) -> bytes:
  return tup(text("storage"), glob("torch", type_name), text(key), text("cpu"), num(numel)) + b"Q"


def tensor(stor: bytes, offset, size, stride) -> bytes:
  return call(glob("torch._utils", "_rebuild_tensor_v2"), stor, num(offset), tup(*map(num, size)),
              tup(*map(num, stride)), FALSE, OD)


def np_dtype(code="f4", state=None) -> bytes:
  state = PLAIN_STATE if state is None else state
  return call(glob("numpy", "dtype"), text(code), FALSE, TRUE) + state + b"b"


PLAIN_STATE = tup(num(3), text("<"), NONE, NONE, NONE, num(-1), num(-1), num(0))


def ndarray(shape, dtype: bytes, data: bytes) -> bytes:
  return (call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), tup(num(0)),
               raw_bytes(b"b"))
          + tup(num(1), tup(*map(num, shape)), dtype, FALSE, data) + b"b")


def state_dict(**tensors: bytes) -> bytes:
  return pkl(dict_(state_dict=dict_(**tensors)))


FLOATS = np.arange(4, dtype=np.float32).tobytes()  # archive/data/0: float32 [0, 1, 2, 3]

# ----------------------------------------------------------------------------- zips


def write_zip(path, pickle_bytes: bytes, storages=None, extra=(), method=zipfile.ZIP_STORED,
              pickle_method=zipfile.ZIP_STORED, prefix="archive/"):
  """A torch.save-shaped zip; ``storages``: key -> raw bytes (default: data/0 = FLOATS)."""
  storages = {"0": FLOATS} if storages is None else storages
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{prefix}data.pkl", pickle_bytes, compress_type=pickle_method)
    z.writestr(f"{prefix}byteorder", "little")
    for key, raw in storages.items():
      z.writestr(f"{prefix}data/{key}", raw, compress_type=method)
    for name, raw in extra:
      z.writestr(name, raw)
  return path


def patch_central(path, member: str, **fields):
  """Overwrites fields of ``member``'s central-directory entry: the lies a zip can tell."""
  offsets = {"flag": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"), "csize": (20, "<I"),
             "usize": (24, "<I"), "offset": (42, "<I")}
  data = bytearray(Path(path).read_bytes())
  at = data.find(b"PK\x01\x02")
  while at >= 0:
    name_length = struct.unpack_from("<H", data, at + 28)[0]
    if data[at + 46:at + 46 + name_length].decode() == member:
      for field, value in fields.items():
        offset, fmt = offsets[field]
        struct.pack_into(fmt, data, at + offset, value)
      Path(path).write_bytes(bytes(data))
      return
    at = data.find(b"PK\x01\x02", at + 4)
  raise KeyError(member)


def central_entry(path, member: str) -> dict:
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(member)
  return {"crc": info.CRC, "offset": info.header_offset, "size": info.file_size}


# ----------------------------------------------------------------------------- the corpus

CASES = {}  # name -> (write(path), the text the error must hold)


def case(name, message):
  def register(write):
    CASES[name] = (write, message)
    return write
  return register


# -- forged dtypes and storages via BUILD


@case("dtype_field_offset_past_item", "numpy dtype 'f4' with state")
def _(p):
  fields = dict_(a=tup(np_dtype("i8"), num(1 << 20)))
  forged = tup(num(3), text("|"), NONE, tup(text("a")), fields, num(4), num(1), num(16))
  write_zip(p, pkl(dict_(recorder=ndarray((1,), np_dtype("f4", forged), raw_bytes(b"\0" * 4)))))


@case("dtype_object_code_with_cleared_flags",
      "numpy dtype 'O8' is not one of the plain numeric"
      " types")
def _(p):
  write_zip(p, pkl(dict_(x=ndarray((2,), np_dtype("O8"), raw_bytes(b"\0" * 16)))))


@case("dtype_numeric_code_with_object_flags", "numpy dtype 'f8' with state")
def _(p):
  flagged = tup(num(3), text("<"), NONE, NONE, NONE, num(-1), num(-1), num(63))
  write_zip(p, pkl(dict_(x=ndarray((2,), np_dtype("f8", flagged), raw_bytes(b"\0" * 16)))))


@case("dtype_forged_item_size", "numpy dtype 'f4' with state")
def _(p):
  big = tup(num(3), text("<"), NONE, NONE, NONE, num(1 << 30), num(-1), num(0))
  write_zip(p, pkl(dict_(x=ndarray((1,), np_dtype("f4", big), raw_bytes(b"\0" * 4)))))


@case("dtype_given_state_twice", "given a state twice")
def _(p):
  again = tup(num(3), text(">"), NONE, NONE, NONE, num(-1), num(-1), num(0))
  write_zip(p, pkl(dict_(x=np_dtype("f4") + again + b"b")))


@case("dtype_used_before_its_state", "used before its state was set")
def _(p):
  unbuilt = call(glob("numpy", "dtype"), text("f4"), FALSE, TRUE)
  write_zip(p, pkl(dict_(x=ndarray((1,), unbuilt, raw_bytes(b"\0" * 4)))))


@case("storage_type_given_a_dtype_via_build", "refusing BUILD on the global torch.FloatStorage")
def _(p):
  forged = glob("torch", "FloatStorage") + dict_(dtype=np_dtype("f8")) + b"b"
  pid = tup(text("storage"), forged, text("0"), text("cpu"), num(4)) + b"Q"
  write_zip(p, pkl(dict_(w=tensor(pid, 0, (4,), (1,)))))


@case("storage_of_an_unknown_type", "storage archive/data/0 has unsupported type")
def _(p):
  pid = tup(text("storage"), num(7), text("0"), text("cpu"), num(4)) + b"Q"
  write_zip(p, state_dict(w=tensor(pid, 0, (4,), (1,))))


# -- object arrays


@case("object_ndarray_2_to_the_29", "numpy dtype 'O8' is not one of the plain numeric types")
def _(p):  # the 296-byte pickle that asked numpy for 2^29 object pointers
  write_zip(p, pkl(ndarray((2 ** 29,), np_dtype("O8"), b"]")))


@case("numeric_ndarray_whose_data_is_objects", "whose data is a list, not bytes")
def _(p):
  write_zip(p, pkl(dict_(x=ndarray((2,), np_dtype("f8"), b"](" + num(1) + num(2) + b"e"))))


@case("scalar_of_an_object_dtype", "numpy dtype 'O' is not one of the plain numeric types")
def _(p):
  scalar = glob("numpy.core.multiarray", "scalar")
  write_zip(p, pkl(call(scalar, np_dtype("O"), raw_bytes(b"\0" * 8))))


# -- huge shapes


@case("ndarray_huge_shape", "is absurd (more than 2^48 elements)")
def _(p):
  write_zip(p, pkl(dict_(x=ndarray((2 ** 40, 2 ** 40), np_dtype("f4"), raw_bytes(b"\0" * 4)))))


@case("ndarray_shape_bigger_than_its_bytes", "needs 4000000 bytes, its pickle holds 16")
def _(p):
  write_zip(p, pkl(dict_(x=ndarray((1_000_000,), np_dtype("f4"), raw_bytes(b"\0" * 16)))))


@case("ndarray_negative_shape", "negative size in shape")
def _(p):
  write_zip(p, pkl(dict_(x=ndarray((-4,), np_dtype("f4"), raw_bytes(b"")))))


@case("scalar_of_the_wrong_size",
      "numpy scalar of shape () and dtype <f8 needs 8 bytes, its pickle"
      " holds 3")
def _(p):
  scalar = glob("numpy._core.multiarray", "scalar")
  write_zip(p, pkl(call(scalar, np_dtype("f8"), raw_bytes(b"abc"))))


@case("tensor_huge_shape",
      r"tensor 'state_dict.big' is not a valid view of its storage: size"
      r" (2147483648, 2147483648)")
def _(p):
  write_zip(p, state_dict(big=tensor(storage(), 0, (2 ** 31, 2 ** 31), (0, 0))))


@case("tensor_empty_but_huge",
      "tensor 'state_dict.empty' is not a valid view of its storage: shape"
      " (0, 4611686018427387904, 4611686018427387904) is absurd")
def _(p):
  write_zip(p, state_dict(empty=tensor(storage(), 0, (0, 2 ** 62, 2 ** 62), (1, 1, 1))))


# -- stride-0 amplification


@case("stride0_one_view", "tensor 'state_dict.repeated': the tensors so far need 134217728 bytes")
def _(p):  # one int64 repeated 2^24 times: 128 MiB from 8 bytes
  one = storage(type_name="LongStorage", numel=1)
  write_zip(p, state_dict(repeated=tensor(one, 0, (2 ** 24,), (0,))), storages={"0": b"\0" * 8})


@case("stride0_200_views_in_total",
      "tensor 'state_dict.v32': the tensors so far need 69206016"
      " bytes")
def _(p):  # each view is 2 MiB and fine alone; the 33rd crosses 2 x 8 bytes + 64 MiB
  one = storage(type_name="LongStorage", numel=1)
  views = {f"v{i}": tensor(one, 0, (2 ** 18,), (0,)) for i in range(200)}
  write_zip(p, state_dict(**views), storages={"0": b"\0" * 8})


@case("stride0_absurd_per_tensor", "(1099511627776 elements) is absurd for a 4-element storage")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (2 ** 20, 2 ** 20), (0, 0))))


# -- zip bombs and lying zips


@case("deflated_storage_bomb", "member archive/data/0: is compressed (zip method 8)")
def _(p):
  n = 16 * 2 ** 20  # 16 MiB of zeros in about 16 KB
  write_zip(p, state_dict(w=tensor(storage(type_name="ByteStorage", numel=n), 0, (n,), (1,))),
            storages={"0": b"\0" * n}, method=zipfile.ZIP_DEFLATED)


@case("deflated_pickle", "member archive/data.pkl: is compressed (zip method 8)")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))), pickle_method=zipfile.ZIP_DEFLATED)


@case("stored_pickle_claims_4_gib",
      "member archive/data.pkl: declares 4294967294 bytes, more than the"
      " 67108864 allowed")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  patch_central(p, "archive/data.pkl", csize=2 ** 32 - 2, usize=2 ** 32 - 2)


@case("stored_pickle_size_past_the_end",
      "member archive/data.pkl: declares 60000000 bytes at"
      " offset")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  patch_central(p, "archive/data.pkl", csize=60_000_000, usize=60_000_000)


@case("stored_storage_size_lies", "member archive/data/0: declares 2147483647 bytes, more than the")
def _(p):
  n = 2 ** 31 - 1
  write_zip(p, state_dict(w=tensor(storage(type_name="ByteStorage", numel=n), 0, (4,), (1,))))
  patch_central(p, "archive/data/0", csize=n, usize=n)


@case("stored_sizes_disagree",
      "member archive/data.pkl: a stored member declares 5000 bytes but"
      " occupies")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  patch_central(p, "archive/data.pkl", usize=5000)


@case("overlapping_stored_members", "the storages declare 104857600 bytes, more than the")
def _(p):  # 100 storages of 1 MiB, all the same bytes of the file: the stored zip bomb
  n = 2 ** 18
  views = {f"w{i}": tensor(storage(str(i), numel=n), 0, (n,), (1,)) for i in range(100)}
  write_zip(p, state_dict(**views),
            storages={"0": b"\0" * (4 * n), **{str(i): b"" for i in range(1, 100)}})
  first = central_entry(p, "archive/data/0")
  for i in range(1, 100):
    patch_central(p, f"archive/data/{i}", offset=first["offset"], crc=first["crc"],
                  csize=4 * n, usize=4 * n)


@case("huge_central_directory", "the zip declares")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  data = bytearray(Path(p).read_bytes())
  at = data.rfind(b"PK\x05\x06")
  struct.pack_into("<I", data, at + 12, 2 ** 31)  # the directory's size
  Path(p).write_bytes(bytes(data))


@case("encrypted_member", "member archive/data.pkl: is encrypted")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  patch_central(p, "archive/data.pkl", flag=0x1)


@case("crc_mismatch", "member archive/data/0: fails its CRC check")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  patch_central(p, "archive/data/0", crc=12345)


# -- nesting and counts


@case("list_nested_100000_deep", "containers nested more than 100 deep")
def _(p):
  write_zip(p, pkl(b"]" * 100_000 + b"a" * 99_999))


@case("dict_nested_100000_deep", "containers nested more than 100 deep")
def _(p):
  write_zip(p, pkl(b"}" + (text("k") + b"}") * 100_000 + b"s" * 100_000))


@case("tuple_nested_100000_deep", "containers nested more than 100 deep")
def _(p):
  write_zip(p, pkl(b"(" * 100_000 + b"t" * 100_000))


@case("shared_list_doubling", "the object tree holds more than 1000000 values")
def _(p):  # L[i+1] = [L[i], L[i]]: 2^60 values in a few hundred bytes
  body = b"]q\x00"
  for i in range(60):
    body += b"(h" + bytes([i]) + b"h" + bytes([i]) + b"lq" + bytes([i + 1])
  write_zip(p, pkl(body))


@case("list_holding_itself", "a list is changed after it was put inside another value")
def _(p):
  write_zip(p, pkl(b"]q\x00h\x00a"))


@case("too_many_opcodes", "more than 1000000 pickle opcodes")
def _(p):
  write_zip(p, pkl(b"N0" * 600_000 + b"N"))


@case("string_claims_a_terabyte", "a 1099511627776-byte string: more than the 16777216 allowed")
def _(p):
  write_zip(p, pkl(b"\x8d" + struct.pack("<Q", 2 ** 40) + b"abc"))


@case("integer_of_a_megabyte", "a 1048576-byte integer")
def _(p):
  write_zip(p, pkl(b"\x8b" + struct.pack("<i", 2 ** 20) + b"\1" * 64))


@case("memo_key_never_stored", "memo key 5 was never stored")
def _(p):
  write_zip(p, pkl(b"h\x05"))


@case("unhashable_dict_key", "a dict key that is a list")
def _(p):
  write_zip(p, pkl(b"}]" + num(1) + b"s"))


# -- code-running globals and opcodes


@case("os_system_by_reduce", "refusing to load the global os.system")
def _(p):
  write_zip(p, pkl(dict_(x=call(glob("os", "system"), text("touch /tmp/pwned")))))


@case("builtins_eval", "refusing to load the global builtins.eval")
def _(p):
  write_zip(p, pkl(call(glob("builtins", "eval"), text("__import__('os').system('true')"))))


@case("subprocess_by_stack_global", "refusing to load the global subprocess.Popen")
def _(p):
  popen = text("subprocess") + text("Popen") + b"\x93"  # STACK_GLOBAL
  write_zip(p, pkl(popen + tup(text("true")) + b"R", protocol=4))


@case("getattr_reduce_trick", "refusing to load the global builtins.getattr")
def _(p):
  getattr_ = glob("builtins", "getattr")
  write_zip(p, pkl(call(getattr_, glob("collections", "OrderedDict"), text("__init__"))))


@case("ordered_dict_called_with_items", "collections.OrderedDict is only read empty")
def _(p):
  write_zip(p, pkl(call(glob("collections", "OrderedDict"), b"](" + tup(text("a"), num(1)) + b"e")))


@case("codecs_with_another_codec", "_codecs.encode is only read with a str and the latin1 codec")
def _(p):
  write_zip(p, pkl(call(glob("_codecs", "encode"), text("abc"), text("rot13"))))


@case("reduce_on_a_string", "REDUCE calls 'eval'")
def _(p):
  write_zip(p, pkl(call(text("eval"), text("1"))))


@case("inst_os_system", "refusing to load the global os.system")
def _(p):
  write_zip(p, pkl(b"(" + text("true") + b"ios\nsystem\n"))


@case("inst_on_an_allowed_class", "pickle opcode INST on collections.OrderedDict is not allowed")
def _(p):
  write_zip(p, pkl(b"(icollections\nOrderedDict\n"))


@case("obj_on_an_allowed_class",
      "pickle opcode OBJ on the global collections.OrderedDict is not"
      " allowed")
def _(p):
  write_zip(p, pkl(b"(" + glob("collections", "OrderedDict") + b"o"))


@case("newobj_on_another_class", "NEWOBJ of the global collections.OrderedDict is not allowed")
def _(p):
  write_zip(p, pkl(glob("collections", "OrderedDict") + b")\x81"))


@case("extension_registry", "pickle opcode EXT1")
def _(p):
  write_zip(p, pkl(b"\x82\x01"))


@case("numpy_ndarray_called", "numpy.ndarray is not callable here")
def _(p):
  write_zip(p, pkl(call(glob("numpy", "ndarray"), tup(num(2 ** 40)))))


@case("recorder_state_sets_a_dunder", "a RecorderMeter whose state is")
def _(p):
  write_zip(p, pkl(glob("__main__", "RecorderMeter") + b")\x81" + dict_(__class__=NONE) + b"b"))


@case("persistent_id_not_a_storage", "unknown persistent id")
def _(p):
  write_zip(p, pkl(tup(text("module"), text("os")) + b"Q"))


@case("bare_global_in_the_tree", "'x' is the global collections.OrderedDict itself")
def _(p):
  write_zip(p, pkl(dict_(x=glob("collections", "OrderedDict"))))


@case("bare_storage_in_the_tree", "'s' is a bare storage (archive/data/0)")
def _(p):
  write_zip(p, pkl(dict_(s=storage())))


@case("global_name_with_control_characters", r"refusing to load the global os\nFAKE.system")
def _(p):
  write_zip(p, pkl(text("os\nFAKE") + text("system") + b"\x93", protocol=4))


# -- truncation and bad pickles


@case("truncated_zip", "not a torch.save zip archive, or truncated")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  data = Path(p).read_bytes()
  Path(p).write_bytes(data[:len(data) // 2])


@case("truncated_pickle", "archive/data.pkl at byte")
def _(p):
  whole = state_dict(w=tensor(storage(), 0, (4,), (1,)))
  write_zip(p, whole[:len(whole) // 2])


@case("pickle_without_stop", "truncated: ends without STOP")
def _(p):
  write_zip(p, b"\x80\x02" + dict_())


@case("pickle_protocol_6", "pickle protocol 6 is not supported")
def _(p):
  write_zip(p, pkl(NONE, protocol=6))


@case("string_not_utf8", "a string that is not UTF-8")
def _(p):
  write_zip(p, pkl(b"X\x02\x00\x00\x00\xff\xfe"))


@case("not_a_zip", "not a torch.save zip archive")
def _(p):
  Path(p).write_bytes(b"PK\x03\x04 this is no zip")


@case("legacy_format", "a legacy (pre-1.6, non-zip) torch.save file")
def _(p):
  Path(p).write_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" + b"\0" * 100)


# -- member names and storages


@case("member_name_traversal", "member '../../evil': an unsafe name")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))), extra=[("../../evil", b"x")])


@case("pickle_name_traversal", "member '../archive/data.pkl': an unsafe name")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))), prefix="../archive/")


@case("storage_key_traversal", "storage key '../../etc/passwd' is not a plain name")
def _(p):
  write_zip(p, state_dict(w=tensor(storage("../../etc/passwd"), 0, (4,), (1,))))


@case("member_twice", "member archive/data/0: in the archive twice")
def _(p):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # zipfile warns, and writes it
    write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))), extra=[("archive/data/0", FLOATS)])


@case("storage_missing",
      "tensor 'state_dict.w': storage archive/data/7 is missing from the"
      " archive")
def _(p):
  write_zip(p, state_dict(w=tensor(storage("7"), 0, (4,), (1,))))


@case("storage_of_the_wrong_size",
      "tensor 'state_dict.w': storage archive/data/0 holds 12 bytes, but 4 x"
      " FloatStorage is 16")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))), storages={"0": FLOATS[:12]})


@case("negative_stride",
      "tensor 'state_dict.w' is not a valid view of its storage: negative"
      " offset, size or stride")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 3, (4,), (-1,))))


@case("negative_offset",
      "tensor 'state_dict.w' is not a valid view of its storage: negative"
      " offset, size or stride")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), -8, (2,), (1,))))


@case("view_past_its_storage", "reads element 1000000 of a 4-element storage")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 1_000_000, (1,), (1,))))


@case("big_endian_archive", "big-endian checkpoints are not supported")
def _(p):
  write_zip(p, state_dict(w=tensor(storage(), 0, (4,), (1,))))
  Path(p).write_bytes(Path(p).read_bytes().replace(b"little", b"big\n\n\n"))
  patch_central(p, "archive/byteorder", crc=zlib.crc32(b"big\n\n\n"))


# ----------------------------------------------------------------------------- running them

RUNNER = """
import sys
from dferclip_jax import torch_pickle
try:
    torch_pickle.load(sys.argv[1])
except torch_pickle.TorchCheckpointError as e:
    print("TorchCheckpointError:", e)
    sys.exit(1)
except BaseException:
    import traceback
    traceback.print_exc()
    sys.exit(3)
print("loaded")
"""


def _limit_address_space():
  resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_limited(code: str, *args: str) -> subprocess.CompletedProcess:
  """``code`` in a fresh interpreter that imports only what it names, in a 2 GiB address space."""
  env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120, preexec_fn=_limit_address_space)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("hostile")
  for name, (write, _) in CASES.items():
    write(folder / f"{name}.pth")
  return folder


def test_the_corpus_is_large_enough():
  assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_one_clear_error(corpus, name):
  result = run_limited(RUNNER, str(corpus / f"{name}.pth"))
  output = result.stdout + result.stderr
  assert result.returncode == 1, (f"exit status {result.returncode} (a negative one is a "
                                  f"signal):\n{output}")
  assert output.startswith("TorchCheckpointError: "), output
  assert CASES[name][1] in output, output
  assert "Traceback" not in output, output


def test_the_address_space_limit_holds():
  """The limit the corpus runs under is real: 3 GiB cannot be had."""
  result = run_limited("bytearray(3 * 2 ** 30)")
  assert result.returncode == 1 and "MemoryError" in result.stderr


def test_no_payload_ran(corpus):
  assert not Path("/tmp/pwned").exists()


# ----------------------------------------------------------------------------- legitimate files

torch = pytest.importorskip("torch")  # to write the legitimate files; reading needs no torch


class RecorderMeter:
  """Shaped like the official main.RecorderMeter: numpy training curves."""

  def __init__(self, total_epoch):
    self.total_epoch, self.current_epoch = total_epoch, 1
    self.epoch_losses = np.arange(total_epoch * 2, dtype=np.float32).reshape(total_epoch, 2)
    self.epoch_accuracy = np.ones((total_epoch, 2), np.float32)


def bits(t: "torch.Tensor") -> np.ndarray:
  """A tensor's numpy value, bfloat16 as its raw 16 bits."""
  t = t.detach()
  return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def assert_same(ours, theirs, where="<root>"):
  if isinstance(theirs, torch.Tensor):
    assert isinstance(ours, np.ndarray), where
    got = ours.view(np.int16) if theirs.dtype == torch.bfloat16 else ours
    want = bits(theirs)
    assert got.dtype == want.dtype and got.shape == want.shape, (where, got.dtype, got.shape)
    np.testing.assert_array_equal(got, want, err_msg=where)
  elif isinstance(theirs, np.ndarray) or isinstance(theirs, np.generic):
    assert type(ours) is type(theirs) and ours.dtype == theirs.dtype, (where, ours.dtype)
    np.testing.assert_array_equal(ours, theirs, err_msg=where)
  elif isinstance(theirs, RecorderMeter):
    assert isinstance(ours, torch_pickle.RecorderMeterStub), where
    assert sorted(vars(ours)) == sorted(vars(theirs)), where
    for k, v in vars(theirs).items():
      assert_same(getattr(ours, k), v, f"{where}.{k}")
  elif isinstance(theirs, dict):
    assert type(ours) is type(theirs) and list(ours) == list(theirs), where
    for k, v in theirs.items():
      assert_same(ours[k], v, f"{where}.{k}")
  elif isinstance(theirs, (list, tuple)):
    assert type(ours) is type(theirs) and len(ours) == len(theirs), where
    for i, (a, b) in enumerate(zip(ours, theirs)):
      assert_same(a, b, f"{where}[{i}]")
  else:
    assert type(ours) is type(theirs) and ours == theirs, (where, ours, theirs)


def official_like_checkpoint():
  torch.manual_seed(0)
  base = torch.arange(24, dtype=torch.float32).view(4, 6)
  model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  model(torch.ones(1, 3)).sum().backward()
  opt.step()
  state = collections.OrderedDict({
      "float32": torch.randn(3, 5), "float16": torch.randn(4).half(),
      "bfloat16": torch.randn(6).bfloat16(),
      "float64": torch.randn(2, dtype=torch.float64), "int64": torch.arange(-3, 3),
      "int32": torch.arange(5, dtype=torch.int32), "int16": torch.arange(3, dtype=torch.int16),
      "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
      "uint8": torch.tensor([0, 255], dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "transposed": base.t(), "sliced": base[1:3, 2:5], "stepped": base[:, ::2], "shared": base,
      "expanded": torch.arange(77).expand(1, -1), "scalar": torch.tensor(55.0),
      "empty": torch.zeros(0, 768),
      "parameter": torch.nn.Parameter(torch.randn(2, 2)),
  })
  return {
      "epoch": 3, "state_dict": state, "best_acc": torch.tensor(55.5), "model": model.state_dict(),
      "optimizer": opt.state_dict(), "recorder": RecorderMeter(3),
      "arrays": [np.arange(6, dtype=np.int64).reshape(2, 3),
                 np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.array([1.5, 2.5], dtype=">f4"),
                 np.array([True, False]), np.array(7, dtype=np.uint16),
                 np.zeros((0, 3), np.float16)],
      "scalars": (np.float32(2.5), np.int64(-7), np.bool_(True)),
      "plain": {"none": None, "text": "é", "bytes": b"\x00\xff", "float": 1e-300, "big": 2 ** 70,
                4: [1, (2,)]},
  }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_what_torch_writes_reads_back_exactly(tmp_path, monkeypatch, protocol):
  RecorderMeter.__module__, RecorderMeter.__qualname__ = "__main__", "RecorderMeter"
  monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
  checkpoint = official_like_checkpoint()
  path = tmp_path / "official_like.pth"
  torch.save(checkpoint, path, pickle_protocol=protocol)
  ours = torch_pickle.load(path)
  assert_same(ours, checkpoint)
  sd = ours["state_dict"]
  assert all(sd[k].flags.writeable and sd[k].flags.c_contiguous for k in sd)
  sd["transposed"][0, 0] = -1  # views of one storage come back as detached copies
  assert sd["shared"][0, 0] == 0 and sd["sliced"].min() > 0


def test_the_official_fixture_reads_as_torch_reads_it(official_fixture_dir):
  path = official_fixture_dir / "official.pth"
  assert_same(torch_pickle.load(path), torch.load(path, weights_only=True))


def test_views_of_one_storage_and_expanded_buffers_load(tmp_path):
  """A weight saved beside its transpose (each storage byte read twice) and an expanded buffer."""
  weight = torch.randn(512, 256)
  path = tmp_path / "views.pth"
  expected = {"w": weight, "w_t": weight.t(), "ids": torch.arange(77).expand(64, -1)}
  torch.save(expected, path)
  assert_same(torch_pickle.load(path), expected)


def _zip64(path, monkeypatch) -> Path:
  """A torch.save-shaped zip whose end records are zip64's (zipfile writes them past 65,535
  members; the limit is lowered so that three members are enough)."""
  with monkeypatch.context() as m:
    m.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)
    write_zip(path, state_dict(w=tensor(storage(), 0, (2, 2), (2, 1))))
  data = path.read_bytes()
  assert b"PK\x06\x06" in data and b"PK\x06\x07" in data  # the zip64 end record and its locator
  return path


def test_a_zip64_checkpoint_reads(tmp_path, monkeypatch):
  loaded = torch_pickle.load(_zip64(tmp_path / "zip64.pth", monkeypatch))
  np.testing.assert_array_equal(loaded["state_dict"]["w"], np.arange(4, dtype=np.float32).reshape(2, 2))


@pytest.mark.parametrize("field, value, message", [
    (32, 2 ** 40, r"declares 1099511627776 members in a \d+-byte directory"),
    (40, 2 ** 40, r"declares 3 members in a 1099511627776-byte directory")])
def test_a_zip64_end_record_is_bounded_before_it_is_read(tmp_path, monkeypatch, field, value, message):
  """The zip64 end record's counts (offset 32: entries, 40: directory size) are the true ones,
  not the 0xFFFF placeholders of the classic record: their lies are caught before zipfile reads."""
  path = _zip64(tmp_path / "zip64.pth", monkeypatch)
  data = bytearray(path.read_bytes())
  at = data.rfind(b"PK\x06\x06")
  struct.pack_into("<Q", data, at + field, value)
  if field == 32:
    struct.pack_into("<Q", data, at + 24, value)  # this disk's entries, kept equal to the total
  path.write_bytes(bytes(data))
  with pytest.raises(torch_pickle.TorchCheckpointError, match=rf"zip64\.pth: the zip {message} \(at most "
                     rf"100000 in 33554432\)"):
    torch_pickle.load(path)
