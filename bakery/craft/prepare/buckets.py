"""kohya's aspect-ratio bucketing, exactly (sd-scripts library/model_util.py + train_util.BucketManager).

Where the guide and kohya differ we follow kohya (rules.md §7): at 512 px, sides
256-1024, step 64 there are 17 bucket resolutions; an image goes to the bucket
with the nearest aspect ratio, is scaled to COVER it (rounding half up) and is
centre-cropped to it (1920x1080 -> 683x384 -> 640x384). With `no_upscale`, an
image is never enlarged: one larger than the max area is shrunk to it keeping
its aspect ratio, and its bucket is its (resized) size rounded DOWN to the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

Size = tuple[int, int]  # (width, height)


def bucket_resolutions(resolution: int, min_side: int = 256, max_side: int = 1024, step: int = 64) -> list[Size]:
    """kohya `make_bucket_resolutions((res, res), min_size, max_size, divisible)`, sorted."""
    max_area = resolution * resolution
    side = int(math.sqrt(max_area) // step) * step
    resos = {(side, side)}
    width = min_side
    while width <= max_side:
        height = min(max_side, int((max_area // width) // step) * step)
        if height >= min_side:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


def _round_to_step(x: float, step: int) -> int:
    x = int(x + 0.5)
    return x - x % step


@dataclass(frozen=True)
class BucketChoice:
    bucket: Size  # what the image is cropped to
    resized: Size  # what it is scaled to first (covers the bucket)

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """Centre crop of the resized image to the bucket (left, top, right, bottom)."""
        (rw, rh), (bw, bh) = self.resized, self.bucket
        left, top = (rw - bw) // 2 if rw > bw else 0, (rh - bh) // 2 if rh > bh else 0
        return left, top, left + min(bw, rw), top + min(bh, rh)


def select_bucket(
    width: int, height: int, resos: list[Size], *, no_upscale: bool = False, resolution: int | None = None, step: int = 64
) -> BucketChoice:
    """kohya `BucketManager.select_bucket` for one image of `width` x `height`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    if not no_upscale:
        if (width, height) in resos:
            bucket = (width, height)
        else:
            bucket = min(resos, key=lambda r: abs(r[0] / r[1] - aspect))
        # Wider than the bucket: match heights; otherwise match widths (cover, then crop).
        scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
        return BucketChoice(bucket, (int(width * scale + 0.5), int(height * scale + 0.5)))

    if resolution is None:
        raise ValueError("no_upscale bucketing needs the training resolution")
    max_area = resolution * resolution
    if width * height > max_area:
        resized_w = math.sqrt(max_area * aspect)
        resized_h = max_area / resized_w
        # Round the side that keeps the aspect ratio closest (kohya's rule).
        w_rounded = _round_to_step(resized_w, step)
        h_in_w = _round_to_step(w_rounded / aspect, step)
        h_rounded = _round_to_step(resized_h, step)
        w_in_h = _round_to_step(h_rounded * aspect, step)
        if h_in_w and abs(w_rounded / h_in_w - aspect) < abs(w_in_h / h_rounded - aspect):
            resized = (w_rounded, int(w_rounded / aspect + 0.5))
        else:
            resized = (int(h_rounded * aspect + 0.5), h_rounded)
    else:
        resized = (width, height)
    bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    if bucket[0] == 0 or bucket[1] == 0:
        raise ValueError(f"image {width}x{height} is smaller than one bucket step ({step} px)")
    return BucketChoice(bucket, resized)


def downscale_factor(width: int, height: int, choice: BucketChoice) -> float:
    """How much an image shrinks to fit its bucket (>1 = detail lost; full-body shots suffer)."""
    return width / choice.resized[0]


def fit_to_bucket(image: "Image.Image", choice: BucketChoice) -> "Image.Image":
    """Resize then centre-crop an image to its bucket, as kohya does at training time.

    kohya shrinks with OpenCV's INTER_AREA (Pillow: BOX, an area average) and
    enlarges with Lanczos.
    """
    return fit_to_box(image, choice, choice.crop_box)


def _keep_span(start: float, end: float, length: int, window: int, centre: int) -> int:
    """Where a window of `window` px starts along a side of `length` px: `centre` moved as little as
    possible so that [start, end] lies inside it; a span longer than the window is centred on."""
    if end - start > window:
        first = round((start + end) / 2 - window / 2)
    elif start < centre:
        first = math.floor(start)
    elif end > centre + window:
        first = math.ceil(end) - window
    else:
        first = centre
    return min(max(first, 0), max(length - window, 0))


def keep_crop_box(choice: BucketChoice, keep: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """kohya's centre crop shifted minimally so that `keep` (x0, y0, x1, y1 as fractions of the picture)
    stays inside it; a keep box larger than the crop is centred on. Same size as the centre crop."""
    (rw, rh) = choice.resized
    left, top, right, bottom = choice.crop_box
    x = _keep_span(keep[0] * rw, keep[2] * rw, rw, right - left, left)
    y = _keep_span(keep[1] * rh, keep[3] * rh, rh, bottom - top, top)
    return x, y, x + right - left, y + bottom - top


def fit_to_box(image: "Image.Image", choice: BucketChoice, box: tuple[int, int, int, int]) -> "Image.Image":
    """Like fit_to_bucket, with the crop at `box` (e.g. keep_crop_box's) instead of kohya's centre."""
    from PIL import Image

    if image.size != choice.resized:
        shrinking = image.width > choice.resized[0] and image.height > choice.resized[1]
        image = image.resize(choice.resized, Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
    return image.crop(box) if image.size != (box[2] - box[0], box[3] - box[1]) else image
