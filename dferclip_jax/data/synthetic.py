"""A small synthetic video dataset in the DFER-CLIP layout, for the demo and the tests.

``make_synthetic_dataset(out_dir)`` writes JPEG frame folders and ``train.txt`` / ``test.txt``
(official format: ``frames/<clip> <num_frames> <label>``, paths relative to ``out_dir``) plus
``classes.txt``. Every class has its own look and motion, each cue chosen to survive the training
augmentation (random crops down to 8% of the frame, horizontal flips, brightness 0.5-1.5):

  * colour: the background hue is ``label / num_classes`` (brightness scales value, not hue) and
    the moving object is a pale tint of it, so every region of every frame carries the hue;
  * texture: horizontal stripes, vertical stripes, checks or none, at two frequencies (all
    mirror-symmetric: a flip must not turn one class into another);
  * shape: disk, square, ring or cross (all mirror-symmetric);
  * motion: rising, falling, growing, shrinking or blinking (none is left/right).

Per clip, the frame count, object position and size, hue (within +-0.02), motion phase and
pixel noise vary, so a model must learn the class, not the clip. About 200 clips of 12 frames at
40x40 take a second or two. A second call with the same parameters finds ``synthetic.json`` and
returns at once; other parameters regenerate the folder's ``frames/`` and lists.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import os
import shutil
import numpy as np
from PIL import Image

from dferclip_jax.data import class_orders

STAMP = "synthetic.json"
_FORMAT_VERSION = 2  # bump when the rendering changes, so old folders are regenerated
_TEXTURES = ("horizontal", "vertical", "checks", "plain")
_SHAPES = ("disk", "square", "ring", "cross")
_MOTIONS = ("rise", "fall", "grow", "shrink", "blink")


@dataclasses.dataclass(frozen=True)
class SyntheticDataset:
  root: str
  train_list: str
  test_list: str
  classes_file: str
  class_names: tuple[str, ...]
  num_train: int
  num_test: int


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
  """DFER-CLIP's names for 7 or 11 classes (so prompts read naturally), else ``class_<i>``."""
  if num_classes == len(class_orders.DFERCLIP_7):
    return class_orders.DFERCLIP_7
  if num_classes == len(class_orders.DFERCLIP_11):
    return class_orders.DFERCLIP_11
  return tuple(f"class_{i}" for i in range(num_classes))


def make_synthetic_dataset(out_dir: str | os.PathLike, *, num_classes: int = 7,
                           clips_per_class: int = 30, frames_range: tuple[int, int] = (8, 24),
                           image_size: int = 40, seed: int = 0,
                           test_fraction: float = 0.2) -> SyntheticDataset:
  """Writes (or finds, if already there with the same parameters) the dataset under ``out_dir``.

  ``frames_range``: inclusive range of frames per clip. ``test_fraction``: the share of each
  class's clips listed in ``test.txt`` (at least one per class when ``clips_per_class > 1``).
  """
  lo, hi = frames_range
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes}: need at least 2 classes")
  if clips_per_class < 2:
    raise ValueError(f"clips_per_class={clips_per_class}: need at least 2 (one train, one test)")
  if not 1 <= lo <= hi:
    raise ValueError(f"frames_range={frames_range}: expected 1 <= low <= high")
  if image_size < 8:
    raise ValueError(f"image_size={image_size}: expected at least 8 pixels")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction}: expected a fraction in (0, 1)")
  root = os.path.abspath(out_dir)
  params = dict(version=_FORMAT_VERSION, num_classes=num_classes, clips_per_class=clips_per_class,
                frames_range=[lo, hi], image_size=image_size, seed=seed,
                test_fraction=test_fraction)
  names = synthetic_class_names(num_classes)
  num_test = min(clips_per_class - 1, max(1, round(clips_per_class * test_fraction)))
  result = SyntheticDataset(
      root=root, train_list=os.path.join(root, "train.txt"),
      test_list=os.path.join(root, "test.txt"),
      classes_file=os.path.join(root, class_orders.CLASSES_FILE), class_names=names,
      num_train=num_classes * (clips_per_class - num_test), num_test=num_classes * num_test)
  stamp = os.path.join(root, STAMP)
  if _read_stamp(stamp) == params and all(
      os.path.isfile(p) for p in (result.train_list, result.test_list, result.classes_file)):
    return result

  os.makedirs(root, exist_ok=True)
  if os.path.exists(stamp):
    os.remove(stamp)  # a crash from here on leaves no stamp: the next call starts over
  frames_root = os.path.join(root, "frames")
  shutil.rmtree(frames_root, ignore_errors=True)
  os.makedirs(frames_root)
  rng = np.random.default_rng(seed)
  lines = {"train": [], "test": []}
  for label in range(num_classes):
    for k in range(clips_per_class):
      clip = f"c{label:02d}_{k:04d}"
      count = int(rng.integers(lo, hi + 1))
      video = render_clip(rng, label, num_classes, count, image_size)
      folder = os.path.join(frames_root, clip)
      os.makedirs(folder)
      for t, frame in enumerate(video):
        Image.fromarray(frame).save(os.path.join(folder, f"{t:05d}.jpg"), quality=92)
      split = "test" if k < num_test else "train"
      lines[split].append(f"frames/{clip} {count} {label}\n")
  for split, path in (("train", result.train_list), ("test", result.test_list)):
    with open(path, "w", newline="\n") as f:
      f.writelines(lines[split])
  class_orders.write_classes_file(result.classes_file, names)
  with open(stamp, "w") as f:
    json.dump(params, f, indent=1)
  return result


