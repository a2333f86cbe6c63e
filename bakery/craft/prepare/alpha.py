"""Alpha: composite transparent images onto a background colour (rules.md §4).

SD was never trained on alpha: `-background white -alpha remove -alpha off`.
The output is RGB; an image without an alpha channel (or palette transparency)
is left as it is, not re-encoded.
"""

from __future__ import annotations

from PIL import Image, ImageColor


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def remove_alpha(im: Image.Image, background: str = "white") -> Image.Image | None:
    """The image composited onto `background` as RGB, or None when it has no alpha."""
    if not has_alpha(im):
        return None
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, ImageColor.getrgb(background))
    return Image.alpha_composite(base, rgba).convert("RGB")
