"""HESP (Liu et al., ACM MM 2024): open-set video FER with human expression-sensitive prompting.

The module, following the official code (github cosinehuang/HESP, prompt/prompt.py,
loss/MYARPLoss.py, core/train.py):

* **Textual prompting**: class-specific learnable contexts (16 tokens) before each known class's
  name, through the frozen CLIP text tower; the CLIP head's logits are
  ``exp(logit_scale) * cos(video, class text)``, the video feature being the mean of its frames'
  CLIP image features.
* **Visual prompting**: one learnable patch (``patch_size`` pixels square) added to every frame,
  in [0, 1] pixel space before CLIP's normalisation, centred at ``patch_position`` (the "attention
  peak", found once per split by ``attention_peak``) and clamped inside the frame.
* **Open-set head**: each known class has a learnable "unknown" visual prompt (an image); their
  CLIP image features are the reciprocal points of the open-set logits (``losses.reciprocal_logits``).
  The unknown prompts are also matched to the frozen text "This video is not <class>.".
* **Ensemble**: the mean of the CLIP head's and the open-set head's logits; its max is the
  known-ness score.

CLIP is frozen, as in the official code. Variables::

  {"params": {"clip", "prompt_learner": {"ctx"}, "perturbation" [P, P, 3],
              "unknown_visual" [K, S, S, 3], "radius" []},
   "prompts": {"ids", "name_lens"}, "unknown_prompts": {"ids"}, "patch": {"position" int32 [2]}}
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from dferclip_jax.models.clip import CLIP, normalize_pixels
from dferclip_jax.models.clip_config import CLIPConfig
from dferclip_jax.models.dferclip import l2_normalize, prompt_tokens
from dferclip_jax.models.param_tree import check_tree
from dferclip_jax.models.prompts import PromptLearner
from dferclip_jax.openset import contours
from dferclip_jax.openset.losses import reciprocal_logits
from dferclip_jax.tokenizer import tokenize

UNKNOWN_TEMPLATE = "This video is not {}."


def class_prompt_text(name: str) -> str:
  """HESP's class text: the name followed by a period ("X X ... X anger.")."""
  return f"{name}."


def clamp_position(position, size: int, patch_size: int):
  """The official clamp: the patch centre stays ``patch_size // 2`` inside the ``size`` frame."""
  half = patch_size // 2
  return jnp.clip(jnp.asarray(position, jnp.int32), half, size - 1 - half)


def add_patch(frames, patch, position):
  """frames [M, S, S, 3] in [0, 1] + ``patch`` [P, P, 3] on rows/cols centre-P//2 .. centre+P//2."""
  size, p = frames.shape[1], patch.shape[0]
  half = p // 2
  row, col = clamp_position(position, size, p) - half
  window = jax.lax.dynamic_slice(frames, (0, row, col, 0), (frames.shape[0], p, p, 3))
  return jax.lax.dynamic_update_slice(frames, window + patch.astype(frames.dtype), (0, row, col, 0))


