"""The attention peak's image chain as the official code runs it in OpenCV (core/train.py:52-89),
in numpy: OpenCV is not a dependency of this project (its tests check these functions against
``cv2`` where it is installed).

Official chain: the class activation map, min-max scaled to uint8; ``cv2.resize`` to the frame
(bilinear); ``cv2.applyColorMap(JET)``; ``cv2.cvtColor(BGR2HSV)``; ``cv2.inRange`` hue 0..10,
saturation and value 50..255 ("red"); ``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)``;
the contour of the largest ``cv2.contourArea``; the centroid of its ``cv2.moments``.

* **Red band.** JET's colours are fixed: from level 160 or so up its red channel is 255 and blue
  0, and green falls by 4 a level, G = 4 (223 - level), to 0 at 223 (from there red darkens,
  hue 0). OpenCV's 8-bit hue is then round(30 G / 255), which is <= 10 exactly when G <= 88,
  i.e. **level >= 201** (level 200: G = 92, hue 11); saturation (255) and value (>= 128) always
  pass. So the red mask is ``level >= JET_RED_LEVEL``: 55 of the 256 levels, the top 21.5%.
* **Contours.** ``RETR_EXTERNAL`` keeps the outer border of each 8-connected region that does not
  lie in a hole of another; ``contourArea`` is the shoelace area of that border polygon through
  the pixel centres (a one-pixel-wide line has area 0, a ring counts its hole), and the centroid
  is that polygon's (Green's theorem), not the mean of the region's pixels. The border is traced
  as Suzuki & Abe's border following (OpenCV's algorithm); ``CHAIN_APPROX_SIMPLE`` only drops
  collinear points, which changes neither. Contours are listed as OpenCV lists them (the last
  found first), and the first of the largest wins, as the official ``area > max_area`` loop.
* **Resize.** ``resize_bilinear_uint8`` is bilinear with OpenCV's pixel-centre alignment and edge
  clamping, rounded half up: bit for bit ``cv2.resize(..., interpolation=cv2.INTER_LINEAR_EXACT)``.
  The official call takes the default ``INTER_LINEAR``, whose uint8 fixed-point path differs from
  that by one level at about 12% of the pixels of a 7 x 7 -> 224 x 224 map (OpenCV 5.1; not
  reproduced), which can move the red band's edge by a pixel.
"""

from __future__ import annotations

import numpy as np

JET_RED_LEVEL = 201  # uint8 levels >= this are red after JET + HSV (hue <= 10), see above

# The 8 neighbours (row, col) in clockwise order on the screen (rows grow downwards), from west.
_CLOCKWISE = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
  """Connected regions of a boolean mask -> (int32 labels, 0 outside the mask; their count),
  numbered in raster order of their first pixel."""
  offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if (dy, dx) != (0, 0) and (connectivity == 8 or dy == 0 or dx == 0)]
  labels = np.zeros(mask.shape, np.int32)
  current = 0
  for start in zip(*np.nonzero(mask)):
    if labels[start]:
      continue
    current += 1
    labels[start] = current
    stack = [start]
    while stack:
      y, x = stack.pop()
      for dy, dx in offsets:
        ny, nx = y + dy, x + dx
        if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
          labels[ny, nx] = current
          stack.append((ny, nx))
  return labels, current


def outer_border(mask: np.ndarray, start: tuple[int, int]) -> list[tuple[int, int]]:
  """The outer border of the 8-connected region whose first pixel in raster order is ``start``
  (its west neighbour is background), by Suzuki & Abe's border following -> [(row, col)]."""
  h, w = mask.shape
  on = lambda p: 0 <= p[0] < h and 0 <= p[1] < w and bool(mask[p])
  step = lambda p, k: (p[0] + _CLOCKWISE[k][0], p[1] + _CLOCKWISE[k][1])
  first = next((step(start, k) for k in range(8) if on(step(start, k))), None)  # clockwise from west
  if first is None:  # a single pixel
    return [start]
  points, previous, current = [], first, start
  while True:
    points.append(current)
    back = _CLOCKWISE.index((previous[0] - current[0], previous[1] - current[1]))
    turn = next(k for k in ((back - i) % 8 for i in range(1, 9)) if on(step(current, k)))
    following = step(current, turn)  # counterclockwise from the one after ``previous``
    if following == start and current == first:
      return points
    previous, current = current, following


