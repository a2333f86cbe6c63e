"""Convert: every image becomes an 8-bit RGB or RGBA PNG (rules.md §3).

RGBA is kept so the alpha stage can composite it onto a background; EXIF
orientation is applied; colour profiles are converted to sRGB; GIF/WebP/APNG
animations become one PNG per frame (`name0001.png`, ...) as a browser shows
them; 16-bit, palette, CMYK and other modes are normalised.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageCms, ImageOps

from bakery.craft.gather import animation

ORIENTATION_TAG = 0x0112
_SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class ConvertedFrame:
    png: bytes | None  # None: the input is already a normalised picture (`kept_as_is`) and is kept byte for byte
    pixel_hash: str
    width: int
    height: int
    mode: str
    suffix: str  # appended to the input's name: "" or "0001", "0002", ... for frames
    facts: dict[str, Any] | None = None  # what `facts(frame)` found while the pixels were decoded


# Bytes of packed pixels hashed at a time: Pillow's own block size. 1 MiB blocks were no quicker
# and raised a worker's peak RSS from 144 to 190 MB over 300 pictures (malloc keeps them).
_PIXEL_BLOCK = 1 << 16


def pixel_hash(im: Image.Image) -> str:
    """sha256 of the decoded pixels (`im.tobytes()`): equal for the same picture in different files.

    The pixels are packed and hashed a block at a time, as `tobytes()` packs them, so no
    second full copy of the picture is made (nor joined): that copy cost as much as the hash.
    """
    h = hashlib.sha256(f"{im.mode}:{im.width}x{im.height}:".encode())
    for block in _packed_blocks(im):
        h.update(block)
    return h.hexdigest()


def _packed_blocks(im: Image.Image) -> Iterator[bytes]:
    """`im.tobytes()` in pieces: Pillow's raw encoder, as `tobytes()` drives it, without the join."""
    im.load()
    if not (im.width and im.height):
        return
    encoder = Image._getencoder(im.mode, "raw", im.mode)
    try:
        encoder.setimage(im.im, (0, 0, *im.size))
        status = 0
        while not status:
            _, status, data = encoder.encode(max(_PIXEL_BLOCK, im.width * 4))  # at least a line (RawEncode.c)
            yield data
        if status < 0:
            raise RuntimeError(f"encoder error {status} while packing pixels")
    finally:
        encoder.cleanup()


_16BIT_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _to_8bit_grey(im: Image.Image) -> Image.Image:
    """16-bit (or float) grey as 8-bit L, or LA when a grey value is marked transparent (tRNS)."""
    arr = np.asarray(im)
    if im.mode == "F":
        top = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if top <= 1.0 else 255.0 / top
        out = np.clip(arr * scale, 0, 255).round()
    else:  # I;16* or I (Pillow loads 16-bit PNG greyscale as I): 0..65535 -> 0..255, rounded
        out = (np.clip(arr.astype(np.int64), 0, 65535) * 255 + 32767) // 65535
    grey = Image.fromarray(out.astype(np.uint8), "L")
    if isinstance(key := im.info.get("transparency"), int):
        grey.putalpha(Image.fromarray(np.where(arr == key, 0, 255).astype(np.uint8), "L"))
    return grey


def _decoded_colours(im: Image.Image) -> Image.Image:
    """L, LA, RGB, RGBA or CMYK: 8 bits, palette looked up, a transparency key as an alpha channel."""
    if im.mode in _16BIT_GREY:
        return _to_8bit_grey(im)
    keyed = "transparency" in im.info
    if im.mode in ("L", "LA", "RGB", "RGBA", "CMYK") and not keyed:
        return im
    if im.mode in ("1", "L"):
        return im.convert("LA" if keyed else "L")
    return im.convert("RGBA" if keyed or im.mode in ("La", "RGBa", "PA") else "RGB")


def _profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    """The embedded profile when it needs converting; None for none, sRGB, or one lcms cannot read."""
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return None if "sRGB" in (ImageCms.getProfileDescription(profile) or "") else profile
    except (ImageCms.PyCMSError, OSError):
        return None


