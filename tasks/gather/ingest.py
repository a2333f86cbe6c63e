"""Scan and ingest: the user's folders into the content store and the catalog."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

import tasks.image_workers as image_workers
from bakery.craft.gather import ingest as craft
from bakery.craft.gather import names as names_craft
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
    warnings: list[str] = field(default_factory=list)

    def subjects(self) -> list[str]:
        """Every file found, as ingest's skips and origins name it."""
        return [f.subject for f in self.files] + [s.subject for s in self.skips]


def _describe(path: Path, root: Path, spec: FolderSpec, digests: DigestCache) -> craft.SourceFile | Skip:
    try:
        digest = digests.digest(path)
        sidecar_path = craft.sidecar_path(path)
        sidecar = craft.read_sidecar(path) if sidecar_path else None
    except OSError as exc:
        return Skip(str(path), f"cannot read file: {exc.strerror or exc}")
    return craft.SourceFile(
        path=str(path), name=craft.source_name(path, root), sha256=digest.sha256, md5=digest.md5,
        size=digest.size, source_kind=spec.source_kind, sidecar=sidecar,
        sidecar_path=str(sidecar_path) if sidecar_path else None,
    )


def _sidecar_warnings(files: list[craft.SourceFile]) -> list[str]:
    shared = craft.shared_sidecars((f.path, f.sidecar_path) for f in files)
    return [
        f"{sidecar} captions {len(users)} pictures ({', '.join(Path(u).name for u in users)}): "
        f"give each its own caption file ({Path(users[0]).name}.txt, ...) if they differ"
        for sidecar, users in sorted(shared.items())
    ]


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
    files = [f for f in found if isinstance(f, craft.SourceFile)]
    skips = [Skip(*s) for _, walk in walks for s in walk.skips] + [s for s in found if isinstance(s, Skip)]
    return Listing(files=files, skips=skips, warnings=_sidecar_warnings(files))


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
    accepted: dict[str, craft.SourceFile] = {}  # sha256 -> a file holding it
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
    facts = [{"image_hash": h, **f} for h, row in new_images.items() if (f := row.pop("pixel_facts", None))]
    with Catalog.open(run.catalog) as cat:
        cat.add_images(new_images.values())
        cat.add_perceptual_hashes(facts)  # of files convert keeps as they are (decoded here, once)
        cat.add_sources(sources, run_id)

    result = _pictures(inputs.files, set(accepted))
    result.skips[:0] = skips
    result.n_in, result.n_processed, result.warnings = len(inputs.files), len(unique_todo), inputs.warnings
    return result


def _pictures(files: list[craft.SourceFile], accepted: set[str]) -> StageResult:
    """One picture per accepted content, named after its first file by path; its other files are skips."""
    first: dict[str, craft.SourceFile] = {}
    for f in files:
        if f.sha256 in accepted:
            first.setdefault(f.sha256, f)
    skips = [Skip(f.subject, f"identical to {first[f.sha256].subject}: one picture, stored once "
                             "(both sources and their captions are recorded)")
             for f in files if f.sha256 in first and first[f.sha256] is not f]
    names = names_craft.unique_names([craft.wanted_name(f) for f in first.values()])
    return StageResult(images=sorted(ImageRef(names[h], h) for h in first), skips=skips,
                       origins={names[h]: f.subject for h, f in first.items()})


INGEST = Stage("ingest", ingest, caching.code_version(craft, names_craft, image_workers, sys.modules[__name__]))
