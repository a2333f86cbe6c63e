"""Trim: uniform padding removed (`-fuzz 20% -trim`); images without padding pass through."""

from __future__ import annotations

import sys

from prefect import task

import tasks.prepare.workers as prep
from bakery.craft.prepare import trim as craft
from bakery.manifest import ImageRef, StageResult
from bakery.recipe import TrimParams
from storage import Catalog
from tasks import caching
from tasks.stage import RunInfo, Stage, derive_per_image, known_pixel_hashes


@task(name="trim")
def trim(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    params = TrimParams.model_validate_json(params_json)
    if not params.enabled:
        return StageResult(images=sorted(inputs), n_in=len(inputs))
    run = RunInfo(run_id, workdir, workers)
    root = str(run.store.root)
    known = known_pixel_hashes(run, inputs)
    with Catalog.open(run.catalog) as cat:  # pictures convert or dedupe decoded: no need to decode them again
        spreads = cat.edge_spreads([r.hash for r in inputs])
    return derive_per_image(
        "trim", TRIM.code_version, inputs, params_json, run,
        work=prep.trim_one,
        make_job=lambda ref: prep.TrimJob(ref, root, known.get(ref.hash), fuzz=params.fuzz, min_size=params.min_size,
                                          edge_spread=spreads.get(ref.hash)),
    )


TRIM = Stage("trim", trim, caching.code_version(craft, prep, sys.modules[__name__]))
