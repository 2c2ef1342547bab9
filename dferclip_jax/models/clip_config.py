"""CLIP architecture hyperparameters, read from and written to Hugging Face's config.json.

Defaults are Hugging Face's ``CLIPTextConfig`` / ``CLIPVisionConfig`` defaults, so a
config.json that leaves a key out means what it means to ``transformers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Union

SUPPORTED_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"

  @property
  def num_positions(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1


TowerConfig = Union[CLIPTextConfig, CLIPVisionConfig]


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text_config: CLIPTextConfig = CLIPTextConfig()
  vision_config: CLIPVisionConfig = CLIPVisionConfig()
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  def __post_init__(self):
    for name, tower in (("text_config", self.text_config), ("vision_config", self.vision_config)):
      if tower.hidden_size % tower.num_attention_heads:
        raise ValueError(f"{name}.hidden_size={tower.hidden_size} is not divisible by "
                         f"num_attention_heads={tower.num_attention_heads}")
      if tower.hidden_act not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"{name}.hidden_act={tower.hidden_act!r} is not one of {SUPPORTED_ACTIVATIONS}")
    v = self.vision_config
    if v.image_size % v.patch_size:
      raise ValueError(f"vision_config.image_size={v.image_size} is not a multiple of patch_size={v.patch_size}")

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> "CLIPConfig":
    """Parses a Hugging Face CLIPConfig dict; unknown keys are ignored, wrong types are errors."""
    if d.get("model_type") not in (None, "clip"):
      raise ValueError(f"{source}: model_type is {d.get('model_type')!r}, expected 'clip'")

    def tower(cls_, sub):
      raw = d.get(sub) or {}
      kwargs = {}
      for f in dataclasses.fields(cls_):
        if f.name in raw and raw[f.name] is not None:
          value = raw[f.name]
          expected = type(f.default)
          if expected is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"{source}: {sub}.{f.name} must be an integer, got {value!r}")
          if expected is str and not isinstance(value, str):
            raise ValueError(f"{source}: {sub}.{f.name} must be a string, got {value!r}")
          kwargs[f.name] = value
      return cls_(**kwargs)

    text = tower(CLIPTextConfig, "text_config")
    vision = tower(CLIPVisionConfig, "vision_config")
    return cls(text_config=text, vision_config=vision,
               projection_dim=int(d.get("projection_dim", 512)),
               logit_scale_init_value=float(d.get("logit_scale_init_value", 2.6592)))

  def to_hf_dict(self) -> dict[str, Any]:
    """The config.json that transformers' CLIPConfig reads back to this architecture."""
    return {
        "model_type": "clip",
        "architectures": ["CLIPModel"],
        "projection_dim": self.projection_dim,
        "logit_scale_init_value": self.logit_scale_init_value,
        "text_config": dataclasses.asdict(self.text_config),
        "vision_config": dataclasses.asdict(self.vision_config),
    }


def vit_b32() -> CLIPConfig:
  """openai/clip-vit-base-patch32, the DFER-CLIP backbone."""
  return CLIPConfig(text_config=CLIPTextConfig(eos_token_id=2),
                    vision_config=CLIPVisionConfig(patch_size=32))


def vit_b16() -> CLIPConfig:
  return CLIPConfig(text_config=CLIPTextConfig(eos_token_id=2),
                    vision_config=CLIPVisionConfig(patch_size=16))


def vit_l14(image_size: int = 224) -> CLIPConfig:
  return CLIPConfig(
      text_config=CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                 eos_token_id=2),
      vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                     num_attention_heads=16, image_size=image_size, patch_size=14),
      projection_dim=768)


def tiny(image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2,
         projection_dim: int = 32, vocab_size: int = 49408) -> CLIPConfig:
  """A small CLIP for tests and the CPU demo (random init)."""
  heads = max(1, width // 16)
  return CLIPConfig(
      text_config=CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                                 num_hidden_layers=layers, num_attention_heads=heads, eos_token_id=2),
      vision_config=CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width,
                                     num_hidden_layers=layers, num_attention_heads=heads,
                                     image_size=image_size, patch_size=patch_size),
      projection_dim=projection_dim)

