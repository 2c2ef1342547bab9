"""The one place a user's path string becomes a path: a local path stays a ``pathlib.Path`` (and
behaves exactly as before); ``gs://bucket/...`` becomes an ``etils.epath.Path``, the path type
Orbax itself uses, read and written through fsspec/gcsfs.

- One backend with and without an emulator: ``EPATH_USE_TF=false`` makes epath use gcsfs even
  where TensorFlow is installed (TensorFlow's GCS client cannot be pointed at an emulator, and
  the tests must exercise what users run).
- ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` (the variable Google's own clients read, gcsfs
  among them) sends every ``gs://`` access to that emulator: this module also points TensorStore,
  through which Orbax writes array data, at it (``TENSORSTORE_GCS_HTTP_URL``, with the test token
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING``), so a user sets nothing else. Without the variable the same
  code reaches real GCS with the machine's credentials.
- A ``gs://`` path without gcsfs installed is one error naming what to install.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Union

# Before etils decides (it caches the choice on first use).
os.environ.setdefault("EPATH_USE_TF", "false")

REMOTE_SCHEMES = ("gs://",)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
GCS_EXTRA = "requirements-gcs.txt"

AnyPath = Union[pathlib.Path, "epath.Path"]  # noqa: F821


class MissingExtraError(ValueError):
  """A gs:// path, but the optional storage packages are not installed."""


class UnsupportedPathError(ValueError):
  """A URL of a scheme other than gs:// (s3://, hf://, ...)."""


def is_remote(value) -> bool:
  return os.fspath(value).startswith(REMOTE_SCHEMES)


def path(value) -> AnyPath:
  """A user's path string (a flag, a config value) as a path: ``pathlib.Path`` for a local path
  (``~`` expanded), ``etils.epath.Path`` for ``gs://``. Other URL schemes are refused."""
  if isinstance(value, pathlib.Path):
    return value
  text = os.fspath(value)
  if is_remote(text):
    _check_gcs(text)
    from etils import epath
    return epath.Path(text)
  if text.startswith("file://"):
    text = text[len("file://"):]
  elif _URL.match(text):
    raise UnsupportedPathError(f"{text}: only local paths and gs:// paths are supported")
  return pathlib.Path(text).expanduser()


def absolute(value) -> AnyPath:
  p = path(value)
  return p if is_remote(p) else p.absolute()


def configure_emulator(environ=os.environ) -> None:
  """With ``STORAGE_EMULATOR_HOST`` set: TensorStore (Orbax's array writes) goes there too."""
  host = environ.get("STORAGE_EMULATOR_HOST", "").strip()
  if not host:
    return
  url = host if "://" in host else f"http://{host}"
  environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
  environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # emulators accept any token


@functools.cache
def _quiet_gcs_logs() -> None:
  """Once per process, not on every path."""
  import logging as pylogging
  # gcsfs asks for the bucket's type with default credentials and warns on every path when there
  # are none (an emulator, a plain service account): its fallback is the right one.
  pylogging.getLogger("gcsfs").setLevel(pylogging.ERROR)
  pylogging.getLogger("fsspec").setLevel(pylogging.WARNING)  # a line per file opened, at INFO


def _check_gcs(text: str) -> None:
  try:
    import gcsfs  # noqa: F401
  except ImportError:
    raise MissingExtraError(
        f"{text}: a gs:// path needs the Cloud Storage extra, which is not installed: "
        f"pip install -r {GCS_EXTRA}") from None
  configure_emulator()
  _quiet_gcs_logs()
  if os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0"):
    raise MissingExtraError(f"{text}: EPATH_USE_TF={os.environ['EPATH_USE_TF']} sends gs:// to "
                            "TensorFlow's GCS client; unset it (this project uses gcsfs)")


# ---------------------------------------------------------------------------- writing


def write_bytes_atomic(target, data: bytes) -> None:
  """The whole of ``data`` at ``target`` or nothing: a local file is written beside it and renamed
  over it; a bucket object is replaced whole by one upload (objects are never half-written)."""
  target = path(target)
  if is_remote(target):
    target.write_bytes(data)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, target)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def create_exclusive(target, data: bytes) -> bool:
  """Writes ``data`` at ``target`` only where nothing is there yet, as one atomic step: a local
  file by ``O_EXCL``; a bucket object by an upload the server refuses when the object exists
  (``ifGenerationMatch=0``). False when something was there (nothing is written then)."""
  target = path(target)
  if not is_remote(target):
    try:
      fd = os.open(os.fspath(target), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True
  import fsspec
  try:
    fsspec.filesystem("gs").pipe_file(os.fspath(target), data, mode="create")
  except FileExistsError:  # gcsfs's answer to the server's 412 Precondition Failed
    return False
  return True


def write_text_atomic(target, text: str) -> None:
  write_bytes_atomic(target, text.encode("utf-8"))


def save_figure(figure, target, **kwargs) -> None:
  """A matplotlib figure as a PNG at ``target``, local or in a bucket."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", **kwargs)
  write_bytes_atomic(target, buffer.getvalue())


def copy_file(source, target) -> None:
  """One file to ``target`` (either side local or remote)."""
  source, target = path(source), path(target)
  if not is_remote(source) and not is_remote(target):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return
  with source.open("rb") as f:
    target.write_bytes(f.read())


def rmtree(target, missing_ok: bool = True) -> None:
  target = path(target)
  if is_remote(target):
    if target.exists() or not missing_ok:
      target.rmtree()
    return
  shutil.rmtree(target, ignore_errors=missing_ok)


def local_folder(value) -> pathlib.Path:
  """A folder as a local path: itself when local; for a bucket folder (a Hugging Face CLIP or
  tokenizer directory), a local copy of the files directly in it, made in the temporary folder
  for libraries (safetensors, transformers) that read only local files."""
  folder = path(value)
  if not is_remote(folder):
    return folder
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: no such folder in the bucket")
  import hashlib
  digest = hashlib.sha256(os.fspath(folder).encode()).hexdigest()[:16]
  local = pathlib.Path(tempfile.gettempdir()) / f"dferclip-copy-{digest}-{os.getpid()}"
  local.mkdir(parents=True, exist_ok=True)
  for item in folder.iterdir():
    if not item.is_dir():
      copy_file(item, local / item.name)
  return local


def size(value) -> int:
  """A file's size in bytes, local or in a bucket (epath's stat names it ``length``)."""
  stats = path(value).stat()
  return int(stats.st_size if hasattr(stats, "st_size") else stats.length)


MAX_JSON_BYTES = 16 * 1024 * 1024  # the project's JSON files are a few kB: read nothing that size


def read_json(value, max_bytes: int = MAX_JSON_BYTES):
  """The parsed JSON file at ``value`` (local or in a bucket), or None where there is none;
  ValueError where it cannot be read: larger than ``max_bytes`` (checked before a byte is read),
  not UTF-8, or not JSON."""
  target = path(value)
  if not target.is_file():
    return None
  length = size(target)
  if length > max_bytes:
    raise ValueError(f"{length} bytes, over the {max_bytes} a JSON file may have")
  return json.loads(target.read_bytes().decode("utf-8"))  # its errors are ValueErrors
