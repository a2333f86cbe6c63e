"""Sample files for the tests: every accepted format, odd modes, and every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture with structure (not flat, not noise) that differs by seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = ((x + y + int(rng.integers(0, 255))) % 256).astype(np.uint8)
    return Image.fromarray(np.dstack([r, g, b]), "RGB")


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height` (a decompression-bomb shape)."""
    data = io.BytesIO()
    Image.new("1", (1, 1)).save(data, "PNG")
    raw = bytearray(data.getvalue())
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    raw[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(raw[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF
    raw[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(raw)


# name -> expected outputs after convert (name suffixes), for the tests
GOOD = {
    "good/rgb.png": [""],
    "good/rgba.png": [""],
    "good/photo.jpg": [""],
    "good/cmyk.jpg": [""],
    "good/pic.webp": [""],
    "good/pic.bmp": [""],
    "good/pic.avif": [""],
    "good/anim.gif": ["0001", "0002", "0003"],
    "good/palette.png": [""],
    "good/grey16.png": [""],
    "good/la.png": [""],
    "good/rotated.jpg": [""],
    "nested/deeper/img.png": [""],
}
BAD = {
    "bad/empty.png": "empty file",
    "bad/truncated.png": "corrupt or truncated",
    "bad/truncated.jpg": "corrupt or truncated",
    "bad/readme.md": "not an image",
    "bad/random.bin": "not an image",
    "bad/bomb.png": "decompression bomb",
    "bad/scan.tif": "format TIFF not accepted",
}
# Exact duplicates: same bytes (store collapses them) and same pixels (dedupe drops them).
SAME_BYTES = {"dup/rgb_identical.png": "good/rgb.png"}
SAME_PIXELS = {"dup/rgb_as_bmp.bmp": "good/rgb.png"}


def write_sample_folder(root: Path) -> Path:
    def path(rel: str) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    base = gradient(96, 64, seed=1)
    base.save(path("good/rgb.png"))
    (root / "good/rgb.txt").write_text("1girl, solo, red_hair\n", encoding="utf-8")
    rgba = gradient(80, 80, seed=2).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((80, 80)))
    rgba.save(path("good/rgba.png"))
    gradient(120, 90, seed=3).save(path("good/photo.jpg"), quality=90)
    gradient(100, 70, seed=4).convert("CMYK").save(path("good/cmyk.jpg"), quality=90)
    gradient(90, 60, seed=5).save(path("good/pic.webp"), quality=90)
    gradient(50, 40, seed=6).save(path("good/pic.bmp"))
    gradient(64, 64, seed=7).save(path("good/pic.avif"), quality=80)
    frames = [gradient(40, 30, seed=10 + k) for k in range(3)]
    frames[0].save(path("good/anim.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    pal = gradient(60, 60, seed=8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(path("good/palette.png"), transparency=0)
    grey16 = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21)  # mode I;16
    grey16.save(path("good/grey16.png"))
    gradient(70, 50, seed=9).convert("LA").save(path("good/la.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    gradient(60, 40, seed=11).save(path("good/rotated.jpg"), exif=exif, quality=95)
    gradient(66, 44, seed=12).save(path("nested/deeper/img.png"))

    path("dup/rgb_identical.png").write_bytes((root / "good/rgb.png").read_bytes())
    base.save(path("dup/rgb_as_bmp.bmp"))

    path("bad/empty.png").write_bytes(b"")
    png = (root / "good/rgb.png").read_bytes()
    path("bad/truncated.png").write_bytes(png[: len(png) // 2])
    jpg = (root / "good/photo.jpg").read_bytes()
    path("bad/truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    path("bad/readme.md").write_text("# not an image\n", encoding="utf-8")
    path("bad/random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    path("bad/bomb.png").write_bytes(png_with_size(20_000, 10_000))
    gradient(30, 30, seed=13).save(path("bad/scan.tif"))
    return root
