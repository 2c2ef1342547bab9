"""The official PyTorch DFER-CLIP train step, built from a local checkout of its code, for a
side-by-side timing in the same process (``train_step.py --official_dir``).

Nothing of the official code is in this repository. Fetch it yourself into a scratch folder:
github.com/zengqunzhao/DFER-CLIP (``--official_dir``) and github.com/openai/CLIP, the ``clip``
package the official code imports (``--openai_clip_dir``).

The step is the official ``main.py``'s: ``GenerateModel`` around a float32 ViT-B/32 CLIP on the
CPU (what ``clip.load(..., device='cpu')`` gives), the same parts trainable (image encoder,
temporal net, prompt learner), ``CrossEntropyLoss``, SGD with its three param groups, momentum
0.9, weight decay 1e-4, ``model.train()``; the ``"X X ... X <descriptor>"`` prompts with 8
class-specific contexts, as the project's recipe. Weights are random (OpenAI CLIP's own init):
timing does not depend on their values.

Two shims keep the official imports working without extra packages: ``clip/clip.py`` needs
torchvision only for ``load``'s image transforms, so ``clip.clip`` is replaced by a module with
just ``tokenize`` (OpenAI's rule: start token, BPE, end token, zero padding to 77); and ``ftfy``
(used by the BPE tokenizer's text clean-up) becomes the identity where it is not installed, which
changes nothing for the plain-ASCII class texts.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path


def _install_shims(openai_clip_dir: Path):
  if importlib.util.find_spec("ftfy") is None:
    ftfy = types.ModuleType("ftfy")
    ftfy.fix_text = lambda text: text
    sys.modules["ftfy"] = ftfy
  package = types.ModuleType("clip")
  package.__path__ = [str(openai_clip_dir / "clip")]
  sys.modules["clip"] = package
  from clip.simple_tokenizer import SimpleTokenizer  # the real BPE tokenizer and vocabulary
  import torch

  bpe = SimpleTokenizer()

  def tokenize(texts, context_length: int = 77):
    texts = [texts] if isinstance(texts, str) else texts
    out = torch.zeros(len(texts), context_length, dtype=torch.int)
    for i, text in enumerate(texts):
      ids = [bpe.encoder["<|startoftext|>"]] + bpe.encode(text) + [bpe.encoder["<|endoftext|>"]]
      out[i, :len(ids)] = torch.tensor(ids)
    return out

  shim = types.ModuleType("clip.clip")
  shim.tokenize = tokenize
  sys.modules["clip.clip"] = shim
  package.clip = shim


def _check_dirs(official_dir: Path, openai_clip_dir: Path):
  for flag, path, needed in (("--official_dir", official_dir, "models/Generate_Model.py"),
                             ("--openai_clip_dir", openai_clip_dir, "clip/model.py")):
    if not (path / needed).is_file():
      raise SystemExit(f"{flag}={path}: no {needed} there (see benchmarks/official_step.py)")


def make_official_step(official_dir: str, openai_clip_dir: str, num_classes: int = 7):
  """-> step(images float32 [N, T, 3, H, W] in [0, 1], labels int64 [N]) running one official
  training step (forward, loss, backward, SGD update); returns the loss as a float."""
  official_dir, openai_clip_dir = Path(official_dir).resolve(), Path(openai_clip_dir).resolve()
  _check_dirs(official_dir, openai_clip_dir)
  _install_shims(openai_clip_dir)
  sys.path.insert(0, str(official_dir))
  import argparse
  import torch
  from clip.model import CLIP
  from models.Generate_Model import GenerateModel
  from models import Text

  texts = {7: Text.class_descriptor_7, 11: Text.class_descriptor_11}[num_classes]
  # openai/clip-vit-base-patch32: embed 512, image 224, 12 layers of width 768, patch 32,
  # context 77, vocabulary 49408, text width 512 / 8 heads / 12 layers. Float32, as on the CPU.
  clip_model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).float()
  args = argparse.Namespace(contexts_number=8, class_token_position="end", class_specific_contexts="True",
                            load_and_tune_prompt_learner="False", temporal_layers=1)
  model = GenerateModel(input_text=texts, clip_model=clip_model, args=args)
  for name, param in model.named_parameters():  # main.py: only these three parts learn
    param.requires_grad = any(part in name for part in ("image_encoder", "temporal_net", "prompt_learner"))
  optimizer = torch.optim.SGD([{"params": model.temporal_net.parameters(), "lr": 1e-2},
                               {"params": model.image_encoder.parameters(), "lr": 1e-5},
                               {"params": model.prompt_learner.parameters(), "lr": 1e-3}],
                              lr=1e-2, momentum=0.9, weight_decay=1e-4)
  criterion = torch.nn.CrossEntropyLoss()
  model.train()

  def step(images, labels):
    output = model(images)
    loss = criterion(output, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()

  return step
