"""Trim: remove uniform padding like ImageMagick `-fuzz 20% -trim` (rules.md §3).

The background is the top-left corner colour. A pixel matches it when its
colour distance is within `fuzz` of the full range (ImageMagick's fuzz: the
root-mean-square of the channel differences, 0..1). Rows and columns at the
edges whose every pixel matches are cut. A side never ends up below
`min_size` pixels: the kept box grows around the content, inside the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops

from bakery.craft.prepare.alpha import has_alpha

Box = tuple[int, int, int, int]  # left, top, right, bottom

# `content_box` compares through rounded lookup tables, `edge_spread` exactly: a spread past the
# fuzz by this factor is past it in both (the tables' rounding is < 1 % of the limit).
SPREAD_MARGIN = 1.01


def content_box(im: Image.Image, fuzz: float = 0.2, min_size: int = 64) -> Box:
    """The box to keep; the full image when there is nothing to trim."""
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    w, h = rgb.size
    corner = rgb.getpixel((0, 0))
    # Most pictures fill the frame: when every edge row and column holds a pixel off the corner
    # colour there is nothing to trim, and the border alone (a few thousand pixels) says so.
    if leaves_alone(_rgb_edge_spread(rgb), fuzz):
        return (0, 0, w, h)
    box = _off_corner(rgb, corner, fuzz).getbbox()
    if box is None:  # uniform picture: nothing to keep apart from the rest
        return (0, 0, w, h)
    left, top, right, bottom = box
    left, right = _grow(left, right, min(min_size, w), w)
    top, bottom = _grow(top, bottom, min(min_size, h), h)
    return (left, top, right, bottom)


def edge_spread(im: Image.Image) -> float | None:
    """How far the most uniform edge of a picture strays from its top-left corner colour.

    For each edge row and column, the largest distance of its pixels from the corner
    (ImageMagick's fuzz metric: RMS of the channel differences, 0..1); the smallest of
    the four. Trim at `fuzz` leaves the picture alone when this is past `fuzz`. Worked
    out wherever the pixels are decoded anyway (convert, the dedupe hash) and kept in
    the catalog, so trim need not decode such pictures again. None with transparency:
    the alpha stage changes those pictures first.
    """
    if has_alpha(im):
        return None
    return _rgb_edge_spread(im if im.mode == "RGB" else im.convert("RGB"))


def _rgb_edge_spread(rgb: Image.Image) -> float:
    w, h = rgb.size
    corner = np.asarray(rgb.crop((0, 0, 1, 1)), dtype=np.int32)[0, 0]
    spreads = []
    for edge in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h)):
        diff = np.asarray(rgb.crop(edge), dtype=np.int32).reshape(-1, 3) - corner
        spreads.append(float(np.sqrt((diff * diff).sum(axis=1).max() / 3.0)) / 255.0)
    return min(spreads)


def leaves_alone(spread: float | None, fuzz: float) -> bool:
    """True when a picture with this `edge_spread` has nothing to trim at `fuzz` (None: not known)."""
    return spread is not None and spread > fuzz * SPREAD_MARGIN


def _off_corner(rgb: Image.Image, corner: tuple[int, ...], fuzz: float) -> Image.Image:
    """255 where a pixel is further than `fuzz` from the corner colour, else 0.

    All in Pillow's C code: |pixel - corner| per channel, each squared through a
    lookup table scaled so that the fuzz limit lands near 200 of 255 (values past
    the table's range saturate, and are over the limit anyway), summed with
    saturation and thresholded.
    """
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, corner))
    limit = 3 * (fuzz * 255.0) ** 2  # on the sum of squared channel differences
    scale = 200.0 / limit if limit else 1.0
    threshold = limit * scale  # 200, or 0 for fuzz 0
    square = [min(255, round(v * v * scale)) for v in range(256)]
    r, g, b = (band.point(square) for band in diff.split())
    total = ImageChops.add(ImageChops.add(r, g), b)
    return total.point([255 if v > threshold else 0 for v in range(256)])


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
