"""The main flow: recipe in, every built stage in order, cached stage by stage."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from bakery.manifest import ImageRef
from bakery.recipe import Recipe, load_recipe, stage_params_json
from bakery.stages import plan_run
from tasks.autotag import AUTOTAG, autotag_params_json
from tasks.convert import CONVERT
from tasks.dedupe import DEDUPE
from tasks.ingest import INGEST, FolderSpec, scan_sources
from tasks.prune import PRUNE, caption_sources, prune_params_json
from tasks.report import run_summary_markdown
from tasks.stage import RunInfo, begin_run, end_run, run_stage

# Stages built so far, in chain order. A stage not built is absent, not a no-op.
GATHER = (INGEST, CONVERT, DEDUPE)
CAPTION = (AUTOTAG, PRUNE)  # after the image-preparation stages
BUILT = tuple(s.name for s in GATHER + CAPTION)


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


def caption(recipe_path: str, run: RunInfo, images: list[ImageRef], stages: list[str], refresh: list[str]):
    """Prepared images to a TrainSet: autotag -> prune. Needs [[concepts]] (autotag alone runs with a model)."""
    recipe = load_recipe(recipe_path)
    result = None
    if "autotag" in stages and (recipe.concepts or recipe.autotag.model):
        result = run_stage(AUTOTAG, images, autotag_params_json(recipe), run, "autotag" in refresh)
        images = result.images
    if "prune" in stages and recipe.concepts:
        result = run_stage(PRUNE, caption_sources(images, run.workdir), prune_params_json(recipe), run, "prune" in refresh)
    return result


@flow(name="bake-lora")
def bake_lora(recipe_path: str, from_stage: str | None = None, only_stage: str | None = None) -> str:
    """Run a recipe. Returns the run id (its record is in the work dir's catalog)."""
    recipe = load_recipe(recipe_path)
    plan = plan_run(BUILT, from_stage, only_stage)
    run = begin_run(recipe.workdir, str(Path(recipe_path).resolve()), recipe.digest(),
                    recipe.model_dump_json(), recipe.runtime.workers)
    try:
        images = gather(recipe_path, run, list(plan.stages), sorted(plan.refresh))
        caption(recipe_path, run, images, list(plan.stages), sorted(plan.refresh))
    except BaseException as exc:
        end_run(run, "failed", f"{type(exc).__name__}: {exc}")
        raise
    end_run(run, "completed")
    create_markdown_artifact(run_summary_markdown(run), key="bake-summary", description="Stages of this run")
    return run.run_id
