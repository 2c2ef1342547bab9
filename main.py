r"""dferclip-jax: train, evaluate and run DFER-CLIP (and the HESP open-set task) from one command.

Modes (--mode), one example each:

  train      python main.py --config=configs/dfew.py:fold=1 --workdir=runs/dfew1 --config.data.root=/data/DFEW
             (trains and evaluates every epoch; the same command again resumes after preemption)
  evaluate   python main.py --mode=evaluate --config=configs/dfew.py:fold=1 --workdir=runs/dfew1 --checkpoint=best
             (--checkpoint: best | latest | STEP | a converted/exported model dir | an official .pth)
  predict    python main.py --mode=predict --config=configs/dfew.py --workdir=runs/dfew1 \
                 --inputs=clips/a,clips/b.mp4,@more_inputs.txt --output=predictions.jsonl
  crossval   python main.py --mode=crossval --config=configs/dfew.py --workdir=runs/dfew_cv [--folds=1,2]
  reproduce  python main.py --mode=reproduce --config=configs/dfew.py --workdir=runs/paper \
                 --dfew_root=/data/DFEW --ferv39k_root=/data/FERV39k --mafw_root=/data/MAFW
             (DFEW folds 1-5, FERV39k, MAFW folds 1-5 -> runs/paper/paper_table.md; [--datasets] [--folds])
  zeroshot   python main.py --mode=zeroshot --config=configs/dfew.py:fold=1 --workdir=runs/zs1
  openset    python main.py --mode=openset --config=configs/hesp_mafw.py --workdir=runs/hesp_mafw
  verify     python main.py --mode=verify --config=configs/dfew.py:fold=1 --workdir=runs/dfew1
             (decodes every frame of the lists once; unreadable clips -> runs/dfew1/bad_clips.txt)

Any config value can be overridden with --config.<key>=<value>; a mistyped key is an error.
"""

from __future__ import annotations

import os
import sys

# Quiet, and keep TensorFlow (the input pipeline) off the accelerators JAX uses.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/dfew.py:fold=1 (see configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "evaluate", "predict", "crossval", "reproduce", "zeroshot", "openset", "verify"],
                          "What to run (see the module docstring for an example of each).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "best", "evaluate/predict: 'best', 'latest' or a step number of --workdir's run, a model directory "
    "(model.json + variables/, e.g. from dferclip_jax.cli.convert_official), or an official .pth.")
_INPUTS = flags.DEFINE_list("inputs", [], "predict: frame folders and video files; @FILE reads one "
                            "path per line from FILE.")
_OUTPUT = flags.DEFINE_string("output", "-", "predict: where the JSON lines go ('-' = stdout).")
_TOP_K = flags.DEFINE_integer("top_k", 3, "predict: how many labels to list per input.")
_FACES = flags.DEFINE_bool(
    "faces", False, "predict: detect, follow and crop the face in the sampled frames first (MTCNN, "
    "pip install -r requirements-video.txt). Off by default: frame folders are taken to be face "
    "crops already, as the datasets ship them; turn it on for raw videos and uncropped frames.")
_TIMELINE = flags.DEFINE_bool(
    "timeline", False, "predict: slide the model's window over each input; one JSON line per window "
    "({input, start_s, end_s, label, probs, top_k}), and per input a CSV and a PNG plot of the class "
    "probabilities over time in --timeline_dir.")
_WINDOW_S = flags.DEFINE_float("window_s", 3.0, "predict --timeline: window length in seconds (3 s: "
                               "a typical DFEW training clip, 2-5 s).")
_STRIDE_S = flags.DEFINE_float("stride_s", 1.0, "predict --timeline: seconds between window starts.")
_FRAMES_FPS = flags.DEFINE_float("frames_fps", 30.0, "predict --timeline: the frame rate of frame "
                                 "folders (video files state their own).")
_TIMELINE_DIR = flags.DEFINE_string("timeline_dir", None, "predict --timeline: where the CSV and PNG "
                                    "files go (default: beside --output, or WORKDIR/timeline).")
_FOLDS = flags.DEFINE_list("folds", [], "crossval, reproduce: which folds (default: all of the "
                           "dataset's; reproduce: of DFEW and MAFW, FERV39k runs its one split, fold 0).")
_DATASETS = flags.DEFINE_list("datasets", [], "reproduce: which of dfew,ferv39k,mafw (default: all three).")
_DFEW_ROOT = flags.DEFINE_string("dfew_root", None, "reproduce: the DFEW root (as published, or the "
                                 "root of annotations/dfew's lists).")
