"""Alpha: transparent images composited onto the background colour; the rest pass through."""

from __future__ import annotations

import sys

from prefect import task

import tasks.prepare.workers as prep
from bakery.craft.prepare import alpha as craft
from bakery.manifest import ImageRef, StageResult
from bakery.recipe import AlphaParams
from tasks import caching
from tasks.stage import RunInfo, Stage, derive_per_image, known_pixel_hashes


@task(name="alpha")
def alpha(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    params = AlphaParams.model_validate_json(params_json)
    run = RunInfo(run_id, workdir, workers)
    root = str(run.store.root)
    known = known_pixel_hashes(run, inputs)
    return derive_per_image(
        "alpha", ALPHA.code_version, inputs, params_json, run,
        work=prep.alpha_one,
        make_job=lambda ref: prep.AlphaJob(ref, root, known.get(ref.hash), background=params.background),
    )


ALPHA = Stage("alpha", alpha, caching.code_version(craft, prep, sys.modules[__name__]))
