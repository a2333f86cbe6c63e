"""Trim: remove uniform padding like ImageMagick `-fuzz 20% -trim` (rules.md §3).

The background is the top-left corner colour. A pixel matches it when its
colour distance is within `fuzz` of the full range (ImageMagick's fuzz: the
root-mean-square of the channel differences, 0..1). Rows and columns at the
edges whose every pixel matches are cut. A side never ends up below
`min_size` pixels: the kept box grows around the content, inside the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom


def content_box(im: Image.Image, fuzz: float = 0.2, min_size: int = 64) -> Box:
    """The box to keep; the full image when there is nothing to trim."""
    from PIL import ImageChops

    rgb = im.convert("RGB")
    w, h = rgb.size
    corner = rgb.getpixel((0, 0))
    # |pixel - corner| per channel in C, then the mean of squares in integers
    diff = np.asarray(ImageChops.difference(rgb, Image.new("RGB", rgb.size, corner)), dtype=np.uint16)
    dist2 = (diff * diff).sum(axis=2, dtype=np.uint32)  # 3 x mean square
    differs = dist2 > int(3 * (fuzz * 255.0) ** 2)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if not len(rows):  # uniform picture: nothing to keep apart from the rest
        return (0, 0, w, h)
    left, right, top, bottom = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    left, right = _grow(left, right, min(min_size, w), w)
    top, bottom = _grow(top, bottom, min(min_size, h), h)
    return (left, top, right, bottom)


def _grow(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) around its centre to at least `size`, staying in [0, limit)."""
    missing = size - (hi - lo)
    if missing <= 0:
        return lo, hi
    lo = max(0, lo - missing // 2)
    hi = lo + size
    if hi > limit:
        hi, lo = limit, limit - size
    return lo, hi


def trim(im: Image.Image, fuzz: float = 0.2, min_size: int = 64) -> Image.Image | None:
    """The trimmed image, or None when there is no padding to remove."""
    box = content_box(im, fuzz, min_size)
    if box == (0, 0, im.width, im.height):
        return None
    return im.crop(box)
