"""The web demo in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium): the page's own file input uploads a video, the page's top class equals
``--mode=predict``'s for the same video, the timeline image and the frames are on the page, and a
bad upload is a message on the page while the server keeps serving. A screenshot is saved."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

import gcs_emulator
import videos
from conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
pytest.importorskip("av", reason="video files need requirements-video.txt (PyAV)")
if not (CHROMIUM and CHROMEDRIVER):
  pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
              allow_module_level=True)

MODEL = FIXTURES / "demo_model"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """Eight moving-gradient frames of 40 x 40 at 8 fps: one short clip."""
  path = tmp_path_factory.mktemp("video") / "clip.mp4"
  frames = [np.full((40, 40, 3), 30 * t, np.uint8) for t in range(8)]
  for t, frame in enumerate(frames):
    frame[:, : 5 * t] = 220
  videos.write_video(path, frames)
  return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  port = gcs_emulator.free_port()
  log = open(tmp_path_factory.mktemp("demo") / "server.log", "w")
  proc = subprocess.Popen([sys.executable, "-m", "dferclip_jax.cli.demo", f"--model={MODEL}",
                           f"--port={port}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}/"
  deadline = time.time() + 180
  while True:
    try:
      urllib.request.urlopen(url + "api/info", timeout=2).close()
      break
    except OSError:
      assert proc.poll() is None and time.time() < deadline, open(log.name).read()[-3000:]
      time.sleep(0.3)
  yield url
  proc.kill()
  proc.wait()
  log.close()


@pytest.fixture(scope="module")
def browser():
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1600"):
    options.add_argument(flag)
  from selenium.webdriver.chrome.service import Service
  driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  yield driver
  driver.quit()


def wait_for(browser, condition, timeout=180):
  from selenium.webdriver.support.ui import WebDriverWait
  return WebDriverWait(browser, timeout).until(lambda d: condition(d))


def upload(browser, url, path, faces=False):
  from selenium.webdriver.common.by import By
  browser.get(url)
  wait_for(browser, lambda d: "Model:" in d.find_element(By.ID, "model").text)
  browser.find_element(By.ID, "video").send_keys(str(path))
  if faces:
    browser.find_element(By.ID, "faces").click()
  browser.find_element(By.ID, "run").click()


def error_shown(browser) -> str:
  from selenium.webdriver.common.by import By
  wait_for(browser, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
  return browser.find_element(By.ID, "status").text


def test_the_page_shows_what_predict_says(server, browser, video, tmp_path):
  from selenium.webdriver.common.by import By
  upload(browser, server, video)
  wait_for(browser, lambda d: d.find_element(By.ID, "status").text in ("done",)
           or "error" in d.find_element(By.ID, "status").get_attribute("class"))
  assert browser.find_element(By.ID, "status").text == "done", browser.find_element(By.ID, "status").text
  shown = browser.find_element(By.ID, "top-class").text
  out = tmp_path / "pred.jsonl"
  subprocess.run([sys.executable, "main.py", "--mode=predict", "--config=configs/demo.py",
                  f"--checkpoint={MODEL}", f"--inputs={video}", f"--output={out}"], cwd=REPO,
                 check=True, capture_output=True, timeout=600)
  assert shown == json.loads(out.read_text())["label"]
  image = browser.find_element(By.ID, "timeline-image")
  assert image.get_attribute("src").startswith("data:image/png;base64,")
  assert browser.execute_script("return arguments[0].naturalWidth", image) > 100  # a decoded image
  frames = json.loads((MODEL / "model.json").read_text())["model"]["num_frames"]
  assert len(browser.find_elements(By.CSS_SELECTOR, "#crops img.crop")) == frames  # what it sampled
  assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 7
  assert len(browser.find_elements(By.CSS_SELECTOR, "#texts li")) == 7
  shot = tmp_path / "demo.png"
  browser.save_screenshot(str(shot))
  assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  if os.environ.get("DFERCLIP_SCREENSHOT"):  # scripts refresh docs/demo.png with this
    shutil.copy(shot, os.environ["DFERCLIP_SCREENSHOT"])


def test_a_bad_upload_is_a_message_and_the_server_goes_on(server, browser, video, tmp_path):
  from selenium.webdriver.common.by import By
  bad = tmp_path / "notes.mp4"
  bad.write_bytes(b"this is not a video")
  upload(browser, server, bad)
  assert "not a readable video" in error_shown(browser)
  long = tmp_path / "long.mp4"  # 601 frames at 1 fps: past the 600 s the demo takes
  videos.write_video(long, (np.full((16, 16, 3), t % 256, np.uint8) for t in range(601)), fps=1)
  upload(browser, server, long)
  assert error_shown(browser) == "the video runs 601 s; this demo takes up to 600 s"
  upload(browser, server, video, faces=True)  # gradients, no face
  assert "no face found" in error_shown(browser)
  upload(browser, server, video)  # the same server, the next upload
  wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "done")


def test_face_crops_of_a_portrait_video(server, browser, tmp_path):
  """"Find and follow the face" on a portrait moving across the frame: the page shows the
  tracked crops (one per sampled frame) under their title."""
  from selenium.webdriver.common.by import By
  from test_faces import MOVING, portrait_frames
  frames, _ = portrait_frames(MOVING * 2)
  path = tmp_path / "portrait.mp4"
  videos.write_video(path, frames, options={"qscale": "2"})
  upload(browser, server, path, faces=True)
  wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "done"
           or "error" in d.find_element(By.ID, "status").get_attribute("class"))
  assert browser.find_element(By.ID, "status").text == "done", browser.find_element(By.ID, "status").text
  assert browser.find_element(By.ID, "crops-title").text == "The tracked face crops the model saw"
  frames_per_clip = json.loads((MODEL / "model.json").read_text())["model"]["num_frames"]
  assert len(browser.find_elements(By.CSS_SELECTOR, "#crops img.crop")) == frames_per_clip