def _to_srgb(im: Image.Image, profile: ImageCms.ImageCmsProfile) -> Image.Image | None:
    """L, LA, RGB, RGBA or CMYK pixels converted by their profile into sRGB (alpha kept as it is).

    None when lcms cannot use the profile (broken, or for another colour space).
    """
    alpha = im.getchannel("A") if im.mode in ("LA", "RGBA") else None
    colour = im.convert("L" if im.mode == "LA" else "RGB") if alpha is not None else im
    try:
        out = ImageCms.profileToProfile(colour, profile, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
    if alpha is not None:
        out.putalpha(alpha)
    return out


def normalise(im: Image.Image) -> Image.Image:
    """One frame in any Pillow mode -> a new RGB image, or RGBA when it has transparency.

    Embedded colour profiles are converted to sRGB: SD was trained on sRGB images. One
    that cannot be used is ignored (plain conversion). The result carries no metadata,
    so no stale profile or transparency key reaches the PNG.
    """
    profile = _profile(im.info.get("icc_profile"))
    im = _decoded_colours(im)
    out = _to_srgb(im, profile) if profile is not None else None
    if out is None:
        out = im.convert("RGBA" if im.mode in ("LA", "RGBA") else "RGB")
    out.info.clear()
    return out


# Formats kohya sd-scripts lists in IMAGE_EXTENSIONS (.png .jpg .jpeg .webp .bmp) and our bake reads
# (Pillow): a picture in one of them that needs no pixel change is trained on as it is.
TRAINABLE_AS_IS = ("PNG", "JPEG", "WEBP", "BMP")


def kept_as_is(im: Image.Image, data: bytes | None = None) -> bool:
    """Is this file already the picture convert would make (8-bit RGB/RGBA, upright, no colour profile
    or transparency key, one frame) in a trainable format? Then it is kept byte for byte: no encode,
    and for JPEG/WebP no generation loss. `data`: the file's bytes, so that a PNG is judged from its
    header (Pillow decodes a PNG's pixels to look for an eXIf chunk after them)."""
    return (
        im.format in TRAINABLE_AS_IS
        and im.mode in ("RGB", "RGBA")
        and getattr(im, "n_frames", 1) == 1
        and "icc_profile" not in im.info
        and "transparency" not in im.info
        and _orientation(im, data) in (None, 1)
    )


def _orientation(im: Image.Image, data: bytes | None) -> int | None:
    if im.format == "PNG" and data is not None and "exif" not in im.info and b"eXIf" not in data:
        return 1  # no EXIF at all: nothing to decode for
    return im.getexif().get(ORIENTATION_TAG, 1)


def png_bytes(im: Image.Image, compress_level: int) -> bytes:
    """`im` as PNG for the store.

    Levels 1-3 use zlib's RLE strategy: measured on flat-colour art and on grainy
    pictures, it encodes as fast as the default strategy at level 1 or faster, makes
    smaller files (10 vs 18 KB flat, 1.0 vs 1.2 MB grainy) that decode ~20 % faster.
    """
    buf = io.BytesIO()
    strategy = zlib.Z_RLE if 1 <= compress_level <= 3 else -1  # -1: zlib's default
    im.save(buf, "PNG", compress_level=compress_level, compress_type=strategy)
    return buf.getvalue()


def _upright(im: Image.Image) -> Image.Image:
    """A single picture as it is meant to be seen: EXIF orientation applied, CMYK polarity fixed."""
    frame = ImageOps.exif_transpose(im)
    if im.format in ("JPEG", "MPO") and im.mode == "CMYK" and "adobe" not in im.info:
        # Pillow reads every CMYK JPEG as Adobe's inverted CMYK; only an Adobe (APP14) marker says it is.
        frame = ImageChops.invert(frame)
    return frame


def _each_frame(im: Image.Image) -> Iterator[Image.Image]:
    for index in range(im.n_frames):
        im.seek(index)
        yield im.copy()


def _with_profile(frames: Iterator[Image.Image], icc: bytes | None) -> Iterator[Image.Image]:
    """Composited frames carry the file's colour profile, as the frames Pillow gives do."""
    for frame in frames:
        if icc:
            frame.info["icc_profile"] = icc
        yield frame


def pictures(im: Image.Image, data: bytes) -> tuple[int, Iterator[Image.Image]]:
    """How many pictures the file holds, and each as a viewer shows it.

    GIF and APNG frames are composited as browsers do (animation.py); an MPO (a phone's
    JPEG with a preview or gain map after it) is its first picture; other multi-frame
    files (animated WebP: libwebp composites) give Pillow's frames.
    """
    if im.format == "GIF":
        size, patches = animation.gif_patches(data)
        return len(patches), animation.composite(size, patches)
    if im.format == "PNG" and getattr(im, "is_animated", False):
        size, patches = animation.apng_patches(data)
        return len(patches), _with_profile(animation.composite(size, patches), im.info.get("icc_profile"))
    if im.format == "MPO" or getattr(im, "n_frames", 1) == 1:
        return 1, iter([_upright(im)])
    return im.n_frames, _each_frame(im)


def convert_image(
    data: bytes, compress_level: int, facts: Callable[[Image.Image], dict[str, Any] | None] | None = None,
    known_pixel_hash: str | None = None,
) -> list[ConvertedFrame]:
    """All pictures of an (already validated) image, normalised and PNG-encoded, or the file itself
    when it is `kept_as_is`.

    `facts(frame)`: anything later stages want to know of each output's pixels, worked
    out here while they are decoded anyway. `known_pixel_hash`: the file's pixels were
    hashed when ingest decoded them; a file kept as it is is then not decoded again
    (and its facts were recorded then).
    """
    with Image.open(io.BytesIO(data)) as im:
        if kept_as_is(im, data):
            if known_pixel_hash:
                return [ConvertedFrame(None, known_pixel_hash, im.width, im.height, im.mode, "")]
            im.load()
            return [ConvertedFrame(None, pixel_hash(im), im.width, im.height, im.mode, "", facts and facts(im))]
        n_frames, each = pictures(im, data)
        out = []
        for index, picture in enumerate(each):
            frame = normalise(picture)
            suffix = f"{index + 1:04d}" if n_frames > 1 else ""
            out.append(ConvertedFrame(png_bytes(frame, compress_level), pixel_hash(frame), frame.width, frame.height,
                                      frame.mode, suffix, facts and facts(frame)))
        return out
