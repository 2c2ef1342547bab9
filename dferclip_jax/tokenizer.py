"""CLIP tokenization through transformers' ``CLIPTokenizer``.

Gives what OpenAI's ``clip.tokenize`` gives: ``<start> tokens <end>`` zero-padded to the context
length (77), as int32, plus the end-of-text position of each row (where the text tower pools).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dferclip_jax import storage

CONTEXT_LENGTH = 77


def load_tokenizer(name_or_path: str | os.PathLike):
  """A CLIPTokenizer from a local directory (vocab.json + merges.txt) or a hub id."""
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  from transformers import CLIPTokenizer

  path = storage.local_folder(name_or_path)  # a bucket folder: a local copy
  if path.is_dir():
    missing = [f for f in ("vocab.json", "merges.txt") if not (path / f).is_file()]
    if missing:
      raise FileNotFoundError(f"{path}: a CLIP tokenizer directory needs {', '.join(missing)}")
    return CLIPTokenizer.from_pretrained(str(path))
  try:
    return CLIPTokenizer.from_pretrained(str(name_or_path))
  except Exception as e:
    raise FileNotFoundError(f"{name_or_path}: no tokenizer there (not a directory with vocab.json and "
                            f"merges.txt, and not loadable from the hub: {type(e).__name__}: {e})") from e


def tokenize(tokenizer, texts: Sequence[str], context_length: int = CONTEXT_LENGTH):
  """texts -> (ids int32 [N, context_length], eot_positions int32 [N]).

  A text longer than the context is an error (as in OpenAI's tokenizer), never silently cut.
  """
  start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
  ids = np.zeros((len(texts), context_length), dtype=np.int32)
  eot = np.zeros((len(texts),), dtype=np.int32)
  for row, text in enumerate(texts):
    tokens = [start] + tokenizer.encode(text, add_special_tokens=False) + [end]
    if len(tokens) > context_length:
      raise ValueError(f"text {row} is {len(tokens)} tokens long, more than the context of "
                       f"{context_length}: {text!r}")
    ids[row, :len(tokens)] = tokens
    eot[row] = len(tokens) - 1
  return ids, eot


class WordTokenizer:
  """A word-level vocabulary built from the given texts, for randomly initialised CLIPs only.

  A CLIP trained from scratch (the CPU demo, tests) has no pretrained vocabulary to honour, and
  the real BPE files cannot be assumed on a machine without network. Ids: 0 pads, words follow in
  sorted order, then start and end of text, so the end token has the largest id (the argmax
  pooling rule of the official code finds it).
  """

  def __init__(self, texts: Sequence[str]):
    words = sorted({w for t in texts for w in self._split(t)})
    self.vocab = {w: i + 1 for i, w in enumerate(words)}
    self.bos_token_id = len(words) + 1
    self.eos_token_id = len(words) + 2
    self.vocab_size = len(words) + 3

  @staticmethod
  def _split(text: str) -> list[str]:
    import re
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    del add_special_tokens  # tokenize() adds them, as for CLIPTokenizer
    unknown = [w for w in self._split(text) if w not in self.vocab]
    if unknown:
      raise ValueError(f"words {unknown} are not in this word vocabulary (built from the class texts)")
    return [self.vocab[w] for w in self._split(text)]
