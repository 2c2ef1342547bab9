"""Zero-shot CLIP for video: the baseline with no training at all.

Each frame is CLIP-normalised and encoded; the L2-normalised frame features are averaged over
time; each class is the text feature of its prompt (class name, "an expression of ...", or the
descriptor, through an optional template). Logits are cosine similarities x 100, as DFER-CLIP's.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from dferclip_jax.models.clip import CLIP, normalize_pixels
from dferclip_jax.models.clip_config import CLIPConfig
from dferclip_jax.models.dferclip import LOGIT_SCALE, l2_normalize
from dferclip_jax.tokenizer import tokenize


class ZeroShotCLIP(nn.Module):
  clip_config: CLIPConfig
  num_classes: int
  num_frames: int = 16
  context_length: int = 77
  dtype: Any = jnp.float32

  def setup(self):
    self.clip = CLIP(self.clip_config, dtype=self.dtype)
    self.prompt_ids = self.variable("prompts", "ids", jnp.zeros,
                                    (self.num_classes, self.context_length), jnp.int32)

  def encode_prompts(self):
    """The classes' L2-normalised text features [C, D]."""
    return l2_normalize(self.clip.encode_text(self.prompt_ids.value))

  def __call__(self, video, *, train: bool = False, return_features: bool = False,
               text_features=None):
    """``text_features``: ``encode_prompts()``'s output where the caller already has it."""
    del train
    if video.dtype == jnp.uint8:
      video = video.astype(jnp.float32) / 255.0
    n, t = video.shape[:2]
    frames = normalize_pixels(video.reshape((n * t,) + video.shape[2:]).astype(jnp.float32))
    frame_features = l2_normalize(self.clip.encode_image(frames)).reshape(n, t, -1)
    video_features = l2_normalize(frame_features.mean(axis=1))
    if text_features is None:
      text_features = self.encode_prompts()
    logits = LOGIT_SCALE * video_features @ text_features.T
    if return_features:
      return {"logits": logits, "video_features": video_features, "text_features": text_features,
              "frame_features": frame_features}
    return logits


def build_zeroshot(clip_config: CLIPConfig, clip_params, texts: Sequence[str], tokenizer,
                   template: str = "{}", num_frames: int = 16, dtype=jnp.float32):
  """-> (model, variables) for prompts ``template.format(text)``."""
  if "{}" not in template:
    raise ValueError(f"zero-shot template {template!r} has no '{{}}' for the class text")
  prompts = [template.format(text) for text in texts]
  ids, _ = tokenize(tokenizer, prompts, clip_config.text_config.max_position_embeddings)
  model = ZeroShotCLIP(clip_config, len(texts), num_frames, ids.shape[1], dtype)
  return model, {"params": {"clip": clip_params}, "prompts": {"ids": np.asarray(ids)}}
