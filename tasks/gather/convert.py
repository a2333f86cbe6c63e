"""Convert: originals to normalised PNG, one derivation per output frame."""

from __future__ import annotations

import sys

from prefect import task

import tasks.image_workers as image_workers
from bakery.craft.gather import animation as animation_craft
from bakery.craft.gather import convert as craft
from bakery.craft.prepare import dedupe as dedupe_craft
from bakery.craft.prepare import trim as trim_craft
from bakery.manifest import ImageRef, StageResult
from bakery.recipe import ConvertParams
from tasks import caching
from tasks.stage import RunInfo, Stage, derive_per_image, known_pixel_hashes


@task(name="convert")
def convert(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    params = ConvertParams.model_validate_json(params_json)
    run = RunInfo(run_id, workdir, workers)
    store_root = str(run.store.root)
    known = known_pixel_hashes(run, inputs)  # ingest hashed the pixels of files kept as they are
    return derive_per_image(
        "convert", CONVERT.code_version, inputs, params_json, run,
        work=image_workers.convert_one,
        make_job=lambda ref: image_workers.ConvertJob(ref, store_root, params.png_compress_level,
                                                      known.get(ref.hash)),
    )


# dedupe and trim craft: convert works out their pixel facts (image_workers.pixel_facts).
CONVERT = Stage("convert", convert, caching.code_version(craft, animation_craft, dedupe_craft, trim_craft,
                                                         image_workers, sys.modules[__name__]))
