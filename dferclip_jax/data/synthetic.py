"""A small synthetic video dataset in the DFER-CLIP layout, for the demo and the tests.

``make_synthetic_dataset(out_dir)`` writes JPEG frame folders and ``train.txt`` / ``test.txt``
(official format: ``frames/<clip> <num_frames> <label>``, paths relative to ``out_dir``) plus
``classes.txt``. Each cue is chosen to survive the training augmentation (random crops down to 8%
of the frame, horizontal flips, brightness 0.5-1.5). A class has a look:

  * colour: the background hue is ``look / num_looks`` (brightness scales value, not hue) and
    the object is a pale tint of it, so every region of every frame carries the hue;
  * texture: horizontal stripes, vertical stripes, checks or none, at two frequencies (all
    mirror-symmetric: a flip must not turn one class into another);
  * shape: disk, square, ring or cross (all mirror-symmetric);

and a motion (none is left/right, which a flip would undo).

Classes that differ in time only: with ``temporal_pairs=p``, classes ``2k`` and ``2k+1`` (k < p)
share one look and one motion whose phase ramps over the clip (from a random start, over a random
range): ascending (the object climbs from near the bottom to near the top), expanding (the object
grows from small to large) or filling (a pale level rises from the bottom edge). Class ``2k``
plays it forward, class ``2k+1`` plays the same clip backward (its frames are the forward clip's,
reversed). Both classes thus show the same frames, in opposite orders: the official segment
sampling of a clip and of its reversal gives (nearly) the same set of frames, so a single frame, or
the frames' mean, tells the pair but not the class: only a model of time can. The other classes
(``label >= 2p``) each have a look of their own and a motion of rising, falling, growing,
shrinking or blinking; with ``p=0`` (the default) every class is told apart by a single frame.

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
from dferclip_jax.data import frames as frames_lib

STAMP = "synthetic.json"
_FORMAT_VERSION = 3  # bump when the rendering changes, so old folders are regenerated
_TEXTURES = ("horizontal", "vertical", "checks", "plain")
_SHAPES = ("disk", "square", "ring", "cross")
_MOTIONS = ("rise", "fall", "grow", "shrink", "blink")  # of the classes outside the pairs
_PAIR_MOTIONS = ("ascend", "expand", "fill")  # pair k: _PAIR_MOTIONS[k % 3]


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
                           image_size: int = 40, seed: int = 0, test_fraction: float = 0.2,
                           temporal_pairs: int = 0) -> SyntheticDataset:
  """Writes (or finds, if already there with the same parameters) the dataset under ``out_dir``.

  ``frames_range``: inclusive range of frames per clip. ``test_fraction``: the share of each
  class's clips listed in ``test.txt`` (at least one per class when ``clips_per_class > 1``).
  ``temporal_pairs``: how many pairs of classes differ only in the direction of time (see the
  module docstring).
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
  if not 0 <= 2 * temporal_pairs <= num_classes:
    raise ValueError(f"temporal_pairs={temporal_pairs}: expected 0 to {num_classes // 2} pairs "
                     f"of the {num_classes} classes")
  root = os.path.abspath(out_dir)
  params = dict(version=_FORMAT_VERSION, num_classes=num_classes, clips_per_class=clips_per_class,
                frames_range=[lo, hi], image_size=image_size, seed=seed,
                test_fraction=test_fraction, temporal_pairs=temporal_pairs)
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
      video = render_clip(rng, label, num_classes, count, image_size, temporal_pairs)
      folder = os.path.join(frames_root, clip)
      os.makedirs(folder)
      for t, frame in enumerate(video):
        path = os.path.join(folder, frames_lib.frame_file_name(t, count))
        Image.fromarray(frame).save(path, quality=92)
      split = "test" if k < num_test else "train"
      lines[split].append(f"frames/{clip} {count} {label}\n")
  for split, path in (("train", result.train_list), ("test", result.test_list)):
    with open(path, "w", newline="\n") as f:  # local: generated on local disk
      f.writelines(lines[split])
  class_orders.write_classes_file(result.classes_file, names)
  with open(stamp, "w") as f:  # local: generated on local disk
    json.dump(params, f, indent=1)
  return result


def class_design(label: int, num_classes: int, temporal_pairs: int = 0) -> tuple[int, int, str, bool]:
  """-> (look, number of looks, motion, backward) of class ``label``: a pair's two classes share
  the look and the motion; the second plays it backward."""
  looks = num_classes - temporal_pairs
  if label < 2 * temporal_pairs:
    pair = label // 2
    return pair, looks, _PAIR_MOTIONS[pair % len(_PAIR_MOTIONS)], label % 2 == 1
  return label - temporal_pairs, looks, _MOTIONS[label % len(_MOTIONS)], False


def render_clip(rng: np.random.Generator, label: int, num_classes: int, num_frames: int,
                size: int, temporal_pairs: int = 0) -> np.ndarray:
  """One clip of class ``label``: uint8 ``[num_frames, size, size, 3]``. The two classes of a pair
  draw the same numbers from ``rng``: from equal generators, one's clip is the other's reversed."""
  look, looks, motion, backward = class_design(label, num_classes, temporal_pairs)
  texture = _TEXTURES[look % len(_TEXTURES)]
  frequency = 3.0 if (look // len(_TEXTURES)) % 2 == 0 else 6.0
  shape = _SHAPES[look % len(_SHAPES)]
  hue = (look / looks + rng.uniform(-0.02, 0.02)) % 1.0
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
  elif motion == "blink":  # on and off every couple of frames, from a random phase
    visible = ((np.arange(num_frames) + rng.integers(0, 4)) // 2 % 2 == 0)[:, None, None]
  else:  # a pair's motion: its phase ramps up over the clip, over a range drawn per clip
    phase = rng.uniform(0.0, 0.2) + rng.uniform(0.6, 0.8) * t
    if motion == "ascend":  # from near the bottom to near the top (y grows downwards)
      cy = 0.9 - 0.8 * phase
    elif motion == "expand":
      radius = radius * (0.3 + 1.2 * phase)
    else:  # fill: a pale level rises from the bottom edge (the object shows through it)
      level = 1.0 - (0.1 + 0.8 * phase)
  dx, dy = np.abs(x - cx), np.abs(y - cy)
  distance = np.sqrt(dx ** 2 + dy ** 2)
  mask = {
      "disk": distance < radius,
      "square": np.maximum(dx, dy) < radius * 0.85,
      "ring": np.abs(distance - radius) < 0.06,
      "cross": ((dx < radius / 3) & (dy < radius)) | ((dy < radius / 3) & (dx < radius)),
  }[shape] & visible                                                   # [T, S, S]
  if motion == "fill":
    mask = mask ^ (y > level)
  video = np.where(mask[..., None], foreground, image)
  video = video + rng.normal(0.0, 0.03, video.shape)
  video = np.clip(np.rint(video * 255.0), 0, 255).astype(np.uint8)
  return np.ascontiguousarray(video[::-1]) if backward else video


def _read_stamp(path: str) -> dict | None:
  try:
    with open(path) as f:  # local: generated on local disk
      return json.load(f)
  except (OSError, ValueError):
    return None
