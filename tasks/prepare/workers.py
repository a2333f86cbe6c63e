"""Per-image work of the prepare stages (hash, alpha, trim, upscale, bucket snap), run in worker processes.

Like tasks/image_workers.py: no Prefect import, no catalog access; each function
reads its input from the content store, writes new files there and returns
plain rows for the task to write to the catalog.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from bakery.craft.gather.convert import pixel_hash, png_bytes
from bakery.craft.prepare import alpha as alpha_craft
from bakery.craft.prepare import trim as trim_craft
from bakery.craft.prepare import upscale as upscale_craft
from bakery.craft.prepare.buckets import BucketChoice, fit_to_box
from bakery.manifest import ImageRef, Skip
from storage import ContentStore, Digest
from tasks.image_workers import pixel_facts


@dataclass(frozen=True)
class ImageJob:
    image: ImageRef
    store_root: str
    pixel_hash: str | None  # known pixels of the input (kept for a passthrough)
    compress_level: int = 1


def _open(job: ImageJob, load: bool = True) -> Image.Image:
    """The input image; with load=False only its header is read (size, mode, transparency)."""
    im = Image.open(io.BytesIO(ContentStore(job.store_root).read_bytes(job.image.hash)))
    if load:
        im.load()
    return im


def _same(job: ImageJob, im: Image.Image) -> list[dict[str, Any]]:
    """The input passes through unchanged (no re-encode)."""
    return [
        {
            "hash": job.image.hash, "md5": "", "width": im.width, "height": im.height, "mode": im.mode,
            "format": "PNG", "bytes": 0, "frames": 1,
            "pixel_hash": job.pixel_hash or pixel_hash(im), "output_suffix": "",
        }
    ]


def _stored(job: ImageJob, im: Image.Image) -> list[dict[str, Any]]:
    digest: Digest = ContentStore(job.store_root).put_bytes(png_bytes(im, job.compress_level))
    return [
        {
            "hash": digest.sha256, "md5": digest.md5, "width": im.width, "height": im.height, "mode": im.mode,
            "format": "PNG", "bytes": digest.size, "frames": 1, "pixel_hash": pixel_hash(im), "output_suffix": "",
        }
    ]


def _guarded(fn: Any, job: Any) -> list[dict[str, Any]] | Skip:
    try:
        return fn(job)
    except (OSError, ValueError) as exc:
        return Skip(job.image.name, f"cannot read or write image: {type(exc).__name__}: {exc}")


def hash_one(job: ImageJob) -> dict[str, Any] | Skip:
    try:
        return pixel_facts(_open(job))
    except (OSError, ValueError) as exc:
        return Skip(job.image.name, f"not compared for near-duplicates (cannot hash: {type(exc).__name__}: {exc})")


@dataclass(frozen=True)
class ThumbJob(ImageJob):
    path: str = ""


def thumb_one(job: ThumbJob) -> Skip | None:
    """A <= 256 px JPEG of the image for the near-duplicate review page."""
    try:
        im = _open(job)
        im.thumbnail((256, 256))
        im.convert("RGB").save(job.path, "JPEG", quality=85)
    except (OSError, ValueError) as exc:
        return Skip(job.image.name, f"no review thumbnail: {type(exc).__name__}: {exc}")
    return None


@dataclass(frozen=True)
class AlphaJob(ImageJob):
    background: str = "white"


def _alpha_one(job: AlphaJob) -> list[dict[str, Any]]:
    im = _open(job, load=False)
    if not alpha_craft.has_alpha(im) and job.pixel_hash:
        return _same(job, im)  # decided from the header: nothing decoded
    im.load()
    out = alpha_craft.remove_alpha(im, job.background)
    return _same(job, im) if out is None else _stored(job, out)


@dataclass(frozen=True)
class TrimJob(ImageJob):
    fuzz: float = 0.2
    min_size: int = 64
    edge_spread: float | None = None  # from the catalog, when an earlier stage decoded the picture


def _trim_one(job: TrimJob) -> list[dict[str, Any]]:
    if job.pixel_hash and trim_craft.leaves_alone(job.edge_spread, job.fuzz):
        return _same(job, _open(job, load=False))  # decided from the catalog: nothing decoded
    im = _open(job)
    out = trim_craft.trim(im, job.fuzz, job.min_size)
    return _same(job, im) if out is None else _stored(job, out)


@dataclass(frozen=True)
class UpscaleJob(ImageJob):
    resolution: int = 512
    backend: str = "lanczos"
    model: str | None = None
    tile: int = 256
    tile_overlap: int = 16
    device: str = "auto"


_MODELS: dict[tuple[Any, ...], upscale_craft.SpandrelUpscaler] = {}


def _upscale_one(job: UpscaleJob) -> list[dict[str, Any]]:
    im = _open(job, load=False)
    size = upscale_craft.target_size(im.width, im.height, job.resolution)
    if size is None and job.pixel_hash:
        return _same(job, im)  # large enough: decided from the header
    im.load()
    if size is None:
        return _same(job, im)
    if job.backend == "spandrel":
        key = (job.model, job.device, job.tile, job.tile_overlap)
        if key not in _MODELS:  # once per process
            _MODELS[key] = upscale_craft.load_spandrel(job.model, job.device, job.tile, job.tile_overlap)
        out, _ = upscale_craft.spandrel_upscale(im, size, _MODELS[key])
    else:
        out = upscale_craft.lanczos(im, size)
    return _stored(job, out)


@dataclass(frozen=True)
class SnapJob(ImageJob):
    bucket: tuple[int, int] = (512, 512)
    resized: tuple[int, int] = (512, 512)
    box: tuple[int, int, int, int] | None = None  # the crop of the resized picture; None: kohya's centre crop
    mode: str = "RGB"  # "L" for a loss mask


def _snap_one(job: SnapJob) -> list[dict[str, Any]]:
    im = _open(job, load=False)
    if im.size == job.bucket and job.pixel_hash:
        return _same(job, im)
    im.load()
    choice = BucketChoice(job.bucket, job.resized)
    return _stored(job, fit_to_box(im.convert(job.mode), choice, job.box or choice.crop_box))


def alpha_one(job: AlphaJob) -> list[dict[str, Any]] | Skip:
    return _guarded(_alpha_one, job)


def trim_one(job: TrimJob) -> list[dict[str, Any]] | Skip:
    return _guarded(_trim_one, job)


def upscale_one(job: UpscaleJob) -> list[dict[str, Any]] | Skip:
    return _guarded(_upscale_one, job)


def snap_one(job: SnapJob) -> list[dict[str, Any]] | Skip:
    return _guarded(_snap_one, job)
