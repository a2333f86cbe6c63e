"""Ingest: find the user's images, check they decode, describe them.

Pure functions (no Prefect, no catalog): the ingest task wires them to storage.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError, features

from bakery.craft.gather.names import Wanted

# Caption files that may sit beside an image (Grabber, kohya, booru downloads).
SIDECAR_SUFFIXES = (".txt", ".caption")

# A folder named like this was likely meant to be a picture: its name is recorded.
IMAGE_SUFFIXES = (".png", ".apng", ".jpg", ".jpeg", ".jfif", ".gif", ".webp", ".avif", ".bmp", ".tif", ".tiff")
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}

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
    seen: Any = None  # what `inspect_image(..., seen=f)` found in a single picture's decoded pixels


@dataclass
class FolderWalk:
    """What a walk found: candidate image files, and every other entry it could not use, with why."""

    files: list[Path] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (path as shown, reason)
    followed: set[Path] = field(default_factory=set)  # folders outside the root reached through links


def shown(path: Path) -> str:
    """The path as text that can be stored and printed, even when the name is not UTF-8."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _unusable(path: Path) -> tuple[str, os.stat_result | None]:
    """("", stat) for an entry that can be looked at; else (why not, None)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8: rename it", None
    try:
        return "", path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop: the link leads back to itself", None
        if path.is_symlink() and isinstance(exc, FileNotFoundError):
            return f"broken link: its target {os.readlink(path)} does not exist", None
        return f"cannot read: {exc.strerror or exc}", None


def _link_skip(link: Path, root: Path, walk: FolderWalk) -> str:
    """Why a link to a folder is not followed ("" to follow it): loops and second ways in end here."""
    target = link.resolve()
    if link.parent.resolve().is_relative_to(target):
        return f"symlink loop: leads back to {shown(target)}, which holds the link"
    if target.is_relative_to(root):
        return "a link to a folder inside the source folder (walked there)"
    if target in walk.followed:
        return "already walked through another link to the same folder"
    walk.followed.add(target)
    return ""


def _walk(folder: Path, root: Path, recursive: bool, walk: FolderWalk) -> None:
    try:
        entries = sorted(Path(e.path) for e in os.scandir(folder))
    except OSError as exc:
        walk.skips.append((shown(folder), f"cannot read folder: {exc.strerror or exc}"))
        return
    for path in entries:
        reason, st = _unusable(path)
        if st is None:
            walk.skips.append((shown(path), reason))
        elif stat.S_ISREG(st.st_mode):
            if path.suffix.lower() not in SIDECAR_SUFFIXES:
                walk.files.append(path)
        elif not stat.S_ISDIR(st.st_mode):
            walk.skips.append((shown(path), f"not a regular file ({_KINDS.get(stat.S_IFMT(st.st_mode), 'special')})"))
        else:
            _walk_into(path, root, recursive, walk)


def _walk_into(folder: Path, root: Path, recursive: bool, walk: FolderWalk) -> None:
    if folder.suffix.lower() in IMAGE_SUFFIXES:
        walk.skips.append((shown(folder), "a folder, not an image file"))
    if not recursive:
        return
    if reason := _link_skip(folder, root, walk) if folder.is_symlink() else "":
        walk.skips.append((shown(folder), reason))
    else:
        _walk(folder, root, recursive, walk)


def list_folder(root: Path, recursive: bool = True) -> FolderWalk:
    """Every candidate image file below `root` (sorted, caption sidecars left out) and every skipped entry.

    Nothing vanishes silently: broken links, symlink loops, FIFOs and other special
    files, folders named like images and names that are not UTF-8 are recorded skips.
    A link to a folder outside `root` is walked once; links back into what is walked are not.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"source folder does not exist: {root}")
    walk = FolderWalk()
    _walk(root, root.resolve(), recursive, walk)
    walk.files.sort()
    return walk


def walk_folder(root: Path, recursive: bool = True) -> Iterator[Path]:
    """Every candidate image file below `root`, sorted, caption sidecars left out (`list_folder` says what else)."""
    yield from list_folder(root, recursive).files


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


def inspect_image(data: bytes, limits: Limits, seen: Callable[[Image.Image], Any] | None = None) -> ImageInfo:
    """Decode every frame fully; raise SkipImage with the reason if unusable.

    `seen(im)`: called on a single picture once it is decoded, so that later stages need
    not decode it again (convert keeps such a file byte for byte); its result is `.seen`.
    """
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
            found = seen(im) if seen is not None and frames == 1 else None
            return ImageInfo(im.width, im.height, im.mode, fmt, frames, found)
