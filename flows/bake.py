"""The main flow: recipe in, every built stage in order, cached stage by stage."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from bakery.manifest import ImageRef
from bakery.recipe import Recipe, load_recipe, stage_params_json
from bakery.stages import plan_run
from tasks.alpha import ALPHA
from tasks.buckets import BUCKETS
from tasks.convert import CONVERT
from tasks.dedupe import DEDUPE
from tasks.ingest import INGEST, FolderSpec, scan_sources
from tasks.report import run_summary_markdown
from tasks.stage import RunInfo, begin_run, end_run, run_stage
from tasks.trim import TRIM
from tasks.upscale import UPSCALE, upscale_params_json

# Stages built so far, in chain order. A stage not built is absent, not a no-op.
GATHER = (INGEST, CONVERT, DEDUPE)
# The masks stage goes between UPSCALE and BUCKETS (bakery/stages.py ALL_STAGES).
PREPARE = (ALPHA, TRIM, UPSCALE, BUCKETS)
BUILT = tuple(s.name for s in GATHER + PREPARE)


def _folders(recipe: Recipe) -> list[FolderSpec]:
    return [FolderSpec(str(recipe.resolve(s.path)), s.recursive, s.source_kind) for s in recipe.sources]


@flow(name="gather")
def gather(recipe_path: str, run: RunInfo, stages: list[str], refresh: list[str]) -> list[ImageRef]:
    """Sources to a clean set of originals: scan -> ingest -> convert -> dedupe."""
    recipe = load_recipe(recipe_path)
    params = {"ingest": recipe.ingest, "convert": recipe.convert, "dedupe": recipe.dedupe}
    inputs: object = scan_sources(_folders(recipe))
    images: list[ImageRef] = []
    for stage in GATHER:
        if stage.name not in stages:
            break
        result = run_stage(stage, inputs, stage_params_json(params[stage.name]), run, stage.name in refresh)
        inputs = images = result.images
    return images


def prepare_params(recipe: Recipe) -> dict[str, str]:
    """Each prepare stage's parameters as canonical JSON (what its cache key sees)."""
    model = recipe.resolve(recipe.upscale.model) if recipe.upscale.model else None
    return {
        "alpha": stage_params_json(recipe.alpha),
        "trim": stage_params_json(recipe.trim),
        "upscale": upscale_params_json(recipe.upscale, recipe.buckets.resolution, model),
        "buckets": stage_params_json(recipe.buckets),
    }


def prepare(recipe_path: str, run: RunInfo, images: list[ImageRef], stages: list[str], refresh: list[str]) -> list[ImageRef]:
    """Clean originals to training images: alpha -> trim -> upscale -> (masks) -> buckets.

    A plain function in the main flow, not a subflow: a subflow's parameters (here
    every image) would be sent to the Prefect API.
    """
    params = prepare_params(load_recipe(recipe_path))
    for stage in PREPARE:
        if stage.name not in stages:
            break
        images = run_stage(stage, images, params[stage.name], run, stage.name in refresh).images
    return images


@flow(name="bake-lora")
def bake_lora(recipe_path: str, from_stage: str | None = None, only_stage: str | None = None) -> str:
    """Run a recipe. Returns the run id (its record is in the work dir's catalog)."""
    recipe = load_recipe(recipe_path)
    plan = plan_run(BUILT, from_stage, only_stage)
    run = begin_run(recipe.workdir, str(Path(recipe_path).resolve()), recipe.digest(),
                    recipe.model_dump_json(), recipe.runtime.workers)
    try:
        images = gather(recipe_path, run, list(plan.stages), sorted(plan.refresh))
        if PREPARE[0].name in plan.stages:
            prepare(recipe_path, run, images, list(plan.stages), sorted(plan.refresh))
    except BaseException as exc:
        end_run(run, "failed", f"{type(exc).__name__}: {exc}")
        raise
    end_run(run, "completed")
    create_markdown_artifact(run_summary_markdown(run), key="bake-summary", description="Stages of this run")
    return run.run_id