def external_contours(mask: np.ndarray) -> list[list[tuple[int, int]]]:
  """``cv2.findContours(mask, RETR_EXTERNAL, ...)``: the outer borders of the regions not inside
  another region's hole, in OpenCV's order."""
  mask = np.asarray(mask, bool)
  labels, count = label_components(mask, 8)
  # The background is 4-connected (the dual of 8-connected regions); OpenCV frames the image in
  # background, so the outside is the background region of that frame.
  framed, _ = label_components(np.pad(~mask, 1, constant_values=True), 4)
  outside = (framed == framed[0, 0])[1:-1, 1:-1]
  touches = np.zeros_like(mask)
  touches[1:] |= outside[:-1]
  touches[:-1] |= outside[1:]
  touches[:, 1:] |= outside[:, :-1]
  touches[:, :-1] |= outside[:, 1:]
  contours = []
  for c in range(1, count + 1):
    member = labels == c
    if (member & touches).any():  # its outer border faces the outside, not a hole
      start = tuple(int(v) for v in np.argwhere(member)[0])
      contours.append(outer_border(member, start))
  return contours[::-1]  # OpenCV lists the last found first


def polygon_moments(points) -> tuple[float, float, float]:
  """(m00, m10, m01) of the closed polygon through ``points`` [(row, col)] with x = col, y = row,
  as ``cv2.moments`` computes them for a contour (the same sums, the same doubles): m00 is the
  (unsigned) area, ``cv2.contourArea``; all 0 for a polygon of no area."""
  a00 = a10 = a01 = 0
  for i in range(len(points)):
    (y0, x0), (y1, x1) = points[i - 1], points[i]
    d = x0 * y1 - x1 * y0
    a00 += d
    a10 += d * (x0 + x1)
    a01 += d * (y0 + y1)
  if abs(a00) <= np.finfo(np.float32).eps:
    return 0.0, 0.0, 0.0
  half, sixth = (0.5, 1 / 6) if a00 > 0 else (-0.5, -1 / 6)
  return float(a00) * half, float(a10) * sixth, float(a01) * sixth


def largest_contour_centroid(mask: np.ndarray) -> tuple[int, int] | None:
  """(row, col) as the official code takes it: the contour of the largest area (the first of
  equal ones), ``int(m01 / m00)``, ``int(m10 / m00)``; None where no contour has any area (the
  official code fails there: ``cv2.moments(None)``)."""
  best, best_area = None, 0.0
  for contour in external_contours(mask):
    moments = polygon_moments(contour)
    if moments[0] > best_area:
      best, best_area = moments, moments[0]
  if best is None:
    return None
  m00, m10, m01 = best
  return int(m01 / m00), int(m10 / m00)


def resize_bilinear_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [h, w] -> uint8 [size, size], bilinear, pixel centres aligned (x_src = (x + 0.5) h /
  size - 0.5, clamped to the edge pixels as OpenCV does), rounded half up."""
  def axis(n_in):
    f = (np.arange(size) + 0.5) * (n_in / size) - 0.5
    lo = np.clip(np.floor(f).astype(np.int64), 0, n_in - 1)
    frac = np.clip(f - lo, 0.0, 1.0)
    frac[f < 0] = 0.0
    return lo, np.minimum(lo + 1, n_in - 1), frac
  y0, y1, fy = axis(image.shape[0])
  x0, x1, fx = axis(image.shape[1])
  a = image.astype(np.float64)
  rows = a[:, x0] * (1 - fx) + a[:, x1] * fx
  out = rows[y0] * (1 - fy)[:, None] + rows[y1] * fy[:, None]
  return np.floor(out + 0.5).astype(np.uint8)
