"""Expressions over time: the model's window slid over a whole video (``--mode=predict
--timeline=true``).

Windows of ``window_s`` seconds every ``stride_s`` seconds; inside each, frames are sampled as
evaluation samples a clip (``sampling.test_indices`` over the window's frames). A video shorter
than one window is one window; a tail that the last stride leaves out gets a window ending at the
last frame. Frames are read once, in order (``video_stream``), resized to the model's input as
they arrive, and dropped once no open window needs them.

Defaults: a 3 s window, the typical length of a DFEW training clip (2-5 s), so a window holds
about as much motion as the clips the model learned from; a 1 s stride.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from dferclip_jax import storage

DEFAULT_WINDOW_S = 3.0
DEFAULT_STRIDE_S = 1.0
DEFAULT_FRAMES_FPS = 30.0  # frame folders carry no rate: DFEW's and FERV39k's videos run at 25-30


@dataclasses.dataclass(frozen=True)
class Window:
  start: int  # first frame
  end: int    # one past the last frame


def make_windows(num_frames: int, fps: float, window_s: float, stride_s: float) -> list[Window]:
  if not (window_s > 0 and stride_s > 0 and fps > 0):
    raise ValueError(f"window_s={window_s}, stride_s={stride_s}, fps={fps}: all must be > 0")
  size = max(1, round(window_s * fps))
  stride = max(1, round(stride_s * fps))
  if num_frames <= size:
    return [Window(0, num_frames)]
  starts = list(range(0, num_frames - size + 1, stride))
  if starts[-1] + size < num_frames:  # the tail gets a window too
    starts.append(num_frames - size)
  return [Window(a, a + size) for a in starts]


def window_indices(window: Window, num_frames: int, num_clips: int = 1) -> np.ndarray:
  """The frames evaluation would sample from the window's frames: int [num_clips, num_frames]."""
  from dferclip_jax.data import sampling
  local = sampling.test_indices(window.end - window.start, num_segments=num_frames,
                                num_clips=num_clips).numpy()
  return window.start + local.astype(np.int64)


def window_clips(frames: Iterable[tuple[int, np.ndarray]], indices: Sequence[np.ndarray],
                 resize: Callable[[int, np.ndarray], np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
  """(window number, clip [K, T, S, S, 3]) in window order, from ``frames`` ((index, frame) in
  increasing index order, at least every index ``indices`` names). A frame is resized
  (``resize(index, frame)``: a face crop may depend on the index) when it arrives and kept only
  until the last window that samples it is out."""
  last_user: dict[int, int] = {}
  for w, idx in enumerate(indices):
    for f in np.unique(idx):
      last_user[int(f)] = w
  complete_at = [int(np.max(idx)) for idx in indices]  # windows start in order, so this grows
  kept: dict[int, np.ndarray] = {}
  next_window = 0
  for index, frame in frames:
    if index in last_user:
      kept[index] = resize(index, frame)
    while next_window < len(indices) and complete_at[next_window] <= index:
      idx = indices[next_window]
      yield next_window, np.stack([np.stack([kept[int(f)] for f in row]) for row in idx])
      for f in np.unique(idx):
        if last_user[int(f)] == next_window:
          del kept[int(f)]
      next_window += 1
    if next_window == len(indices):
      return
  if next_window < len(indices):
    raise ValueError(f"the frames ended before window {next_window} (frame {complete_at[next_window]})")


# ---------------------------------------------------------------------------- outputs


def slug(path: str) -> str:
  name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.strip("/")).strip("_")
  return name[-120:] or "input"


def write_csv(target, rows: Sequence[dict], class_names: Sequence[str]) -> None:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["start_s", "end_s", "label", *class_names])
  for r in rows:
    writer.writerow([f"{r['start_s']:.3f}", f"{r['end_s']:.3f}", r["label"],
                     *(f"{r['probs'][n]:.6f}" for n in class_names)])
  storage.write_text_atomic(target, buffer.getvalue())


def save_plot(target, rows: Sequence[dict], class_names: Sequence[str], title: str) -> None:
  """The plot of ``plot_png`` at ``target`` (local or in a bucket)."""
  storage.write_bytes_atomic(target, plot_png(rows, class_names, title))


def plot_png(rows: Sequence[dict], class_names: Sequence[str], title: str) -> bytes:
  """Each class's probability over time (at the windows' centres), the top class shaded: PNG bytes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  centres = np.array([(r["start_s"] + r["end_s"]) / 2 for r in rows])
  probs = np.array([[r["probs"][n] for n in class_names] for r in rows])
  colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
  fig, ax = plt.subplots(figsize=(10, 4))
  half = (np.diff(centres).min() / 2) if len(centres) > 1 else (rows[0]["end_s"] - rows[0]["start_s"]) / 2
  for centre, row in zip(centres, probs):
    ax.axvspan(centre - half, centre + half, color=colours(int(row.argmax())), alpha=0.15, lw=0)
  for k, name in enumerate(class_names):
    ax.plot(centres, probs[:, k], color=colours(k), label=name, marker="." if len(rows) < 40 else None)
  ax.set_xlabel("time (s)")
  ax.set_ylabel("probability")
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  return buffer.getvalue()
