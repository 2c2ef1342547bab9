"""A local web demo: upload a video (or name a frame folder) and see the whole clip's class
probabilities, the timeline of expressions, the frames (or tracked face crops) the model saw,
and each class's text.

  python -m dferclip_jax.cli.demo --model=workdirs/demo      # a run's workdir (best checkpoint)
  python -m dferclip_jax.cli.demo --model=DIR_OR_PTH          # a model directory or an official .pth

Then open http://127.0.0.1:7860/. Video files need requirements-video.txt (PyAV, and MTCNN for
the face step). Nothing is fetched from the network.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

DEFAULT_MODEL = "workdirs/demo"
_MODEL = flags.DEFINE_string("model", None, "A training workdir (its best checkpoint), a model "
                             f"directory or an official .pth (default: {DEFAULT_MODEL}, the README "
                             "demo's run).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Where to listen (loopback: this machine only).")
_PORT = flags.DEFINE_integer("port", 7860, "The port.")


def load(spec: str):
  """-> (model, variables, class names, class texts, description)."""
  from dferclip_jax import evaluation, export, storage
  path = storage.path(spec)
  if (path / "checkpoints").is_dir():
    model, variables, names, source = evaluation.load_model_for_eval("best", spec, None, 0)
    card = export.read_model_card_file(path / export.MODEL_FILE)
  else:
    model, variables, names, source = evaluation.load_model_for_eval(spec, None, None, 0)
    card = export.read_model_card_file(path / export.MODEL_FILE) if path.is_dir() else {}
  names = list(names or [str(i) for i in range(model.num_classes)])
  texts = list(card.get("class_texts") or names)
  return model, variables, names, texts, source


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dferclip_jax.demo import server
  spec = _MODEL.value
  if spec is None:
    spec = DEFAULT_MODEL
    if not os.path.isdir(spec):
      raise app.UsageError(f"no --model given and the README demo's run ({DEFAULT_MODEL}) is not "
                           "here: run `python main.py --config=configs/demo.py --workdir=workdirs/demo` "
                           "first, or pass --model")
    logging.warning("no --model given: using the README demo's run, %s", spec)
  model, variables, names, texts, source = load(spec)

  def faces():
    from dferclip_jax.faces import extract
    return extract.FaceStep()

  demo = server.Demo(model, variables, names, texts, source, faces_factory=faces)
  httpd = server.serve(demo, _HOST.value, _PORT.value)
  host, port = httpd.server_address[:2]
  print(f"serving the demo of {source} at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
  try:
    httpd.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    httpd.server_close()


if __name__ == "__main__":
  app.run(main)
