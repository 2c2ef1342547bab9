"""The one record type every clip source produces: annotation lists, native layouts, TFDS."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ClipRecord:
  """One video clip: a folder of frame images and its label.

  ``path`` is the resolved frame folder; ``num_frames`` the number of frames used for sampling;
  ``label`` 0-based in the dataset's class order. ``source``/``line`` say where the clip was
  declared (list file and 1-based line number, or a native split file), so that every error
  about a clip can name the place to fix.
  """
  path: str
  num_frames: int
  label: int
  source: str = ""
  line: int = 0

  def where(self) -> str:
    return f"{self.source}:{self.line}" if self.line else (self.source or self.path)
