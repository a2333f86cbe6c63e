"""Ingest: find the user's images, check they decode, describe them.

Pure functions (no Prefect, no catalog): the ingest task wires them to storage.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError, features

from bakery.craft.names import Wanted

# Caption files that may sit beside an image (Grabber, kohya, booru downloads).
SIDECAR_SUFFIXES = (".txt", ".caption")

# Pillow format names, keyed by what users write in the recipe.
FORMAT_ALIASES = {"JPG": "JPEG", "MPO": "JPEG"}


class SkipImage(Exception):
    """This file is not used; the message is the reason shown to the user."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute path of the user's file (only ever read)
    name: str  # path relative to the source folder, posix, without extension
    sha256: str
    md5: str
    size: int
    source_kind: str
    sidecar: str | None  # raw text of a caption file beside the image
    # "folder", or the scrape stage's site kind: then `path` is the stored download and
    # `location` the post URL; the scrape stage has recorded its sources already.
    kind: str = "folder"
    location: str = ""
    sidecar_path: str | None = None  # the caption file `sidecar` was read from

    @property
    def subject(self) -> str:
        """What a skip names: the user's file, or the booru post."""
        return self.location or self.path


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str
    frames: int


def walk_folder(root: Path, recursive: bool = True) -> Iterator[Path]:
    """Every candidate image file below `root`, sorted, caption sidecars left out."""
    if not root.is_dir():
        raise FileNotFoundError(f"source folder does not exist: {root}")
    found = root.rglob("*") if recursive else root.iterdir()
    yield from sorted(p for p in found if p.is_file() and p.suffix.lower() not in SIDECAR_SUFFIXES)


def sidecar_path(image_path: Path) -> Path | None:
    """The caption file of an image: its own (`img.png.txt`) first, else the stem's (`img.txt`).

    The stem's file is kohya's convention; when `img.png` and `img.jpg` both exist it
    captions both (the scan warns), and `img.png.txt` / `img.jpg.txt` tell them apart.
    """
    for candidate in (
        *(image_path.with_name(image_path.name + s) for s in SIDECAR_SUFFIXES),
        *(image_path.with_suffix(s) for s in SIDECAR_SUFFIXES),
    ):
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(image_path: Path) -> str | None:
    """The caption file of an image (see `sidecar_path`), as raw text."""
    path = sidecar_path(image_path)
    return path.read_bytes().decode("utf-8", errors="replace") if path else None


def shared_sidecars(pairs: Iterable[tuple[str, str | None]]) -> dict[str, list[str]]:
    """Caption files that serve more than one picture file: sidecar -> those files (from (file, sidecar) pairs)."""
    users: dict[str, list[str]] = {}
    for image, sidecar in pairs:
        if sidecar:
            users.setdefault(sidecar, []).append(image)
    return {s: sorted(files) for s, files in users.items() if len(files) > 1}


def wanted_name(f: SourceFile) -> Wanted:
    """What a source file would like to be called: its source-relative name, told apart by extension if needed."""
    return Wanted(f.name, f.sha256, Path(f.path).suffix.lstrip(".").lower())


def source_name(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _avif_missing(data: bytes) -> bool:
    return data[4:12] in (b"ftypavif", b"ftypavis") and not features.check("avif")


@dataclass(frozen=True)
class Limits:
    formats: tuple[str, ...]
    max_pixels: int
    max_bytes: int

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise SkipImage(f"file too large: {size / 2**20:.1f} MB > ingest.max_file_mb")

    def check(self, fmt: str, width: int, height: int, size: int) -> None:
        """Raise SkipImage if an image breaks the recipe's limits (no decoding needed)."""
        self.check_size(size)
        if fmt not in self.formats:
            raise SkipImage(f"format {fmt} not accepted (ingest.formats = {list(self.formats)})")
        if width * height > self.max_pixels:
            raise SkipImage(
                f"decompression bomb: {width}x{height} = {width * height:,} px "
                f"exceeds ingest.max_pixels = {self.max_pixels:,}"
            )


def inspect_image(data: bytes, limits: Limits) -> ImageInfo:
    """Decode every frame fully; raise SkipImage with the reason if unusable."""
    if not data:
        raise SkipImage("empty file (0 bytes)")
    if _avif_missing(data):
        raise SkipImage("AVIF image, but this Pillow has no AVIF support: install Pillow>=11.3")
    # Our own pixel limit applies (Limits.check); Pillow must not refuse below it.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limits.max_pixels:
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise SkipImage("not an image (unrecognised format)") from None
        except Image.DecompressionBombError as exc:
            raise SkipImage(f"decompression bomb: {exc}") from None
        except Exception as exc:  # Pillow raises many types on bad headers
            raise SkipImage(f"unreadable image header: {type(exc).__name__}: {exc}") from None
        with im:
            fmt = FORMAT_ALIASES.get(im.format or "", im.format or "unknown")
            limits.check(fmt, im.width, im.height, len(data))
            frames = getattr(im, "n_frames", 1)
            try:
                for index in range(frames):
                    im.seek(index)
                    im.load()
            except Exception as exc:
                raise SkipImage(f"corrupt or truncated image data: {type(exc).__name__}: {exc}") from None
            return ImageInfo(im.width, im.height, im.mode, fmt, frames)
