"""Per-image work run in worker processes.

No Prefect import here (workers start fast) and no catalog access (one writer):
each function reads its input, writes new files to the content store, and
returns plain rows for the task to write to the catalog.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bakery.craft.gather.convert import convert_image, kept_as_is, pixel_hash
from bakery.craft.gather.ingest import Limits, SkipImage, SourceFile, inspect_image
from bakery.craft.prepare import trim as trim_craft
from bakery.craft.prepare.dedupe import perceptual_hash
from bakery.manifest import ImageRef, Skip
from storage import ContentStore, Digest


@dataclass(frozen=True)
class IngestJob:
    source: SourceFile
    store_root: str
    limits: Limits


def ingest_one(job: IngestJob) -> dict[str, Any] | Skip:
    src = job.source
    try:
        job.limits.check_size(src.size)  # before reading a huge file into memory
        data = Path(src.path).read_bytes()
        info = inspect_image(data, job.limits, seen=_as_is)
    except SkipImage as exc:
        return Skip(src.path, str(exc))
    except OSError as exc:
        return Skip(src.path, f"cannot read file: {exc.strerror or exc}")
    if hashlib.sha256(data).hexdigest() != src.sha256:  # changed between the scan and now
        return Skip(src.path, "file changed while the run was reading it: run again")
    digest = ContentStore(job.store_root).put_bytes(data, Digest(src.sha256, src.md5, src.size))
    return {
        "hash": digest.sha256,
        "md5": digest.md5,
        "width": info.width,
        "height": info.height,
        "mode": info.mode,
        "format": info.format,
        "bytes": digest.size,
        "frames": info.frames,
        "pixel_hash": info.seen and info.seen[0],
        "pixel_facts": info.seen and info.seen[1],
    }


def _as_is(im: Image.Image) -> tuple[str, dict[str, Any] | None] | None:
    """A picture convert keeps byte for byte: what convert, dedupe and trim want of its pixels,
    found while ingest has them decoded (the one decode such a picture gets)."""
    return (pixel_hash(im), _facts_if_any(im)) if kept_as_is(im) else None


def pixel_facts(im: Image.Image) -> dict[str, Any]:
    """What dedupe and trim want of a decoded picture: its perceptual hashes and edge spread
    (a `perceptual_hashes` catalog row without the image hash)."""
    ph = perceptual_hash(im)
    return {"phash": ph.phash, "dhash": ph.dhash, "colour": ph.colour, "edge_spread": trim_craft.edge_spread(im)}


def _facts_if_any(im: Image.Image) -> dict[str, Any] | None:
    try:
        return pixel_facts(im)
    except (OSError, ValueError):  # never fails a convert: dedupe hashes it again and says why it cannot
        return None


@dataclass(frozen=True)
class ConvertJob:
    image: ImageRef
    store_root: str
    compress_level: int
    pixel_hash: str | None = None  # known pixels (hashed by ingest): a file kept as it is is not decoded


def convert_one(job: ConvertJob) -> list[dict[str, Any]] | Skip:
    """One row per output frame: the image row plus the output's name suffix."""
    store = ContentStore(job.store_root)
    data = store.read_bytes(job.image.hash)
    try:
        # The pixels are decoded here anyway: dedupe and trim find what they need in the catalog.
        frames = convert_image(data, job.compress_level, facts=_facts_if_any, known_pixel_hash=job.pixel_hash)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # decoded in ingest, but not convertible
        return Skip(job.image.name, f"cannot convert: {type(exc).__name__}: {exc}")
    rows = []
    for frame in frames:
        # png None: the input is kept as it is (its image row exists already)
        digest = Digest(job.image.hash, "", len(data)) if frame.png is None else store.put_bytes(frame.png)
        rows.append(
            {
                "hash": digest.sha256,
                "md5": digest.md5,
                "width": frame.width,
                "height": frame.height,
                "mode": frame.mode,
                "format": "PNG",
                "bytes": digest.size,
                "frames": 1,
                "pixel_hash": frame.pixel_hash,
                "output_suffix": frame.suffix,
                "pixel_facts": frame.facts,
            }
        )
    return rows
