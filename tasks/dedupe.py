"""Dedupe: exact duplicates (same pixels) collapse to one image."""

from __future__ import annotations

import sys

from prefect import task

from bakery.craft import dedupe as craft
from bakery.manifest import ImageRef, Skip, StageResult
from bakery.recipe import DedupeParams
from storage import Catalog
from tasks import caching
from tasks.stage import RunInfo, Stage


@task(name="dedupe")
def dedupe(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    params = DedupeParams.model_validate_json(params_json)
    run = RunInfo(run_id, workdir, workers)
    if not params.exact:
        return StageResult(images=sorted(inputs), n_in=len(inputs))
    with Catalog.open(run.catalog) as cat:
        kept, dropped = craft.exact_duplicates(inputs, cat.pixel_hashes([r.hash for r in inputs]))
        cat.add_duplicates(
            [
                {"stage": "dedupe", "image_hash": d.hash, "kept_hash": k.hash, "method": "exact", "distance": 0.0}
                for d, k in dropped
                if d.hash != k.hash
            ],
            run_id,
        )
    skips = [Skip(d.name, f"exact duplicate of {k.name}") for d, k in dropped]
    return StageResult(images=kept, skips=skips, n_in=len(inputs), n_processed=len(inputs))


DEDUPE = Stage("dedupe", dedupe, caching.code_version(craft, sys.modules[__name__]))
