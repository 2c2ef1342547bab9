"""A workdir in a bucket (``--workdir=gs://bkt/run``) against a storage emulator on loopback: the
run writes everything into the bucket and nothing local named ``gs:``; killed with ``kill -9``
and started again it ends as the same run with a local workdir; evaluate, predict and
``init_checkpoint=gs://...:best`` read it back; TensorBoard's scalars are in the bucket; and
without gcsfs a gs:// path is one error naming what to install.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

import gcs_emulator
from conftest import REPO

pytestmark = pytest.mark.slow

pytest.importorskip("gcsfs", reason="the gs:// tests need requirements-gcs.txt (gcsfs)")

# 42 training clips in batches of 8: 5 steps an epoch; checkpoints every 4 steps, evaluations at 5, 10, 12.
RUN = [f"--config={REPO}/configs/demo.py:epochs=3,clips_per_class=8", "--config.max_steps=12",
       "--config.checkpoint_every=4", "--config.data.num_frames=4", "--config.batch_size=8",
       "--config.eval_batch_size=8", "--config.log_every=1", "--config.progress_bars=False"]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  with gcs_emulator.running_emulator(tmp_path_factory.mktemp("emulator") / "log") as url:
    yield url


def main(emulator, *args, timeout=300, check=True, cwd=None):
  env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator}
  result = subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd or REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, result.stderr[-4000:]
  return result


def read_object(emulator, name: str) -> bytes | None:
  """An object's bytes straight from the emulator's HTTP API (no client cache), or None."""
  url = f"{emulator}/download/storage/v1/b/{gcs_emulator.BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media"
  try:
    with urllib.request.urlopen(url, timeout=10) as response:
      return response.read()
  except urllib.error.HTTPError as e:
    if e.code == 404:
      return None
    raise


def list_objects(emulator, prefix: str) -> list[str]:
  url = (f"{emulator}/storage/v1/b/{gcs_emulator.BUCKET}/o?prefix={urllib.parse.quote(prefix)}"
         f"&maxResults=10000")
  with urllib.request.urlopen(url, timeout=10) as response:
    return sorted(item["name"] for item in json.loads(response.read()).get("items", []))


def records(data: bytes | None) -> list[dict]:
  lines = (data or b"").decode().splitlines()
  out = []
  for line in lines:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      break
  return out


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, emulator):
  workdir = tmp_path_factory.mktemp("local") / "run"
  main(emulator, *RUN, f"--workdir={workdir}")
  return workdir


@pytest.fixture(scope="module")
def bucket_run(emulator, tmp_path_factory):
  """The run in gs://bkt/run, killed with SIGKILL once step 6 is logged and started again; the
  current directory of both is an empty folder, where no ``gs:`` folder may appear."""
  cwd = tmp_path_factory.mktemp("cwd")
  cmd = [sys.executable, str(REPO / "main.py"), *RUN, "--workdir=gs://bkt/run"]
  env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator}
  log = open(cwd.parent / "killed.log", "w")
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log,
                          start_new_session=True)
  try:
    deadline = time.time() + 300
    while not any(r.get("step") == 6 and "train/loss" in r
                  for r in records(read_object(emulator, "run/metrics.jsonl"))):
      assert proc.poll() is None and time.time() < deadline, (cwd.parent / "killed.log").read_text()[-3000:]
      time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    log.close()
  again = main(emulator, *RUN, "--workdir=gs://bkt/run", cwd=cwd)
  return cwd, again


def test_the_run_is_in_the_bucket_and_equals_the_local_run(emulator, bucket_run, local_reference):
  cwd, again = bucket_run
  assert "resumed from step 4 " in again.stderr  # checkpoints at 4 and 8: killed after 6
  names = list_objects(emulator, "run/")
  for name in ("run/metrics.jsonl", "run/results.json", "run/model.json", "run/eval.json",
               "run/confusion_matrix.png", "run/checkpoints/12/meta/metadata"):
    assert name in names, names
  assert not (set(os.listdir(cwd)) | set(os.listdir(REPO))) & {"gs:", "gs"}
  got = json.loads(read_object(emulator, "run/results.json"))
  want = json.loads((local_reference / "results.json").read_text())
  assert got["steps"] == want["steps"] == 12
  for which in ("final", "best"):
    for key in ("uar", "war", "step"):
      assert got[which][key] == pytest.approx(want[which][key], rel=1e-6, abs=1e-6)
  assert got["final"]["loss"] == pytest.approx(want["final"]["loss"], rel=1e-6)
  # Two workdirs on the same data (generated under two different folders): one data fingerprint.
  assert got["data_fingerprint"]["splits"] == want["data_fingerprint"]["splits"]
  assert got["data_fingerprint"]["splits"]["train"]["clips"] == got["num_clips"]["train"]
  local = [json.loads(l) for l in (local_reference / "metrics.jsonl").read_text().splitlines()]
  remote = records(read_object(emulator, "run/metrics.jsonl"))
  assert [r["step"] for r in remote] == [r["step"] for r in local]  # every step once
  for a, b in zip(remote, local):
    for key in ("train/loss", "eval/uar"):
      if key in b:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), (a["step"], key)


def test_rerunning_the_finished_bucket_run_changes_nothing(emulator, bucket_run):
  cwd, _ = bucket_run
  before = read_object(emulator, "run/results.json")
  result = main(emulator, *RUN, "--workdir=gs://bkt/run", cwd=cwd)
  assert "gs://bkt/run is a finished run (step 12 of 12, results.json)" in result.stderr
  assert read_object(emulator, "run/results.json") == before


def test_tensorboard_scalars_are_in_the_bucket(emulator, bucket_run, tmp_path):
  import tensorflow as tf
  events = [n for n in list_objects(emulator, "run/tensorboard/") if "tfevents" in n]
  assert len(events) == 2, events  # one file per process that ran: the killed one and the rerun
  steps = {}
  for i, name in enumerate(events):
    local = tmp_path / f"events{i}"
    local.write_bytes(read_object(emulator, name))
    for event in tf.compat.v1.train.summary_iterator(str(local)):
      for value in event.summary.value:
        if value.tag == "train/loss":
          steps[event.step] = float(tf.make_ndarray(value.tensor))
  logged = {r["step"]: r["train/loss"] for r in records(read_object(emulator, "run/metrics.jsonl"))
            if "train/loss" in r}
  assert set(steps) == set(logged)
  for step, loss in logged.items():
    assert steps[step] == pytest.approx(loss, rel=1e-6)


def test_evaluate_and_predict_read_the_bucket(emulator, bucket_run, tmp_path):
  cwd, _ = bucket_run
  main(emulator, "--mode=evaluate", *RUN, "--workdir=gs://bkt/run", cwd=cwd)
  report = json.loads(read_object(emulator, "run/evaluation/best/report.json"))
  best = json.loads(read_object(emulator, "run/results.json"))["best"]
  assert report["uar"] == pytest.approx(best["uar"], abs=1e-9)
  assert "run/evaluation/best/confusion_matrix.png" in list_objects(emulator, "run/evaluation/")

  from dferclip_jax.data import synthetic
  data = synthetic.make_synthetic_dataset(tmp_path / "clips", num_classes=7, clips_per_class=2,
                                          image_size=40, seed=3)
  clips = [str(tmp_path / "clips" / line.split()[0])
           for line in (tmp_path / "clips" / "test.txt").read_text().splitlines()[:2]]
  del data
  main(emulator, "--mode=predict", f"--config={REPO}/configs/demo.py", "--workdir=gs://bkt/run",
       f"--inputs={','.join(clips)}", "--output=gs://bkt/predictions.jsonl",
       "--config.progress_bars=False", cwd=cwd)
  lines = records(read_object(emulator, "predictions.jsonl"))
  assert [l["input"] for l in lines] == clips and all("label" in l for l in lines)


def upload(emulator, name: str, data: bytes) -> None:
  url = (f"{emulator}/upload/storage/v1/b/{gcs_emulator.BUCKET}/o?uploadType=media&"
         f"name={urllib.parse.quote(name, safe='')}")
  request = urllib.request.Request(url, data=data, method="POST",
                                   headers={"Content-Type": "application/octet-stream"})
  urllib.request.urlopen(request, timeout=10).close()


def test_annotation_lists_in_the_bucket(emulator, bucket_run, local_reference):
  """The lists in gs://bkt/lists, the frames on local disk (config.data.root): the same test
  report as from the local lists."""
  cwd, _ = bucket_run
  data = local_reference / "synthetic_data"
  for name in ("train.txt", "test.txt"):
    upload(emulator, f"lists/{name}", (data / name).read_bytes())
  lists = ["--config.data.train_list=gs://bkt/lists/train.txt",
           "--config.data.test_list=gs://bkt/lists/test.txt", f"--config.data.root={data}"]
  main(emulator, "--mode=evaluate", *RUN, f"--workdir={local_reference}", "--checkpoint=latest",
       *lists, cwd=cwd)
  from_bucket = json.loads((local_reference / "evaluation" / "latest" / "report.json").read_text())
  final = json.loads((local_reference / "results.json").read_text())["final"]
  assert from_bucket["num_clips"] == 14
  assert from_bucket["uar"] == pytest.approx(final["uar"], abs=1e-9)
  assert from_bucket["loss"] == pytest.approx(final["loss"], rel=1e-6)


def test_init_checkpoint_from_a_bucket_run(emulator, bucket_run):
  cwd, _ = bucket_run
  result = main(emulator, *RUN[:1], "--config.max_steps=1", "--config.data.num_frames=4",
                "--config.batch_size=8", "--config.eval_batch_size=8", "--config.progress_bars=False",
                "--config.init_checkpoint=gs://bkt/run:best", "--workdir=gs://bkt/finetuned", cwd=cwd)
  assert "gs://bkt/run step " in result.stderr, result.stderr[-3000:]
  assert read_object(emulator, "finetuned/results.json") is not None


def test_without_gcsfs_a_gs_path_is_one_error_naming_the_extra(emulator, tmp_path):
  # gcsfs made unimportable, as where requirements-gcs.txt was not installed.
  code = (f"import sys, runpy; sys.modules['gcsfs'] = None; sys.path.insert(0, {str(REPO)!r}); "
          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
  env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator}
  result = subprocess.run([sys.executable, "-c", code, str(REPO / "main.py"), f"--config={REPO}/configs/demo.py",
                           "--workdir=gs://bkt/nowhere"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: gs://bkt/nowhere: a gs:// path needs the Cloud Storage extra, which is not installed: "
      "pip install -r requirements-gcs.txt")
  assert "Traceback" not in result.stderr
  assert list_objects(emulator, "nowhere/") == [] and not os.listdir(tmp_path)


def test_two_processes_on_a_bucket_workdir(emulator, local_reference, tmp_path):
  """scripts/launch_local.sh 2 x 4 devices on gs://bkt/two: one lock, one writer, every step
  logged once, the checkpoints in the bucket, and the local 1 x 8 run's losses."""
  env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator, "PYTHON": sys.executable,
         "DEVICES_PER_PROCESS": "4"}
  result = subprocess.run(["bash", str(REPO / "scripts" / "launch_local.sh"), "2", *RUN,
                           "--config.max_steps=5", "--workdir=gs://bkt/two", "--heartbeat_timeout=10"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  remote = records(read_object(emulator, "two/metrics.jsonl"))
  assert [r["step"] for r in remote if "train/loss" in r] == [1, 2, 3, 4, 5]
  local = {r["step"]: r["train/loss"] for r in
           map(json.loads, (local_reference / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r}
  for r in remote:
    if "train/loss" in r:
      assert r["train/loss"] == pytest.approx(local[r["step"]], rel=1e-3), r["step"]
  names = list_objects(emulator, "two/")
  assert "two/results.json" in names and "two/checkpoints/5/meta/metadata" in names
  assert "two/run.lock" not in names and not os.listdir(tmp_path)
  assert len([n for n in names if "tfevents" in n]) == 1  # one TensorBoard writer


CREATE_TWICE = """
import sys
from dferclip_jax import storage
target = sys.argv[1]
print(storage.create_exclusive(target, b"first"), storage.create_exclusive(target, b"second"))
"""


def test_create_exclusive_in_the_bucket_refuses_an_existing_object(emulator):
  """The upload is conditional (ifGenerationMatch=0): the second create writes nothing."""
  env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator}
  result = subprocess.run([sys.executable, "-c", CREATE_TWICE, "gs://bkt/exclusive/one"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.stdout.split() == ["True", "False"], result.stderr[-3000:]
  assert read_object(emulator, "exclusive/one") == b"first"


def test_runs_started_at_once_on_a_bucket_workdir_one_takes_the_lock(emulator, tmp_path):
  from test_workdir_lock import CONTENDER
  contender = CONTENDER.replace("work = pathlib.Path(sys.argv[1])", (
      "from dferclip_jax import storage\nwork = storage.path(sys.argv[1])\n"
      "signals = pathlib.Path(sys.argv[2])")).replace("work.parent /", "signals /")
  env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator}
  procs = [subprocess.Popen([sys.executable, "-c", contender, "gs://bkt/contended", str(tmp_path)],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(4)]
  for p in procs:
    assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
  (tmp_path / "go").touch()
  lines = [p.stdout.readline().strip() for p in procs]
  assert lines.count("took") == 1, lines
  holder = procs[lines.index("took")]
  assert json.loads(read_object(emulator, "contended/run.lock"))["pid"] == holder.pid
  (tmp_path / "done").touch()
  for p, line in zip(procs, lines):
    p.wait(timeout=60)
    assert p.returncode == (0 if p is holder else 1)
    assert p is holder or line.startswith("refused: gs://bkt/contended is in use by another run"), line
  assert read_object(emulator, "contended/run.lock") is None  # the holder removed its own lock