class HESP(nn.Module):
  clip_config: CLIPConfig
  num_classes: int
  n_ctx: int = 16
  patch_size: int = 56
  num_frames: int = 8
  context_length: int = 77
  dtype: Any = jnp.float32

  def setup(self):
    size = self.clip_config.vision_config.image_size
    if not 1 <= self.patch_size <= size:
      raise ValueError(f"patch_size={self.patch_size} does not fit a {size}-pixel frame")
    self.clip = CLIP(self.clip_config, dtype=self.dtype)
    self.prompt_learner = PromptLearner(self.num_classes, self.n_ctx, True, "end")
    self.perturbation = self.param("perturbation", nn.initializers.zeros,
                                   (self.patch_size, self.patch_size, 3), jnp.float32)
    self.unknown_visual = self.param("unknown_visual", nn.initializers.normal(1.0),
                                     (self.num_classes, size, size, 3), jnp.float32)
    self.radius = self.param("radius", nn.initializers.zeros, (), jnp.float32)
    shape = (self.num_classes, self.context_length)
    self.prompt_ids = self.variable("prompts", "ids", jnp.zeros, shape, jnp.int32)
    self.name_lens = self.variable("prompts", "name_lens", jnp.zeros, (self.num_classes,), jnp.int32)
    self.unknown_ids = self.variable("unknown_prompts", "ids", jnp.zeros, shape, jnp.int32)
    self.position = self.variable("patch", "position", lambda: jnp.full((2,), size // 2, jnp.int32))

  def reciprocal_points(self):
    """The unknown visual prompts' CLIP features (raw images in, as the official code feeds them)."""
    return self.clip.encode_image(self.unknown_visual)

  def unknown_prompt_logits(self, points):
    """[K, K]: unknown visual prompt i against the text "This video is not <class j>."."""
    text = l2_normalize(self.clip.encode_text(self.unknown_ids.value))
    return jnp.exp(self.clip.logit_scale) * l2_normalize(points) @ text.T

  def __call__(self, video, *, train: bool = False):
    del train
    if video.dtype == jnp.uint8:
      video = video.astype(jnp.float32) / 255.0
    n, t = video.shape[:2]
    frames = add_patch(video.reshape((n * t,) + video.shape[2:]).astype(jnp.float32),
                       self.perturbation, self.position.value)
    visual = self.clip.encode_image(normalize_pixels(frames)).reshape(n, t, -1).mean(axis=1)
    ids = self.prompt_ids.value
    prompts = self.prompt_learner(self.clip.embed_tokens(ids), self.name_lens.value)
    text = l2_normalize(self.clip.encode_text_embeddings(prompts, jnp.argmax(ids, axis=-1)))
    clip_logits = jnp.exp(self.clip.logit_scale) * l2_normalize(visual) @ text.T
    points = self.reciprocal_points()
    osr_logits = reciprocal_logits(visual, points)
    return {"clip_logits": clip_logits, "osr_logits": osr_logits,
            "logits": (clip_logits + osr_logits) / 2.0, "visual": visual, "points": points,
            "unknown_logits": self.unknown_prompt_logits(points), "radius": self.radius}


def build_hesp(clip_config: CLIPConfig, clip_params, class_names: Sequence[str], tokenizer, *,
               rng, n_ctx: int = 16, patch_size: int = 56, num_frames: int = 8, dtype=jnp.float32):
  """-> (model, numpy variables); the patch position is set later by ``attention_peak``."""
  model = HESP(clip_config, len(class_names), n_ctx, patch_size, num_frames, dtype=dtype)
  texts = [class_prompt_text(n) for n in class_names]
  ids, name_lens = prompt_tokens(tokenizer, texts, n_ctx, model.context_length)
  unknown_ids, _ = tokenize(tokenizer, [UNKNOWN_TEMPLATE.format(n) for n in class_names],
                            model.context_length)
  size = clip_config.vision_config.image_size
  video = jnp.zeros((1, 1, size, size, 3), jnp.float32)
  # Initialise only the new parameters; CLIP's come from the checkpoint.
  shapes = jax.eval_shape(lambda: model.init(rng, video))
  k_ctx, k_unknown = jax.random.split(rng)
  width = clip_config.text_config.hidden_size
  params = {
      "clip": clip_params,
      "prompt_learner": {"ctx": np.asarray(0.02 * jax.random.normal(k_ctx, (len(class_names), n_ctx, width)))},
      "perturbation": np.zeros((patch_size, patch_size, 3), np.float32),
      "unknown_visual": np.asarray(jax.random.normal(k_unknown, (len(class_names), size, size, 3))),
      "radius": np.zeros((), np.float32),
  }
  variables = {"params": params, "prompts": {"ids": ids, "name_lens": name_lens},
               "unknown_prompts": {"ids": unknown_ids},
               "patch": {"position": np.full((2,), size // 2, np.int32)}}
  check_tree(variables, shapes, source="build_hesp")
  return model, variables


# ----------------------------------------------------------------------------- attention peak


JET_RED = 0.7917  # the JET colour map is red (OpenCV hue <= 10) from 79.17% of its range up


def _largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest 8-connected region of a boolean mask by pixel count (the first of equal ones)."""
  labels, count = contours.label_components(mask, 8)
  sizes = np.bincount(labels.reshape(-1), minlength=count + 1)[1:]
  return labels == 1 + int(np.argmax(sizes))


def attention_peak(clip_config: CLIPConfig, clip_params, frame: np.ndarray, class_ids: np.ndarray,
                   rng, official: bool = False) -> np.ndarray:
  """(row, col) of the frame's "attention peak", the official recipe: a class activation map of
  the first frame's patch embeddings, weighted by the (randomly initialised) linear-head row of
  zero-shot CLIP's top class; rescaled to the frame; the centroid of the largest region in the
  top (red, on the JET colour map) ~21% of its range.

  ``official``: the official OpenCV chain (``contours``): the uint8 map resized to uint8 levels,
  red = levels >= ``contours.JET_RED_LEVEL`` (201), the largest *external contour by its area*
  and the centroid of that polygon. Otherwise: the float-resized map above ``JET_RED`` of its
  range, the largest 8-connected region by pixel count and the mean of its pixels."""
  import tensorflow as tf
  clip = CLIP(clip_config)
  image = jnp.asarray(frame, jnp.float32)[None] / 255.0  # the official feeds [0, 1] pixels, unnormalised
  kernel = clip_params["vision_model"]["embeddings"]["patch_embedding"]["kernel"]
  p = clip_config.vision_config.patch_size
  patches = jax.lax.conv_general_dilated(image, kernel, (p, p), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
  features = clip.apply({"params": clip_params}, image, method=CLIP.encode_image)
  text = clip.apply({"params": clip_params}, class_ids, method=CLIP.encode_text)
  top = int(jnp.argmax(l2_normalize(features) @ l2_normalize(text).T))
  width = patches.shape[-1]
  bound = width ** -0.5  # torch.nn.Linear's default init of the official fc0
  weights = jax.random.uniform(rng, (class_ids.shape[0], width), minval=-bound, maxval=bound)
  cam = np.asarray(patches @ weights[top])
  cam = np.uint8(255 * (cam - cam.min()) / max(cam.max() - cam.min(), 1e-12))
  size = frame.shape[0]
  if official:
    return red_band_peak(contours.resize_bilinear_uint8(cam, size))
  heat = tf.image.resize(cam[..., None].astype(np.float32), (size, size), method="bilinear").numpy()[..., 0]
  mask = heat >= JET_RED * 255
  if not mask.any():  # a flat map: its maximum is the peak
    mask = heat >= heat.max()
  rows, cols = np.nonzero(_largest_component(mask))
  return np.array([int(rows.mean()), int(cols.mean())], np.int32)


def red_band_peak(heat: np.ndarray) -> np.ndarray:
  """uint8 [S, S] attention map at the frame's size -> (row, col), as the official code finds it:
  the centroid of the largest external contour (by ``cv2.contourArea``) of its red band. Where
  no contour has any area (one-pixel-wide regions only: the official code fails there) the mean
  of the largest region's pixels; where nothing is red (a flat map) that of its maximum."""
  mask = heat >= contours.JET_RED_LEVEL
  if not mask.any():
    mask = heat >= heat.max()
  peak = contours.largest_contour_centroid(mask)
  if peak is None:
    rows, cols = np.nonzero(_largest_component(mask))
    peak = (int(rows.mean()), int(cols.mean()))
  return np.array(peak, np.int32)
