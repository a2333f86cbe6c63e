"""Generated pictures for the prepare tests: scenes, near-duplicate variants, padding, alpha."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def scene(width: int, height: int, seed: int) -> Image.Image:
    """Coloured shapes on a coloured ground: distinct per seed, structured enough for pHash."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(min(20, width // 4), max(width // 2, 2)))
        y1 = y0 + int(rng.integers(min(20, height // 4), max(height // 2, 2)))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return im


def jpeg(im: Image.Image, quality: int = 60) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def crop_margin(im: Image.Image, fraction: float) -> Image.Image:
    dx, dy = int(im.width * fraction), int(im.height * fraction)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


def padded(im: Image.Image, pad: tuple[int, int, int, int], colour=(255, 255, 255)) -> Image.Image:
    """`im` on a uniform ground with (left, top, right, bottom) padding."""
    l, t, r, b = pad
    out = Image.new("RGB", (im.width + l + r, im.height + t + b), colour)
    out.paste(im, (l, t))
    return out


def rgba_sprite(width: int, height: int) -> Image.Image:
    """A red disc on a fully transparent ground."""
    im = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(255, 0, 0, 255))
    return im
