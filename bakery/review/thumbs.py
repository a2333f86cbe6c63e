"""Thumbnails of stored images, made once and kept: WORKDIR/review/thumbs/ab/<sha256>-<size>.<ext>.

Content-addressed by the image's hash and the size, so a thumbnail never goes
stale (a changed picture is another hash). Masks keep their greyscale as PNG;
pictures become JPEG on white (transparency composited as training sees it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from bakery.review.views import HASH
from storage import STORE_DIR, ContentStore

SIZES = (256, 768)  # the dataset grid, the picture page
THUMBS_DIR = "review/thumbs"


def thumb_path(workdir: Path, sha256: str, size: int, mask: bool = False) -> Path:
    return workdir / THUMBS_DIR / sha256[:2] / f"{sha256}-{size}.{'png' if mask else 'jpg'}"


def thumbnail(workdir: Path, sha256: str, size: int, mask: bool = False) -> Path:
    """The thumbnail's path, made first when missing. ValueError for a bad hash or size; FileNotFoundError when
    the store does not hold the image."""
    from PIL import Image

    if not HASH.match(sha256) or size not in SIZES:
        raise ValueError("a thumbnail needs a 64-digit sha256 and a size of " + " or ".join(map(str, SIZES)))
    dest = thumb_path(workdir, sha256, size, mask)
    if dest.is_file():
        return dest
    source = ContentStore(workdir / STORE_DIR).path(sha256)
    if not source.is_file():
        raise FileNotFoundError(f"no image {sha256[:12]} in the store")
    with Image.open(source) as im:
        im.draft("RGB", (size, size))
        im = _flatten(im, mask)
        im.thumbnail((size, size), Image.Resampling.BILINEAR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            im.save(out, "PNG" if mask else "JPEG", quality=85)
    os.replace(tmp, dest)
    return dest


def _flatten(im, mask: bool):
    from PIL import Image

    if mask:
        return im.convert("L")
    if im.mode in ("RGBA", "LA", "P"):
        rgba = im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return im.convert("RGB")


def make_thumbnails(workdir: Path, hashes: Iterable[str], size: int = SIZES[0], masks: Iterable[str] = ()) -> int:
    """Make the missing thumbnails of these pictures (and masks); returns how many exist now."""
    done = 0
    for h in hashes:
        thumbnail(workdir, h, size)
        done += 1
    for h in masks:
        thumbnail(workdir, h, size, mask=True)
        done += 1
    return done
