"""The local web demo: one page (``page.html``, no script or font from anywhere else) served by the
standard library's HTTP server, and a JSON API the page calls.

Why not Gradio: it is what Hugging Face Spaces run, but it pulls a large dependency tree and its
page loads fonts and scripts from CDNs by default; the demo must work with no network and install
nothing beyond the video extra. The page is plain HTML and JavaScript.

  GET  /               the page
  GET  /api/info       model, class names and texts, limits
  POST /api/jobs       multipart: ``video`` (a file) or ``folder`` (a frame folder's path), ``faces``
  GET  /api/jobs/<id>  {state: running|done|error, progress 0-100, message, result | error}

A job runs in a thread: the whole clip (``predict.predict``, the bars), the timeline
(``predict.predict_timeline``, the plot) and the frames the model saw (face crops with faces on).
A bad upload (not a video, too long, too large, no face) ends its job with a message; the server
keeps serving.
"""

from __future__ import annotations

import base64
import dataclasses
import email.parser
import email.policy
import http.server
import io
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np

MAX_UPLOAD_MIB = 200
MAX_VIDEO_S = 600.0
PAGE = Path(__file__).with_name("page.html")  # local: the package's own files


@dataclasses.dataclass
class Job:
  state: str = "running"
  progress: int = 0
  message: str = "starting"
  result: dict | None = None
  error: str | None = None


class Demo:
  """The model and the jobs; the HTTP handler calls it."""

  def __init__(self, model, variables, class_names, class_texts, description: str, faces_factory=None,
               batch_size: int = 8):
    self.model, self.variables = model, variables
    self.class_names, self.class_texts = list(class_names), list(class_texts)
    self.description = description
    self.faces_factory = faces_factory  # -> a FaceStep, made on the first job that asks for faces
    self.batch_size = batch_size
    self.jobs: dict[str, Job] = {}
    self._faces = None
    self._lock = threading.Lock()  # one job computes at a time: the model is not re-entrant here
    self.uploads = Path(tempfile.mkdtemp(prefix="dferclip-demo-"))  # local: the temporary folder

  def info(self) -> dict:
    return {"model": self.description, "class_names": self.class_names, "class_texts": self.class_texts,
            "max_seconds": MAX_VIDEO_S, "max_mib": MAX_UPLOAD_MIB}

  def submit(self, path: str, faces: bool, cleanup: bool) -> str:
    job_id = uuid.uuid4().hex[:12]
    self.jobs[job_id] = Job()
    threading.Thread(target=self._run, args=(job_id, path, faces, cleanup), daemon=True).start()
    return job_id

  def _run(self, job_id: str, path: str, faces: bool, cleanup: bool) -> None:
    job = self.jobs[job_id]
    try:
      with self._lock:
        job.result = self._compute(job, path, faces)
      job.progress, job.state, job.message = 100, "done", "done"
    except Exception as e:  # noqa: BLE001 -- every failure is the job's message, never the server's
      job.state, job.error = "error", str(e) or type(e).__name__
    finally:
      if cleanup:
        shutil.rmtree(Path(path).parent, ignore_errors=True)  # local: the upload's own folder

  def _compute(self, job: Job, path: str, faces: bool) -> dict:
    from dferclip_jax import predict, timeline, video_stream
    if os.path.isfile(path):
      try:
        info = video_stream.probe(path)
      except video_stream.VideoError as e:
        raise ValueError(f"not a readable video: {e}") from None
      if info.duration_s > MAX_VIDEO_S:
        raise ValueError(f"the video runs {info.duration_s:.0f} s; this demo takes up to "
                         f"{MAX_VIDEO_S:.0f} s")
    face_step = None
    if faces:
      job.message = "loading the face detector"
      if self._faces is None:
        self._faces = self.faces_factory()
      face_step = self._faces
    job.message, job.progress = "the whole clip", 10
    (whole,) = list(predict.predict(self.model, self.variables, [path], self.class_names,
                                    batch_size=1, top_k=3, faces=face_step, keep_clips=True))
    if "error" in whole:
      raise ValueError(whole["error"])
    job.message, job.progress = "the timeline", 40
    rows = []
    for row in predict.predict_timeline(self.model, self.variables, [path], self.class_names,
                                        batch_size=self.batch_size, faces=face_step):
      if "error" in row:
        raise ValueError(row["error"])
      rows.append(row)
      job.message = f"the timeline: {len(rows)} window(s), up to {row['end_s']:.1f} s"
      job.progress = min(95, 40 + len(rows))
    plot = timeline.plot_png(rows, self.class_names, os.path.basename(path.rstrip("/")))
    return {"label": whole["label"], "probs": whole["probs"], "top_k": whole["top_k"],
            "timeline": rows, "timeline_png": base64.b64encode(plot).decode(),
            "crops": [_png(frame) for frame in whole["clip"]], "faces": face_step is not None}


