"""predict reads the frames the evaluation sampler reads, with the pixels the decoder gives, in RGB:
a 40-frame folder and a 40-frame video, where the test sampler's segment middles differ from the
first 16 frames, through a stand-in model whose output reveals every frame it was fed."""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dferclip_jax import predict
from dferclip_jax.data import pipeline, sampling
from dferclip_jax.data.records import ClipRecord

T, SIZE, SCALE = 16, 32, 4.0
# Segment middles of 40 frames in 16 segments, by hand: tick = 40 / 16 = 2.5, int(1.25 + 2.5 i).
MIDDLES = [1, 3, 6, 8, 11, 13, 16, 18, 21, 23, 26, 28, 31, 33, 36, 38]
# Two clips: the quarter and three-quarter points, int(0.625 + 2.5 i) and int(1.875 + 2.5 i).
QUARTERS = [[0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28, 30, 33, 35, 38],
            [1, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 29, 31, 34, 36, 39]]


def frame_colour(i):
  """Frame i is uniform; neighbours differ by ~100 levels in red and blue, and red != blue, so a
  frame off by one or a BGR decode both show (a lossy codec moves colours by a few levels)."""
  return np.array([30 + (97 * i) % 200, 100, 30 + (53 * i + 100) % 200], np.uint8)


class FrameMeans:
  """A stand-in model: logits [0, mean red of frame 0..T-1, mean blue of frame 0..T-1] * SCALE / 255,
  so ``log(p_j / p_0)`` gives back each frame's mean red and blue."""
  num_frames, num_classes = T, 1 + 2 * T
  clip_config = types.SimpleNamespace(vision_config=types.SimpleNamespace(image_size=SIZE))

  def encode_prompts(self):  # the model interface predict calls once; the features are unused here
    raise AssertionError("reached only through apply(method=...)")

  def apply(self, variables, video=None, *, method=None, **_):
    del variables
    if method is not None:  # class_text_features: stand-in features, ignored by this model
      return jnp.zeros((self.num_classes, 1), jnp.float32)
    video = video.astype(jnp.float32) / 255.0 if video.dtype == jnp.uint8 else video.astype(jnp.float32)
    means = video.mean(axis=(2, 3))                         # [N, T, 3] in [0, 1]
    zero = jnp.zeros(means.shape[:1] + (1,), jnp.float32)
    return jnp.concatenate([zero, SCALE * means[..., 0], SCALE * means[..., 2]], -1)


def red_blue(result):
  """A predict result -> the mean (red, blue) of the T frames the model saw, [T, 2] in [0, 255]."""
  names = [f"c{i}" for i in range(FrameMeans.num_classes)]
  p = np.array([result["probs"][n] for n in names], np.float64)
  logits = np.log(p / p[0]) * 255.0 / SCALE
  return np.stack([logits[1:1 + T], logits[1 + T:]], -1)


def run(inputs, num_clips=1):
  names = [f"c{i}" for i in range(FrameMeans.num_classes)]
  results = list(predict.predict(FrameMeans(), {}, inputs, names, batch_size=2, num_clips=num_clips))
  assert all("error" not in r for r in results), results
  return results


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("clip40")
  for i in range(40):
    Image.fromarray(np.broadcast_to(frame_colour(i), (SIZE, SIZE, 3)).copy()).save(path / f"{i:05d}.png")
  return path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  av = pytest.importorskip("av")
  path = tmp_path_factory.mktemp("video") / "clip40.mp4"
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=10)
    stream.width = stream.height = SIZE
    stream.pix_fmt = "yuv420p"
    for i in range(40):
      frame = av.VideoFrame.from_ndarray(np.broadcast_to(frame_colour(i), (SIZE, SIZE, 3)).copy(), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  with av.open(str(path)) as container:  # what a decoder gives, read here independently of predict
    decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
  assert decoded.shape == (40, SIZE, SIZE, 3)
  return path, decoded


def test_the_evaluation_sampler_takes_segment_middles():
  np.testing.assert_array_equal(sampling.test_indices(40, num_segments=T).numpy(), [MIDDLES])
  np.testing.assert_array_equal(sampling.test_indices(40, num_segments=T, num_clips=2).numpy(), QUARTERS)


def test_predict_on_a_40_frame_folder_reads_the_segment_middles(folder):
  seen = red_blue(run([str(folder)])[0])
  expected = np.array([[frame_colour(i)[0], frame_colour(i)[2]] for i in MIDDLES], np.float64)
  np.testing.assert_allclose(seen, expected, atol=0.05)
  # ... which are exactly the frames the evaluation pipeline feeds the model for this clip.
  batch = next(iter(pipeline.eval_batches([ClipRecord(str(folder), 40, 0)], batch_size=1,
                                          image_size=SIZE, num_frames=T)))
  from_eval = batch["video"][0].astype(np.float64).mean(axis=(1, 2))[:, [0, 2]]
  np.testing.assert_allclose(seen, from_eval, atol=0.05)


def test_predict_on_a_40_frame_video_reads_the_segment_middles_in_rgb(video):
  path, decoded = video
  seen = red_blue(run([str(path)])[0])
  expected = decoded[MIDDLES].astype(np.float64).mean(axis=(1, 2))[:, [0, 2]]
  np.testing.assert_allclose(seen, expected, atol=0.05)
  # RGB, not BGR: the colours as written, give or take the codec's few levels.
  written = np.array([[frame_colour(i)[0], frame_colour(i)[2]] for i in MIDDLES], np.float64)
  np.testing.assert_allclose(seen, written, atol=12)


def test_predict_averages_two_clips_of_the_sampler(folder):
  names = [f"c{i}" for i in range(FrameMeans.num_classes)]
  result = run([str(folder)], num_clips=2)[0]
  probs = np.array([result["probs"][n] for n in names])

  def softmax_of(indices):  # by hand: the stand-in's logits for these frames, then a softmax
    logits = np.concatenate([[0.0], [SCALE * int(frame_colour(i)[0]) / 255 for i in indices],
                             [SCALE * int(frame_colour(i)[2]) / 255 for i in indices]])
    e = np.exp(logits - logits.max())
    return e / e.sum()

  np.testing.assert_allclose(probs, (softmax_of(QUARTERS[0]) + softmax_of(QUARTERS[1])) / 2, rtol=1e-5)
