"""Sliders (LECO): the slide stage (train from prompts, no pictures) and the slider taste.

`slide` is cached like a bake (its inputs: the prompts, the parameters, the code, the base model's files)
and resumes from its own state in `work/bakes/<name>-<key>/state/` after a kill; its loss goes to the
catalog's `bake_log`. The slider taste (run as the `evaluate` stage) renders strengths x saves x seeds,
judges them (bakery/craft/slider/taste.py) and records the pick in the catalog's `evaluations`.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

from prefect import get_run_logger, task

from bakery.craft.bake import loop as bake_craft
from bakery.craft.bake import optim, precision, state, step, training
from bakery.craft.bake.bases import load as bases
from bakery.craft.bake.networks import kohya_lora
from bakery.craft.slider import slide as craft
from bakery.craft.slider import taste as taste_craft
from bakery.craft.taste import xyz
from bakery.craft.taste.judges import panel as judging
from bakery.manifest import BakeOutput, StageResult, digest
from bakery.recipe import EvaluateParams, Recipe, SliderParams, TrainParams
from storage import Catalog
from storage.locks import exclusive
from tasks import caching
from tasks.bake.bake import BAKES_DIR, BakeProgress, bake_key, waiting
from tasks.progress import StageProgress, _in_prefect_run
from tasks.runlog import listed
from tasks.stage import RunInfo, Stage
from tasks.taste.evaluate import EVALUATE_DIR, _tagger


def slider_spec(recipe: Recipe) -> craft.SliderSpec:
    s = recipe.slider
    neutral = s.target if s.neutral is None else s.neutral
    return craft.SliderSpec(s.target, s.positive_prompt, s.negative_prompt, neutral, tuple(s.anchors))


@task(name="slide")
def slide(inputs: craft.SliderSpec, params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    data = json.loads(params_json)
    train = TrainParams.model_validate(data["train"])
    slider = SliderParams.model_validate(data["slider"])
    name, run = data["name"], RunInfo(run_id, workdir, workers)
    key = bake_key(inputs, params_json, SLIDE.code_version, train.base_model, train)  # type: ignore[arg-type]
    folder = Path(workdir) / BAKES_DIR / f"{name}-{key[:12]}"
    progress = BakeProgress(run.catalog, key, slider.steps, stage="slide")
    logger = get_run_logger()
    try:
        with exclusive(folder / "state", partial(waiting, logger, "slide", folder)):
            result = craft.slide(inputs, train, slider, workdir=Path(workdir), out_dir=folder,
                                 state_dir=folder / "state", name=name, slide_key=key, on_step=progress.step,
                                 on_save=lambda step, path: progress.flush())
    finally:
        progress.close()
    if result.resumed_from_epoch:
        logger.info("slide: resumed from the state saved after step %d", result.resumed_from_epoch)
    logger.info("slide: %d steps at %d px, %d files in %s", result.steps, result.extra["resolution"],
                len(result.files), folder)
    output = BakeOutput(name=name, base_model=result.extra["base_source"], architecture=result.extra["architecture"],
                        base_files=result.extra.get("base_files", {}),
                        files=result.files, bake_key=key, triggers=[], clip_skip=train.clip_skip)
    return StageResult(images=[], n_in=0, n_processed=len(result.losses), payload=output)


def _files(bake: BakeOutput, last: int | None, run: RunInfo) -> dict[int, str]:
    files = {int(k): v for k, v in sorted(bake.files.items())}
    missing = [p for p in files.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"slider {bake.name!r} lacks {listed(run, missing, noun='LoRA file')}: moved or "
                                "deleted since the slide?")
    return {k: files[k] for k in sorted(files)[-last:]} if last else files


def _record(run: RunInfo, bake: BakeOutput, t: taste_craft.SliderTasting, files: dict[int, str], eval_key: str,
            report: Path, strengths: list[float]) -> None:
    with Catalog.open(run.catalog) as cat:
        cat.add_evaluation({
            "eval_key": eval_key, "run_id": run.run_id, "bake_key": bake.bake_key, "name": bake.name,
            "recommended_epoch": t.pick, "weight_min": min(strengths), "weight_max": max(strengths),
            "recommended_file": files.get(t.pick) if t.pick is not None else None,
            "reasons": json.dumps(t.reasons), "flags": json.dumps(t.flags), "loss_shape": None,
            "likeness_method": None, "report_path": str(report), "load_s": t.timings.load_s,
            "render_s": t.timings.render_s, "cells": t.timings.cells,
        }, [{"epoch": v.step, "file": files[v.step], "loss_mean": None, "effect": v.moves, "does_nothing": not v.right,
              "fries_at": None, "over_trained": v.overcooked} for v in t.verdicts], [])
        cat.add_evaluation_scores(eval_key, t.scores)


@task(name="evaluate")
def taste_slider(inputs: BakeOutput, params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    data = json.loads(params_json)
    tagger: judging.TaggerSpec | None = _tagger(data.pop("tagger", None))
    slider = SliderParams.model_validate(data.pop("slider"))
    data.pop("faces", None)  # the face judge (evaluate_params_json) tastes picture LoRAs, not sliders
    params = EvaluateParams.model_validate(data)
    run = RunInfo(run_id, workdir, workers)
    files = _files(inputs, params.last_epochs, run)
    prompts = slider.prompts or [slider.target]
    strengths = sorted({float(w) for w in slider.strengths} | {0.0})
    taster = xyz.Taster(inputs.base_model, inputs.architecture, inputs.clip_skip, params.sampler, params.device)
    cells = len(files) * len(set(strengths) | {1.0}) * len(prompts) * len(params.seeds)  # render_grid adds weight 1
    with StageProgress("evaluate", cells) as progress:
        t = taste_craft.taste_slider(taster, files, prompts, strengths, params, slider, tagger, progress.advance)
    eval_key = digest({"bake": inputs, "params": params_json, "code": SLIDER_TASTE.code_version})[:16]
    outdir = Path(workdir) / EVALUATE_DIR / f"{inputs.name}-{eval_key[:12]}"
    outdir.mkdir(parents=True, exist_ok=True)
    for i, (_prompt, image) in enumerate(t.grids):
        image.save(outdir / f"grid-{i + 1:02d}.png")
    report = outdir / "report.md"
    report.write_text(taste_craft.report_markdown(inputs.name, t, files), encoding="utf-8")
    _record(run, inputs, t, files, eval_key, report, strengths)
    if _in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(report.read_text(encoding="utf-8"), key="slider-taste",
                                 description="Slider: strengths x saves, judged, and the pick")
    get_run_logger().info("evaluate (slider): %s; %d flag(s); report %s",
                          f"step {t.pick}" if t.pick is not None else "nothing to pick", len(t.flags), report)
    return StageResult(images=[], n_in=len(files), n_processed=t.timings.cells, payload=str(report),
                       warnings=list(t.flags))


SLIDE = Stage("slide", slide, caching.code_version(craft, bake_craft, training, step, state, optim, precision,
                                                   *bases.modules(), kohya_lora, sys.modules[__name__]))
SLIDER_TASTE = Stage("evaluate", taste_slider,
                     caching.code_version(taste_craft, xyz, *bases.modules(), judging, sys.modules[__name__]))
