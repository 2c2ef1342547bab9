"""A Cloud Storage emulator on loopback for the gs:// tests: ``gcp-storage-emulator`` (PyPI, a
development requirement), run in its own process, in memory, with bucket ``bkt``.

Two behaviours of real GCS the emulator lacks are added before the server starts; nothing else
is changed:
- the ``x-goog-generation`` header with an object's bytes (TensorStore, Orbax's array writer,
  reads it to make conditional writes; the emulator sends it only in the JSON metadata);
- the precondition ``ifGenerationMatch=0`` on an upload ("only if the object does not exist"):
  412 Precondition Failed when it exists, as GCS answers (the workdir lock's atomic create).

``python tests/gcs_emulator.py PORT`` runs it; ``running_emulator()`` starts one on a free port
and yields ``http://127.0.0.1:PORT``, the value of ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from http import HTTPStatus

BUCKET = "bkt"


def _serve(port: int) -> None:
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  plain_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 -- not found: the emulator's own handler answers 404
      obj = None
    if obj is not None:
      response["x-goog-generation"] = str(obj.get("generation", "1"))
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    return plain_download(request, response, storage, *args, **kwargs)

  plain_insert = objects.insert

  def insert(request, response, storage, *args, **kwargs):
    if request.query.get("ifGenerationMatch") == ["0"]:
      name = (request.query.get("name") or [None])[0]
      if name is None and isinstance(request.data, dict):
        name = (request.data.get("meta") or request.data).get("name")
      try:
        exists = storage.get_file_obj(request.params["bucket_name"], name) is not None
      except Exception:  # noqa: BLE001 -- not found
        exists = False
      if exists:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    return plain_insert(request, response, storage, *args, **kwargs)

  objects.download = download  # objects.get (alt=media) calls it by this name
  for _, methods in server.HANDLERS:  # the routes hold the function itself
    for method, handler in methods.items():
      if handler is plain_download:
        methods[method] = download
      elif handler is plain_insert:
        methods[method] = insert
  srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  srv.start()
  try:
    while True:
      time.sleep(3600)
  finally:
    srv.stop()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running_emulator(log_path=None):
  port = free_port()
  log = open(log_path, "w") if log_path else subprocess.DEVNULL
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port)],
                          stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 60
    while True:
      try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(f"the storage emulator did not start (exit {proc.poll()})") from None
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
  finally:
    proc.kill()
    proc.wait()
    if log_path:
      log.close()


if __name__ == "__main__":
  _serve(int(sys.argv[1]))