def _png(frame: np.ndarray) -> str:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(frame, np.uint8)).save(buffer, format="PNG")
  return base64.b64encode(buffer.getvalue()).decode()


def _form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
  """multipart/form-data -> {name: (filename or None, bytes)} (the email parser: no cgi module)."""
  message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
      f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body)
  fields = {}
  if not message.is_multipart():
    raise ValueError("expected a multipart/form-data upload")
  for part in message.iter_parts():
    name = part.get_param("name", header="content-disposition")
    if name:
      fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
  return fields


def make_handler(demo: Demo):
  class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "dferclip-demo"

    def log_message(self, format, *args):  # noqa: A002 -- the stdlib's name
      pass

    def _send(self, code: int, body: bytes, content_type: str) -> None:
      self.send_response(code)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      self.send_header("Cache-Control", "no-store")
      self.end_headers()
      self.wfile.write(body)

    def _json(self, code: int, value) -> None:
      self._send(code, json.dumps(value).encode(), "application/json")

    def do_GET(self):  # noqa: N802 -- the stdlib's name
      if self.path in ("/", "/index.html"):
        self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
      elif self.path == "/api/info":
        self._json(200, demo.info())
      elif (match := re.fullmatch(r"/api/jobs/([0-9a-f]{12})", self.path)) and match[1] in demo.jobs:
        self._json(200, dataclasses.asdict(demo.jobs[match[1]]))
      else:
        self._json(404, {"error": f"{self.path}: not found"})

    def do_POST(self):  # noqa: N802
      if self.path != "/api/jobs":
        return self._json(404, {"error": f"{self.path}: not found"})
      length = int(self.headers.get("Content-Length") or 0)
      if length > MAX_UPLOAD_MIB * 2 ** 20:
        self.close_connection = True
        return self._json(413, {"error": f"the upload is {length / 2 ** 20:.0f} MiB; this demo "
                                         f"takes up to {MAX_UPLOAD_MIB} MiB"})
      try:
        fields = _form_fields(self.headers.get("Content-Type", ""), self.rfile.read(length))
      except ValueError as e:
        return self._json(400, {"error": str(e)})
      faces = fields.get("faces", (None, b"0"))[1] == b"1"
      filename, data = fields.get("video", (None, b""))
      folder = fields.get("folder", (None, b""))[1].decode("utf-8", "replace").strip()
      if filename and data:
        upload = demo.uploads / uuid.uuid4().hex  # local: the temporary folder
        upload.mkdir()
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(filename))[-80:].lstrip(".")
        path = upload / (name or "upload")
        path.write_bytes(data)
        return self._json(200, {"id": demo.submit(str(path), faces, cleanup=True)})
      if folder:
        if not os.path.isdir(folder):
          return self._json(400, {"error": f"{folder}: no such frame folder on this machine"})
        return self._json(200, {"id": demo.submit(folder, faces, cleanup=False)})
      return self._json(400, {"error": "choose a video file or give a frame folder's path"})

  return Handler


def serve(demo: Demo, host: str = "127.0.0.1", port: int = 7860) -> http.server.ThreadingHTTPServer:
  server = http.server.ThreadingHTTPServer((host, port), make_handler(demo))
  server.daemon_threads = True
  return server