def render_clip(rng: np.random.Generator, label: int, num_classes: int, num_frames: int,
                size: int) -> np.ndarray:
  """One clip of class ``label``: uint8 ``[num_frames, size, size, 3]``."""
  texture = _TEXTURES[label % len(_TEXTURES)]
  frequency = 3.0 if (label // len(_TEXTURES)) % 2 == 0 else 6.0
  shape = _SHAPES[label % len(_SHAPES)]
  motion = _MOTIONS[label % len(_MOTIONS)]
  hue = (label / num_classes + rng.uniform(-0.02, 0.02)) % 1.0
  background = np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.8))
  foreground = np.array(colorsys.hsv_to_rgb(hue, 0.15, 1.0))  # near white: the hue stays the cue

  t = np.linspace(0.0, 1.0, num_frames)[:, None, None]
  grid = (np.arange(size) + 0.5) / size
  y, x = grid[None, :, None], grid[None, None, :]
  shift = rng.uniform(0.0, 1.0)
  pattern = {
      "horizontal": np.sin(2 * np.pi * (frequency * y + shift)) + 0 * x,
      "vertical": np.sin(2 * np.pi * (frequency * x + shift)) + 0 * y,
      "checks": np.sign(np.sin(2 * np.pi * frequency * x) * np.sin(2 * np.pi * frequency * y)),
      "plain": 0 * x + 0 * y,
  }[texture]
  image = background * (1.0 + 0.2 * pattern[..., None])            # [1, S, S, 3]

  cx = 0.5 + rng.uniform(-0.15, 0.15)
  cy = 0.5 + rng.uniform(-0.1, 0.1)
  radius = rng.uniform(0.16, 0.24) * np.ones_like(t)
  visible = np.ones_like(t, dtype=bool)
  if motion == "rise":
    cy = cy + 0.25 - 0.5 * t
  elif motion == "fall":
    cy = cy - 0.25 + 0.5 * t
  elif motion == "grow":
    radius = radius * (0.4 + 1.0 * t)
  elif motion == "shrink":
    radius = radius * (1.4 - 1.0 * t)
  else:  # blink: on and off every couple of frames, from a random phase
    visible = ((np.arange(num_frames) + rng.integers(0, 4)) // 2 % 2 == 0)[:, None, None]
  dx, dy = np.abs(x - cx), np.abs(y - cy)
  distance = np.sqrt(dx ** 2 + dy ** 2)
  mask = {
      "disk": distance < radius,
      "square": np.maximum(dx, dy) < radius * 0.85,
      "ring": np.abs(distance - radius) < 0.06,
      "cross": ((dx < radius / 3) & (dy < radius)) | ((dy < radius / 3) & (dx < radius)),
  }[shape] & visible                                                   # [T, S, S]
  video = np.where(mask[..., None], foreground, image)
  video = video + rng.normal(0.0, 0.03, video.shape)
  return np.clip(np.rint(video * 255.0), 0, 255).astype(np.uint8)


def _read_stamp(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None

