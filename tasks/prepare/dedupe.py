"""Dedupe: exact duplicates (same pixels) collapse to one image, then near-duplicates (pHash + dHash)."""

from __future__ import annotations

import html
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import tasks.image_workers as image_workers
import tasks.prepare.workers as prep
from bakery.craft.prepare import dedupe as craft
from bakery.manifest import ImageRef, Skip, StageResult
from bakery.recipe import SOURCE_KINDS, DedupeParams
from storage import Catalog
from tasks import caching
from tasks.pool import map_images
from tasks.stage import RunInfo, Stage

REVIEW_DIR = "reports/dedupe"


@task(name="dedupe")
def dedupe(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    params = DedupeParams.model_validate_json(params_json)
    run = RunInfo(run_id, workdir, workers)
    kept, skips, n_processed = sorted(inputs), [], 0
    with Catalog.open(run.catalog) as cat:
        cat.clear_duplicates("dedupe", [r.hash for r in inputs])
        if params.exact:
            kept, dropped = craft.exact_duplicates(inputs, cat.pixel_hashes([r.hash for r in inputs]))
            cat.add_duplicates(
                [
                    {"stage": "dedupe", "image_hash": d.hash, "kept_hash": k.hash, "method": "exact", "distance": 0.0}
                    for d, k in dropped
                    if d.hash != k.hash
                ],
                run_id,
            )
            skips += [Skip(d.name, f"exact duplicate of {k.name}") for d, k in dropped]
            n_processed = len(inputs)
    notes: list[str] = []
    if params.near:
        kept, near_skips, notes, hashed = near_dedupe(kept, params, run)
        skips += near_skips
        n_processed = max(n_processed, hashed)
    return StageResult(images=sorted(kept), skips=skips, n_in=len(inputs), n_processed=n_processed, warnings=notes)


def perceptual_hashes(images: list[ImageRef], run: RunInfo) -> tuple[dict[str, tuple[int, int, str]], list[Skip], int]:
    """pHash/dHash/colour thumbnail of every image: from the catalog, or computed in the process pool and stored."""
    unique = sorted({r.hash: r for r in images}.values())
    with Catalog.open(run.catalog) as cat:
        known = cat.perceptual_hashes([r.hash for r in unique])
    todo = [r for r in unique if r.hash not in known]
    root = str(run.store.root)
    rows, skips = [], []
    for ref, out in zip(todo, map_images("dedupe-hash", prep.hash_one, [prep.ImageJob(r, root, None) for r in todo], run.workers)):
        if isinstance(out, Skip):
            skips.append(out)
            continue
        known[ref.hash] = (out["phash"], out["dhash"], out["colour"])
        rows.append({"image_hash": ref.hash, **out})
    with Catalog.open(run.catalog) as cat:
        cat.add_perceptual_hashes(rows)
    return known, skips, len(todo)


def near_dedupe(
    images: list[ImageRef], params: DedupeParams, run: RunInfo
) -> tuple[list[ImageRef], list[Skip], list[str], int]:
    """Kept pictures, the dropped ones as skips, notes on pictures kept unhashed, how many were hashed."""
    hashes, unhashed, n_hashed = perceptual_hashes(images, run)
    with Catalog.open(run.catalog) as cat:
        rows = cat.image_rows([r.hash for r in images])
        origins = cat.origins([r.hash for r in images])
    rank = {k: i for i, k in enumerate(SOURCE_KINDS)}
    candidates = []
    for ref in images:
        if ref.hash not in hashes:
            continue  # could not be hashed: kept, never merged
        row = rows.get(ref.hash, {})
        kinds, added = origins.get(ref.hash, ([], ""))
        candidates.append(craft.Candidate(
            ref, row.get("width") or 0, row.get("height") or 0, *hashes[ref.hash],
            source_rank=min((rank.get(k, len(rank)) for k in kinds), default=len(rank)), added=added,
        ))
    groups = craft.near_duplicates(
        candidates, params.phash_threshold, params.dhash_threshold, params.keep, params.colour_threshold
    )
    dropped = {d.dropped.ref for g in groups for d in g.dropped}
    with Catalog.open(run.catalog) as cat:
        cat.add_duplicates(
            [
                {"stage": "dedupe", "image_hash": d.dropped.ref.hash, "kept_hash": d.kept.ref.hash,
                 "method": "phash+dhash", "distance": float(d.phash_distance)}
                for g in groups for d in g.dropped if d.dropped.ref.hash != d.kept.ref.hash
            ],
            run.run_id,
        )
    skips = [
        Skip(d.dropped.ref.name, f"near duplicate of {d.kept.ref.name} (pHash distance {d.phash_distance}, "
                                 f"dHash {d.dhash_distance}, colour {d.colour_distance})")
        for g in groups for d in g.dropped
    ]
    write_review(groups, run, params)
    notes = [f"{s.subject}: {s.reason}" for s in unhashed]
    return [r for r in images if r not in dropped], skips, notes, n_hashed


def _thumb_name(ref: ImageRef) -> str:
    return f"thumbs/{ref.hash[:16]}.jpg"


def write_review(groups: list[craft.NearGroup], run: RunInfo, params: DedupeParams) -> Path:
    """An HTML page (kept and dropped side by side, with thumbnails) and a Prefect markdown artifact."""
    folder = Path(run.workdir) / REVIEW_DIR
    (folder / "thumbs").mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    shown = {c.ref.hash: c.ref for g in groups for c in [*g.kept, *(d.dropped for d in g.dropped)]}
    jobs = [prep.ThumbJob(ref, str(run.store.root), None, path=str(folder / _thumb_name(ref)))
            for ref in shown.values() if not (folder / _thumb_name(ref)).exists()]
    for failed in map_images("dedupe-review", prep.thumb_one, jobs, run.workers):  # decoding: in the pool
        if failed is not None:
            get_run_logger().warning("%s: %s", failed.subject, failed.reason)

    def card(c: craft.Candidate, label: str, extra: str = "") -> str:
        return (f'<figure class="{label}"><img src="{_thumb_name(c.ref)}" loading="lazy">'
                f"<figcaption><b>{label}</b> {html.escape(c.ref.name)}<br>{c.width}x{c.height} "
                f"<code>{c.ref.hash[:12]}</code>{extra}</figcaption></figure>")

    parts = [
        "<!doctype html><meta charset='utf-8'><title>Near-duplicates</title><style>"
        "body{font-family:sans-serif}section{display:flex;gap:1em;border-bottom:1px solid #ccc;padding:1em 0}"
        "figure{margin:0;max-width:260px}figure.kept img{outline:4px solid #2a2}figure.dropped img{outline:4px solid #c33}"
        "</style>",
        f"<h1>Near-duplicates: {len(groups)} groups</h1><p>pHash distance &le; {params.phash_threshold}, dHash "
        f"&le; {params.dhash_threshold} and colour difference &le; {params.colour_threshold}. Watch for variants where only the expression or a garment changes: "
        "they are NOT duplicates. To keep a dropped image, add its name or hash to "
        "<code>[dedupe] keep = [...]</code> in the recipe and run again.</p>",
    ]
    md = [f"# Near-duplicates: {len(groups)} groups", "",
          f"Review page with thumbnails: `{page}`. Keep an image: `[dedupe] keep = [\"name\"]`.", "",
          "| kept | dropped | pHash | dHash | colour |", "|---|---|---:|---:|---:|"]
    for g in groups:
        cards = [card(k, "kept") for k in g.kept]
        cards += [card(d.dropped, "dropped", f"<br>pHash {d.phash_distance}, dHash {d.dhash_distance}, colour {d.colour_distance}") for d in g.dropped]
        parts.append("<section>" + "".join(cards) + "</section>")
        md += [f"| {d.kept.ref.name} | {d.dropped.ref.name} | {d.phash_distance} | {d.dhash_distance} | "
               f"{d.colour_distance} |" for d in g.dropped]
    page.write_text("\n".join(parts), encoding="utf-8")
    create_markdown_artifact("\n".join(md) + "\n", key="dedupe-review", description="Near-duplicate groups to review")
    return page


DEDUPE = Stage("dedupe", dedupe, caching.code_version(craft, prep, image_workers, sys.modules[__name__]))