_FERV39K_ROOT = flags.DEFINE_string("ferv39k_root", None, "reproduce: the FERV39k root (as published, "
                                    "or the root of annotations/ferv39k's lists).")
_MAFW_ROOT = flags.DEFINE_string("mafw_root", None, "reproduce: the MAFW root (as published, or the "
                                 "root of annotations/mafw's lists).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "true", "false"],
    "Call jax.distributed.initialize() by cluster auto-detection: 'auto' does when the environment "
    "shows several hosts (JAX_COORDINATOR_ADDRESS, a multi-task SLURM job, or a multi-host TPU slice).")
# Explicit multi-process launch (all three or none), e.g. N processes on one machine: README "Multi-host".
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's "
                                   "coordination service (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes (hosts) the job has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes).")
_INIT_TIMEOUT = flags.DEFINE_integer("initialization_timeout", 300,
                                     "Seconds to wait for every process to join the job.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 60, "Seconds without heartbeats after which a process counts as dead and "
    "every other process exits non-zero (instead of hanging in a collective).")
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer("shutdown_timeout", 300, "Seconds the exit barrier waits "
                                         "for the other processes.")


def _quiet_library_logs() -> None:
  """Orbax logs every save step at INFO; keep its warnings, drop the chatter."""
  import logging as pylogging

  class QuietOrbax(pylogging.Filter):
    def filter(self, record):
      if "/orbax/" not in record.pathname:
        return True
      # A save's OS error (disk full, permission) is reported once, as one line, by the
      # Checkpointer; Orbax's threads would each log it with a traceback.
      from dferclip_jax.train import checkpointing
      error = record.exc_info[1] if record.exc_info else None
      message = record.getMessage()
      return (record.levelno >= pylogging.WARNING and "os_error_code" not in message
              and "[Errno " not in message
              and (error is None or checkpointing.os_error_of(error) is None))

  logging.get_absl_handler().addFilter(QuietOrbax())


def main(argv):
  """Runs the mode; a preempted run exits with the requeue code, and the errors a user must act on
  (a failed save, a workdir in use, a NaN) are one line each, not a traceback."""
  from dferclip_jax import storage  # first: it chooses epath's gs:// backend before anything uses it
  from dferclip_jax.train import checkpointing, preemption, state, workdir_lock
  try:
    _run(argv)
  except preemption.Preempted as stopped:
    logging.warning("%s", stopped)
    preemption.exit_for_requeue()
  except (checkpointing.CheckpointSaveError, workdir_lock.WorkdirLockedError,
          state.NonFiniteLossError, storage.MissingExtraError,
          storage.UnsupportedPathError) as e:
    logging.error("%s", e)
    logging.flush()
    if isinstance(e, checkpointing.CheckpointSaveError):
      # Orbax's writer threads go on failing, each printing a traceback, until the process is
      # gone: silence them, write the one line last, and end (the earlier checkpoints are intact).
      sys.stderr.flush()
      report = os.dup(2)
      os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
      os.write(report, f"\nerror: {e}\n".encode())  # a fresh line: a thread may be mid-line
      os._exit(1)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _run(argv):
  _quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dferclip_jax import distributed
  try:
    distributed.initialize(distributed.Launch(
        _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
        _INIT_TIMEOUT.value, _HEARTBEAT_TIMEOUT.value, _SHUTDOWN_TIMEOUT.value))
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # TensorFlow feeds data; JAX owns the accelerators

  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  if not _WORKDIR.value and _MODE.value != "predict":
    raise app.UsageError("--workdir is required")

  from dferclip_jax.train import config_checks
  config_checks.check_list_overrides(config, config_flags.get_override_values(flags.FLAGS["config"]))
  logging.info("config:\n%s", config)
  mode, workdir = _MODE.value, _WORKDIR.value
  if mode == "train":
    from dferclip_jax.train import trainer
    trainer.train_and_evaluate(config, workdir)
  elif mode == "evaluate":
    from dferclip_jax import evaluation
    evaluation.run_evaluation(config, workdir, _CHECKPOINT.value)
  elif mode == "zeroshot":
    from dferclip_jax import evaluation
    if not config.model.clip:  # a usage error, not a crash: the demo's CLIP starts from random weights
      raise app.UsageError("--mode=zeroshot needs pretrained CLIP weights: set --config.model.clip to a "
                           "hub id or a local Hugging Face CLIP directory (this config has none)")
    evaluation.run_zeroshot(config, workdir)
  elif mode == "predict":
    _predict(config, workdir)
  elif mode == "crossval":
    from dferclip_jax import crossval
    from dferclip_jax.train import trainer
    flag = flags.FLAGS["config"]
    crossval.run_crossval(config_flags.get_config_filename(flag), config_flags.get_override_values(flag),
                          workdir, _folds(), trainer.train_and_evaluate)
  elif mode == "reproduce":
    _reproduce(config, workdir)
  elif mode == "verify":
    from dferclip_jax.train import data_setup
    _require_one_process("verify")  # every host would decode every frame and write the same file
    data_setup.verify_data(config, workdir)
  elif mode == "openset":
    from dferclip_jax.openset import experiment
    experiment.run_openset(config, workdir)


