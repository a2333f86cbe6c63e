"""Scan and ingest: the user's folders into the content store and the catalog."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

import tasks.image_workers as image_workers
from bakery.craft import ingest as craft
from bakery.manifest import ImageRef, Skip, StageResult
from bakery.recipe import IngestParams
from storage import Catalog
from storage.digests import DigestCache
from tasks import caching
from tasks.pool import map_images
from tasks.stage import RunInfo, Stage


@dataclass(frozen=True)
class FolderSpec:
    path: str
    recursive: bool
    source_kind: str


@dataclass(frozen=True)
class Listing:
    """Every file found in the sources, with content hashes: the ingest stage's input."""

    files: list[craft.SourceFile]
    skips: list[Skip] = field(default_factory=list)


def _describe(path: Path, root: Path, spec: FolderSpec, digests: DigestCache) -> craft.SourceFile | Skip:
    try:
        digest = digests.digest(path)
        sidecar = craft.read_sidecar(path)
    except OSError as exc:
        return Skip(str(path), f"cannot read file: {exc.strerror or exc}")
    return craft.SourceFile(
        path=str(path), name=craft.source_name(path, root), sha256=digest.sha256, md5=digest.md5,
        size=digest.size, source_kind=spec.source_kind, sidecar=sidecar,
    )


@task(name="scan-sources", cache_policy=NO_CACHE)
def scan_sources(folders: list[FolderSpec], digest_cache: str | None = None) -> Listing:
    """Every file with its content hash (never cached: this is how changes are noticed).

    `digest_cache`: a file remembering digests by path, size, mtime and inode, so that
    unchanged files are not read again (storage/digests.py).
    """
    digests = DigestCache(digest_cache)
    walks = [(f, craft.list_folder(Path(f.path), f.recursive)) for f in folders]
    paths = [(p, Path(f.path), f) for f, walk in walks for p in walk.files]
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL
        found = list(pool.map(lambda item: _describe(*item, digests), paths))
    digests.save()
    return Listing(
        files=[f for f in found if isinstance(f, craft.SourceFile)],
        skips=[Skip(*s) for _, walk in walks for s in walk.skips] + [s for s in found if isinstance(s, Skip)],
    )


def _limits(params: IngestParams) -> craft.Limits:
    return craft.Limits(tuple(params.formats), params.max_pixels, int(params.max_file_mb * 2**20))


def _limits_skip(info: dict, limits: craft.Limits) -> str | None:
    """Re-check a known image against this run's limits without decoding it again."""
    try:
        limits.check(info["format"], info["width"], info["height"], info["bytes"])
    except craft.SkipImage as exc:
        return str(exc)
    return None


@task(name="ingest")
def ingest(inputs: Listing, params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    params = IngestParams.model_validate_json(params_json)
    run = RunInfo(run_id, workdir, workers)
    with Catalog.open(run.catalog) as cat:
        known = cat.image_rows([f.sha256 for f in inputs.files])

    skips = list(inputs.skips)
    accepted: dict[str, craft.SourceFile] = {}  # sha256 -> file, in path order
    todo = []
    for f in inputs.files:
        if f.sha256 in known:
            reason = _limits_skip(known[f.sha256], _limits(params))
            if reason:
                skips.append(Skip(f.subject, reason))
            else:
                accepted.setdefault(f.sha256, f)
        else:
            todo.append(f)

    # Decode each new content once, even when several files hold it.
    unique_todo = list({f.sha256: f for f in reversed(todo)}.values())[::-1]
    jobs = [image_workers.IngestJob(f, str(run.store.root), _limits(params)) for f in unique_todo]
    new_images, skipped = {}, {}
    for f, row in zip(unique_todo, map_images("ingest", image_workers.ingest_one, jobs, workers)):
        if isinstance(row, Skip):
            skipped[f.sha256] = row.reason
        else:
            new_images[f.sha256] = row
    for f in todo:
        if f.sha256 in new_images:
            accepted.setdefault(f.sha256, f)
        else:
            skips.append(Skip(f.subject, skipped[f.sha256]))

    sources = [
        {"image_hash": f.sha256, "location": f.path, "kind": "folder", "name": f.name,
         "source_kind": f.source_kind, "sidecar": f.sidecar}
        for f in inputs.files if f.sha256 in accepted and f.kind == "folder"  # scrape records its own
    ]
    with Catalog.open(run.catalog) as cat:
        cat.add_images(new_images.values())
        cat.add_sources(sources, run_id)

    images = sorted(ImageRef(f.name, h) for h, f in accepted.items())
    return StageResult(images=images, skips=skips, n_in=len(inputs.files), n_processed=len(unique_todo))


INGEST = Stage("ingest", ingest, caching.code_version(craft, image_workers, sys.modules[__name__]))
