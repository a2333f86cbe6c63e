"""The main flow: recipe in, every built stage in order, cached stage by stage."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from bakery.craft.edits import Edit, crop_boxes, keep_list, left_out, resolve_boxes
from bakery.manifest import BakeOutput, ImageRef, StageResult, TrainSet
from bakery.recipe import Recipe
from bakery.stage_params import (
    autotag_params_json,
    bake_params_json,
    buckets_params_json,
    crops_params_json,
    evaluate_params_json,
    gather_params,
    prepare_params,
    prune_params_json,
    regularisation_params_json,
    scrape_params_json,
    slide_params_json,
    slider_taste_params_json,
)
from bakery.stages import Plan, plan_run
from flows.recipes import recipe_given, run_recipe
from flows.sweep import sweep
from storage import Catalog
from tasks.bake.bake import BAKE
from tasks.bake.regularisation import REGULARISATION, record_trainset
from tasks.caption.autotag import AUTOTAG
from tasks.caption.prune import PRUNE, caption_sources
from tasks.edits import load_edits
from tasks.gather.convert import CONVERT
from tasks.gather.ingest import INGEST, FolderSpec, Listing, scan_sources
from tasks.gather.scrape import SCRAPE, booru_specs
from tasks.pool import Runner, use_runner
from tasks.prepare.alpha import ALPHA
from tasks.prepare.buckets import BUCKETS
from tasks.prepare.crops import CROPS, CropsOutput, no_detector_note
from tasks.prepare.dedupe import DEDUPE
from tasks.prepare.masks import MASKS
from tasks.prepare.trim import TRIM
from tasks.prepare.upscale import UPSCALE
from tasks.report import run_summary_markdown
from tasks.runlog import run_log
from tasks.slider.slide import SLIDE, SLIDER_TASTE, slider_spec
from tasks.stage import (
    REPLAYING,
    NotReplayed,
    RunInfo,
    begin_run,
    call,
    end_run,
    forget_run,
    replaying,
    run_stage,
    skip_stage,
    warn_stage,
)
from tasks.sweep import heartbeat, record_variant
from tasks.taste.evaluate import EVALUATE
from tasks.taste.trigger_check import TRIGGER_CHECK, check_triggers

# Stages built so far, in chain order. A stage not built is absent, not a no-op.
GATHER = (INGEST, CONVERT, DEDUPE)
PREPARE = (ALPHA, TRIM, UPSCALE, CROPS, MASKS, BUCKETS)
CAPTION = (AUTOTAG, PRUNE)
BUILT = (SCRAPE.name, *(s.name for s in GATHER + PREPARE + CAPTION), REGULARISATION.name, TRIGGER_CHECK.name,
         SLIDE.name, BAKE.name, EVALUATE.name)
# Stages a recipe only runs when it asks for them: scrape (booru sources), autotag and prune
# ([[concepts]] or an autotag model), regularisation ([regularisation] enabled and a base model),
# trigger_check and bake (a TrainSet and train.base_model), evaluate (a bake or a slide); slide alone runs a
# [slider] recipe, in place of every picture stage.
OPTIONAL = (SCRAPE.name, AUTOTAG.name, PRUNE.name, REGULARISATION.name, TRIGGER_CHECK.name, SLIDE.name, BAKE.name,
            EVALUATE.name)


def _runner(recipe: Recipe) -> Runner:
    from prefect.settings import PREFECT_API_URL

    rt = recipe.runtime
    address = rt.dask_address or os.environ.get("BAKERY_DASK_ADDRESS") or None
    return Runner(rt.task_runner, address, rt.chunk_size, PREFECT_API_URL.value() or None)


def _folders(recipe: Recipe) -> list[FolderSpec]:
    return [FolderSpec(str(recipe.resolve(s.path)), s.recursive, s.source_kind) for s in recipe.sources if s.kind == "folder"]


@flow(name="gather")
def gather(recipe_path: str, run: RunInfo, stages: list[str], refresh: list[str],
           keep: list[str] | None = None) -> list[ImageRef]:
    """Sources to a clean set of originals: scan (+ scrape) -> ingest -> convert -> dedupe.

    `keep`: near-duplicates the keep_duplicate edits keep (added to the recipe's `[dedupe] keep`)."""
    recipe = run_recipe(recipe_path)  # the bake flow's, handed in
    params = gather_params(recipe, keep or ())
    inputs: object = call(scan_sources, _folders(recipe), str(recipe.workdir / "cache" / "source-digests.json"))
    boorus = booru_specs(recipe)
    if boorus and SCRAPE.name in stages:  # scrape first: its downloads join the folder listing
        again = SCRAPE.name in refresh or recipe.scrape.recheck  # the site may have new posts
        scraped = run_stage(SCRAPE, boorus, scrape_params_json(recipe), run, again)
        inputs = Listing(files=[*inputs.files, *scraped.payload], skips=inputs.skips)
    images: list[ImageRef] = []
    for stage in GATHER:
        if stage.name not in stages:
            break
        result = run_stage(stage, inputs, params[stage.name], run, stage.name in refresh)
        inputs = images = result.images
    return images


def prepare(recipe: Recipe, run: RunInfo, images: list[ImageRef], stages: list[str], refresh: list[str],
            edits: list[Edit] = ()) -> tuple[list[ImageRef], CropsOutput | None]:
    """Clean originals to training images: alpha -> trim -> upscale -> crops -> masks -> buckets.

    Buckets keeps each picture's box: its face from crops and the crop edits' boxes (these win). A plain
    function in the main flow, not a subflow: a subflow's parameters (here every image) would be sent to
    the Prefect API.
    """
    params = prepare_params(recipe, edits)
    framed = None
    for stage in PREPARE:
        if stage.name not in stages:
            break
        if stage is CROPS:
            images, framed = frame(recipe, run, images, stage.name in refresh)
            continue
        if stage is BUCKETS:
            faces = framed.keep_boxes if framed is not None and recipe.crops.keep_faces else {}
            edited = resolve_boxes(crop_boxes(edits), {r.name: r.hash for r in images})  # by picture name: these win
            if missed := left_out(edits, stage.name, {r.name: r.hash for r in images}):
                warn_stage(run, stage.name, missed)
            params[stage.name] = buckets_params_json(recipe, {**faces, **edited})
        images = run_stage(stage, images, params[stage.name], run, stage.name in refresh).images
    return images, framed


def frame(recipe: Recipe, run: RunInfo, images: list[ImageRef], refresh: bool) -> tuple[list[ImageRef], CropsOutput | None]:
    """The crops stage (framing, face crops, the balance), or its skip with what to set when nothing can detect."""
    params = crops_params_json(recipe)
    if params is None:
        skip_stage(run, CROPS.name, no_detector_note(recipe), len(images))
        return images, None
    result = run_stage(CROPS, images, params, run, refresh)
    return result.images, result.payload


def caption(recipe: Recipe, run: RunInfo, images: list[ImageRef], stages: list[str], refresh: list[str],
            edits: list[Edit] = (), framed: CropsOutput | None = None):
    """Prepared images to a TrainSet: autotag -> prune. Needs [[concepts]] (autotag alone runs with a model).
    With `[crops] portraits_to_misc`, the pictures the crops stage framed as portraits go to the misc concept."""
    result = None
    if "autotag" in stages and (recipe.concepts or recipe.autotag.model):
        result = run_stage(AUTOTAG, images, autotag_params_json(recipe), run, "autotag" in refresh)
        images = result.images
    if "prune" in stages and recipe.concepts:
        portraits = [n for n, f in framed.framings.items() if f == "portrait"] if framed is not None else []
        sources = call(caption_sources, images, run.workdir, portraits if recipe.crops.portraits_to_misc else [])
        result = run_stage(PRUNE, sources, prune_params_json(recipe, edits), run, "prune" in refresh)
    return result


def regularise(recipe: Recipe, run: RunInfo, trainset: TrainSet, refresh: bool = False) -> TrainSet:
    """The training set with a regularisation image beside each training image (rules.md §11), when the
    recipe enables them and has a base model; else the set as it is."""
    if not recipe.regularisation.enabled:
        return trainset
    if recipe.train.base_model is None:
        skip_stage(run, REGULARISATION.name, "no base model to draw with: set [train] base_model", len(trainset.images))
        return trainset
    params = regularisation_params_json(recipe)
    result = run_stage(REGULARISATION, trainset, params, run, refresh)
    if not all(run.store.has(t.image_hash) for t in result.payload.images):  # deleted from the store since
        result = run_stage(REGULARISATION, trainset, params, run, True)
    record_trainset(run, result.payload)
    return result.payload


def run_bake(recipe: Recipe, run: RunInfo, trainset: TrainSet, refresh: bool = False) -> BakeOutput:
    """The bake stage on the prune stage's TrainSet (wired after prune; resumes a killed bake by itself)."""
    params = bake_params_json(recipe)
    result = run_stage(BAKE, trainset, params, run, refresh)
    return result.payload


def taste(
    recipe: Recipe, run: RunInfo, bake: BakeOutput, train: TrainSet | None, refresh: bool = False
) -> StageResult:
    """Evaluate a bake (rules.md §13). `train` (the prune stage's TrainSet) enables likeness and tag statistics;
    it stays out of the cache key because the bake's key already identifies it."""
    params = evaluate_params_json(recipe)
    result = run_stage(EVALUATE, bake, params, run, refresh, extra={"train": train})
    if not Path(str(result.payload)).is_file():  # a cached result whose report was deleted since: taste again
        result = run_stage(EVALUATE, bake, params, run, True, extra={"train": train})
    return result


def shared_stages(recipe: Recipe, run: RunInfo, trainset: TrainSet, plan: Plan) -> TrainSet:
    """regularisation -> trigger_check: what every bake of this training set and base model shares."""
    if REGULARISATION.name in plan.stages:
        trainset = regularise(recipe, run, trainset, plan.refreshes(REGULARISATION.name))
    if recipe.train.base_model is None:
        if BAKE.name in plan.stages:
            warn_stage(run, BAKE.name, [
                "not run, no base model: set [train] base_model (a .safetensors checkpoint, "
                "a diffusers folder, a hub id, or \"tiny\" for the test model)"
            ])
    elif TRIGGER_CHECK.name in plan.stages:  # is each trigger free on the base model? (rules.md §10, §13)
        check_triggers(recipe, run, trainset.triggers, plan.refreshes(TRIGGER_CHECK.name))
    return trainset


def bake_and_taste(recipe: Recipe, run: RunInfo, trainset: TrainSet, plan: Plan
                   ) -> tuple[BakeOutput | None, StageResult | None]:
    """regularisation -> trigger_check -> bake -> evaluate on the prune stage's TrainSet, as far as the plan goes."""
    trainset = shared_stages(recipe, run, trainset, plan)
    baked = tasted = None
    if recipe.train.base_model is not None and BAKE.name in plan.stages:
        baked = run_bake(recipe, run, trainset, plan.refreshes(BAKE.name))
        if EVALUATE.name in plan.stages:
            tasted = taste(recipe, run, baked, trainset, plan.refreshes(EVALUATE.name))
    return baked, tasted


def bake_pictures(recipe_path: str, recipe: Recipe, run: RunInfo, plan: Plan, variant: str | None = None,
                  sweep_id: str | None = None) -> None:
    """A picture recipe: gather -> prepare -> caption -> regularisation -> trigger_check -> bake -> evaluate;
    with [[variants]] the bake and evaluate of each (flows/sweep.py)."""
    stages, refresh = list(plan.stages), sorted(plan.refresh)
    edits = call(load_edits, recipe_path, run.workdir)  # the review studio's: each stage gets its own
    images, framed = call(gather, recipe_path, run, stages, refresh, keep_list(edits)), None
    if PREPARE[0].name in stages:
        images, framed = prepare(recipe, run, images, stages, refresh, edits)
    captioned = caption(recipe, run, images, stages, refresh, edits, framed)
    trainset = captioned.payload if captioned is not None and isinstance(captioned.payload, TrainSet) else None
    if trainset is None or not trainset.images:
        return
    if recipe.variants:
        shared_stages(recipe, run, trainset, plan)  # made once here, Cached in every variant's run
        if BAKE.name in plan.stages:
            sweep(recipe, recipe_path, run, plan, bake_lora)
        return
    baked, tasted = bake_and_taste(recipe, run, trainset, plan)
    if variant and sweep_id:  # what this variant produced, for the sweep that asked for it
        record_variant(run.workdir, sweep_id, variant, run.run_id, baked, tasted)


def slide_and_taste(recipe: Recipe, run: RunInfo, plan: Plan) -> None:
    """A [slider] recipe: slide -> the slider taste (as evaluate), in place of prepare, caption and bake."""
    if recipe.sources or recipe.concepts:
        warn_stage(run, SLIDE.name, ["a [slider] recipe trains from prompts alone: its sources and concepts "
                                     "are not read (remove them, or the [slider] section for a picture LoRA)"])
    if recipe.train.base_model is None:
        skip_stage(run, SLIDE.name, "no base model to slide: set [train] base_model")
        return
    if SLIDE.name not in plan.stages:
        return
    params = slide_params_json(recipe)
    result = run_stage(SLIDE, slider_spec(recipe), params, run, plan.refreshes(SLIDE.name))
    if not all(Path(p).is_file() for p in result.payload.files.values()):  # deleted since: slide again
        result = run_stage(SLIDE, slider_spec(recipe), params, run, True)
    if EVALUATE.name in plan.stages:
        run_stage(SLIDER_TASTE, result.payload, slider_taste_params_json(recipe), run, plan.refreshes(EVALUATE.name))


@flow(name="bake-lora")
def bake_lora(
    recipe_path: str, from_stage: str | None = None, only_stage: str | None = None, to_stage: str | None = None,
    variant: str | None = None, sweep_id: str | None = None,
) -> str:
    """Run a recipe. Returns the run id (its record is in the work dir's catalog).

    The recipe is parsed once per run: the one handed in for this path (`bakery run` parsed it), else the file
    parsed here; either way handed on to the run's subflows (gather, a sweep's variants): flows/recipes.py.
    `variant`: bake one of the recipe's [[variants]] (a sweep runs one flow run per variant; `sweep_id` names
    the sweep, and the run keeps a heartbeat in its folder while it works)."""
    parsed = run_recipe(recipe_path)
    recipe = parsed.for_variant(variant) if variant else parsed
    plan = plan_run(BUILT, from_stage, only_stage, to_stage)
    with recipe_given(recipe_path, parsed):
        return run_plan(recipe_path, recipe, plan, variant, sweep_id)


def run_plan(recipe_path: str, recipe: Recipe, plan: Plan, variant: str | None, sweep_id: str | None) -> str:
    """The bake flow's run, recorded in the catalog from its start to its end, with every stage of the plan."""
    run = begin_run(recipe.workdir, str(Path(recipe_path).resolve()), recipe.digest(),
                    recipe.model_dump_json(), recipe.runtime.workers)
    alive = heartbeat(run.workdir, sweep_id, variant, recipe.sweep.heartbeat_s) if variant and sweep_id else nullcontext()
    try:
        with alive, use_runner(_runner(recipe)), run_log(run):  # WORKDIR/logs/run-<id>.log: the run's log in full
            if recipe.slider is not None:  # no pictures: the slide in place of every picture stage
                slide_and_taste(recipe, run, plan)
            else:
                bake_pictures(recipe_path, recipe, run, plan, variant, sweep_id)
    except BaseException as exc:
        if replaying() and isinstance(exc, Exception) and not isinstance(exc, NotReplayed):
            raise NotReplayed(run.run_id, f"{type(exc).__name__}: {exc}") from exc
        end_run(run, "failed", f"{type(exc).__name__}: {exc}")
        raise
    end_run(run, "completed")
    if not replaying():
        create_markdown_artifact(run_summary_markdown(run), key="bake-summary", description="Stages of this run")
    return run.run_id


def replay_cached(recipe_path: str, from_stage: str | None = None, only_stage: str | None = None,
                  to_stage: str | None = None) -> str | None:
    """The run without Prefect when every stage of it is cached: the same flow code, each stage's result read
    where Prefect persisted it under the same cache key, the run recorded in the catalog as a Prefect run is.
    None (and no trace in the catalog) when a stage has to run, or anything goes wrong: run it with Prefect.

    For a run with no server configured only: a temporary server's dashboard is gone with the command, and
    starting it is most of a cached run's time. With a server, runs go through it and show in its dashboard.
    """
    token = REPLAYING.set(True)
    try:
        recipe = run_recipe(recipe_path)
        catalog = RunInfo("", str(recipe.workdir)).catalog
        if catalog.is_file() and not recipe.variants:  # else a first run, or a sweep (a flow run per variant)
            # One catalog connection for the run, not one per stage; the recipe parsed once, here or by the caller.
            with Catalog.held(catalog), recipe_given(recipe_path, recipe):
                return bake_lora.fn(recipe_path, from_stage, only_stage, to_stage)
    except NotReplayed as exc:
        forget_run(catalog.parent, exc.run_id)
    except Exception:  # noqa: BLE001 - before the run began (e.g. a bad recipe): the Prefect run reports it
        pass
    finally:
        REPLAYING.reset(token)
    return None