def _folds() -> list[int]:
  try:
    return [int(f) for f in _FOLDS.value]
  except ValueError:
    raise app.UsageError(f"--folds={','.join(_FOLDS.value)}: expected fold numbers, e.g. --folds=1,2") from None


def _reproduce(config, workdir):
  from dferclip_jax import reproduce
  from dferclip_jax.train import trainer
  roots = {"dfew": _DFEW_ROOT.value, "ferv39k": _FERV39K_ROOT.value, "mafw": _MAFW_ROOT.value}
  roots = {k: os.path.expanduser(v) if v else v for k, v in roots.items()}  # "--x=~/..." is not expanded
  try:
    reproduce.run_reproduce(config, workdir, selected=_DATASETS.value, folds=_folds(), roots=roots,
                            overrides=config_flags.get_override_values(flags.FLAGS["config"]),
                            train_fn=trainer.train_and_evaluate)
  except reproduce.ReproduceError as e:
    raise app.UsageError(str(e)) from None


def _timeline_dir(workdir):
  from dferclip_jax import storage
  if _TIMELINE_DIR.value:
    return _TIMELINE_DIR.value
  if _OUTPUT.value not in (None, "-"):
    return str(storage.path(_OUTPUT.value).parent)
  if not workdir:
    raise app.UsageError("--timeline writing to stdout needs --timeline_dir (or --workdir) for its "
                         "CSV and PNG files")
  return str(storage.path(workdir) / "timeline")


def _require_one_process(mode: str) -> None:
  import jax
  if jax.process_count() > 1:
    raise app.UsageError(f"--mode={mode} runs in one process: drop --num_processes (and the "
                         "other launch flags) or use --distributed=false")


def _predict(config, workdir):
  import jax.numpy as jnp
  from dferclip_jax import evaluation, predict
  from dferclip_jax.train import sharding
  if not _INPUTS.value:
    raise app.UsageError("--mode=predict needs --inputs")
  if _TIMELINE.value and not (_WINDOW_S.value > 0 and _STRIDE_S.value > 0 and _FRAMES_FPS.value > 0):
    raise app.UsageError(f"--window_s={_WINDOW_S.value}, --stride_s={_STRIDE_S.value}, "
                         f"--frames_fps={_FRAMES_FPS.value}: each must be > 0")
  _require_one_process("predict")  # every host would predict every input and write the same file
  faces = None
  if _FACES.value:
    from dferclip_jax.faces import detector, extract
    try:
      faces = extract.FaceStep()
    except detector.MissingDetectorError as e:
      raise app.UsageError(f"--faces=true: {e}") from None
  mesh = sharding.make_mesh(config.mesh, num_devices=config.num_devices)
  model, variables, names, source = evaluation.load_model_for_eval(
      _CHECKPOINT.value, workdir, mesh, config.shard_min_size, dtype=jnp.dtype(config.dtype))
  names = names or list(config.class_names)
  logging.info("predicting with %s", source)
  inputs = predict.expand_inputs(_INPUTS.value)
  if _TIMELINE.value:
    results = predict.predict_timeline(
        model, variables, inputs, names, window_s=_WINDOW_S.value, stride_s=_STRIDE_S.value,
        frames_fps=_FRAMES_FPS.value, batch_size=config.eval_batch_size, top_k=_TOP_K.value,
        num_clips=config.eval_num_clips, faces=faces)
    results = predict.write_timeline_files(results, _timeline_dir(workdir), names)
  else:
    results = predict.predict(model, variables, inputs, names, batch_size=config.eval_batch_size,
                              top_k=_TOP_K.value, num_clips=config.eval_num_clips, faces=faces)
  done, failed = predict.write_jsonl(results, _OUTPUT.value)
  logging.info("predicted %d %s; %d input(s) could not be read (see their 'error')", done,
               "window(s)" if _TIMELINE.value else "input(s)", failed)


if __name__ == "__main__":
  app.run(main)
