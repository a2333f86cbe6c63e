"""Evaluate (rules.md §13): tasting the cake after every bake.

Renders the last saved epochs x LoRA weights x prompts x seeds with the base
model and each epoch's kohya-format file, measures effect / frying / likeness,
reads the loss log, recommends an epoch and a weight range, and writes labelled
grids, a self-contained HTML report, catalog rows and Prefect artifacts.
Input: the bake stage's payload (BakeOutput); optionally the training set
(TrainSet) for likeness and tag statistics. Payload out: the report path.
"""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import get_run_logger, task

from bakery.craft import eval_report as report_craft
from bakery.craft import evaluate as craft
from bakery.craft import likeness as likeness_craft
from bakery.craft import xyz
from bakery.manifest import BakeOutput, StageResult, TrainSet, digest
from bakery.recipe import EvaluateParams
from storage import Catalog
from tasks import caching
from tasks.progress import StageProgress, _in_prefect_run
from tasks.runlog import listed
from tasks.stage import RunInfo, Stage, skip_stage

EVALUATE_DIR = "evaluate"
META_PREFIXES = ("ss_", "modelspec.", "sshs_")


@dataclass
class Evaluation:
    eval_key: str
    report_path: Path
    grid_paths: list[Path]
    recommendation: craft.Recommendation
    evals: list[craft.EpochEval]
    timings: xyz.Timings
    summary_markdown: str
    metrics: list[dict]


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _load_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _prompt_trigger(prompt: str, triggers: list[str]) -> str | None:
    tags = craft.caption_tags(prompt)
    return next((t for t in triggers if t in tags), None)


def _references(train: TrainSet | None, triggers: list[str], run: RunInfo, limit: int) -> dict[str, list[np.ndarray]]:
    """Up to `limit` training images per trigger (not regularisation images), read from the content store."""
    if train is None:
        return {}
    store = run.store
    refs: dict[str, list[np.ndarray]] = {}
    for trig in triggers:
        chosen = [im for im in sorted(train.images, key=lambda i: (i.folder, i.name))
                  if not im.is_reg and trig in craft.caption_tags(im.caption) and store.has(im.image_hash)][:limit]
        if chosen:
            refs[trig] = [_load_rgb(store.read_bytes(im.image_hash)) for im in chosen]
    return refs


def _likeness(
    images: dict[xyz.CellKey, np.ndarray], prompts: list[str], triggers: list[str],
    refs: dict[str, list[np.ndarray]], embedder: likeness_craft.Embedder | None,
) -> dict[tuple[int, float], float]:
    """Likeness per (epoch, weight): per trigger with references, its prompts' images vs its training images; mean over triggers."""
    by_trigger = {i: _prompt_trigger(p, triggers) for i, p in enumerate(prompts)}
    keys = sorted(images)
    if embedder is not None:
        gen_emb = dict(zip(keys, embedder.embed([images[k] for k in keys])))
        ref_emb = {t: embedder.embed(r) for t, r in refs.items()}
    out: dict[tuple[int, float], list[float]] = {}
    for epoch, weight in sorted({k[:2] for k in keys}):
        for trig, ref in refs.items():
            cells = [k for k in keys if k[:2] == (epoch, weight) and by_trigger[k[2]] == trig]
            if not cells:
                continue
            if embedder is not None:
                score = craft.embedding_likeness(np.stack([gen_emb[k] for k in cells]), ref_emb[trig])
            else:
                score = craft.histogram_likeness([images[k] for k in cells], ref)
            out.setdefault((epoch, weight), []).append(score)
    return {k: float(np.mean(v)) for k, v in out.items()}


def _train_tag_stats(train: TrainSet) -> dict[str, dict[str, int]]:
    stats: dict[str, Counter] = {}
    for im in train.images:
        stats.setdefault(f"{im.kohya_dir}" + (" (reg)" if im.is_reg else ""), Counter()).update(craft.caption_tags(im.caption))
    return {k: dict(v) for k, v in sorted(stats.items())}


def _train_buckets(train: TrainSet, run: RunInfo) -> list[tuple[tuple[int, int], int]]:
    with Catalog.open(run.catalog) as cat:
        sizes = cat.image_rows([im.image_hash for im in train.images])
    counts = Counter((sizes[im.image_hash]["width"], sizes[im.image_hash]["height"])
                     for im in train.images if im.image_hash in sizes and not im.is_reg)
    return sorted(counts.items())


def evaluate_bake(
    bake: BakeOutput, params: EvaluateParams, run: RunInfo, code_version: str, train: TrainSet | None = None,
) -> Evaluation:
    if not bake.files:
        raise ValueError(f"bake {bake.name!r} produced no LoRA files to evaluate")
    files = {int(e): p for e, p in sorted(bake.files.items())}
    missing = [p for p in files.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"bake {bake.name!r} lacks {listed(run, missing, noun='LoRA file')}: "
                                "moved or deleted since the bake?")
    epochs = sorted(files)[-params.last_epochs:] if params.last_epochs else sorted(files)
    eval_key = digest({"bake": bake, "params": params.model_dump(mode="json"), "code": code_version})[:16]
    outdir = Path(run.workdir) / EVALUATE_DIR / f"{bake.name}-{eval_key[:12]}"
    outdir.mkdir(parents=True, exist_ok=True)

    last_meta = read_metadata(files[epochs[-1]])
    triggers = list(bake.triggers)
    counts = craft.tag_counts_by_trigger(
        triggers,
        captions=[im.caption for im in train.images if not im.is_reg] if train else None,
        tag_frequency=report_craft.parse_tag_frequency(last_meta),
    )
    prompts = list(params.prompts) or craft.default_prompts(triggers, counts, params.tags_per_prompt)
    if not prompts:
        raise ValueError("no evaluation prompts: set evaluate.prompts in the recipe, or give the concepts trigger words")

    taster = xyz.Taster(bake.base_model, bake.architecture, bake.clip_skip, params.sampler, params.device)
    grid_weights = sorted({float(w) for w in params.weights})
    n_weights = len(set(grid_weights) | {0.0, 1.0})
    total = len(epochs) * n_weights * len(prompts) * len(params.seeds)
    with StageProgress("evaluate", total) as progress:
        grid = xyz.render_grid(
            taster, {e: files[e] for e in epochs}, grid_weights, prompts, params.seeds, params.negative_prompt,
            params.steps, params.cfg_scale, params.width, params.height, on_cells=progress.advance,
        )

    evals = []
    for e in epochs:
        cells = {k[1:]: v for k, v in grid.images.items() if k[0] == e}
        evals.append(craft.evaluate_epoch(e, cells, params.effect_min, params.fry_threshold, params.fry_max_weight))

    # Likeness: against the training images of each trigger's group, only when they were handed over.
    refs = _references(train, triggers, run, params.likeness_references)
    embedder = None
    if params.likeness_model:
        embedder = likeness_craft.Embedder(params.likeness_model, taster.device)
    if refs:
        method = embedder.method if embedder else "histogram"
        scores = _likeness(grid.images, prompts, triggers, refs, embedder)
        for ev in evals:
            ev.likeness_by_weight = {w: s for (e, w), s in scores.items() if e == ev.epoch}
        note = ("cosine similarity of image embeddings to the nearest training image" if embedder else
                "colour-histogram intersection with the nearest training image (a cheap proxy: palette, not identity; "
                "set evaluate.likeness_model to a local CLIP/DINOv2 folder for an embedding score)")
        note += f", {sum(len(r) for r in refs.values())} training images of {len(refs)} trigger(s)"
    else:
        method = None
        note = ("not measured: no training images of the triggers were handed to evaluate" if train is None
                else "not measured: no training image carries a trigger of the evaluation prompts")

    with Catalog.open(run.catalog) as cat:
        loss_means = craft.epoch_losses(cat.bake_log(bake.bake_key))
    for ev in evals:
        ev.loss = loss_means.get(ev.epoch)
    loss = craft.loss_choice(loss_means, params.loss_rise_tolerance, params.loss_flat_tolerance)
    total_epochs = int(last_meta.get("ss_num_epochs") or 0) if str(last_meta.get("ss_num_epochs", "")).isdigit() else 0
    total_epochs = max(total_epochs, max(files))
    rec = craft.recommend(evals, loss, total_epochs, grid_weights, method)

    grid_paths, grids = [], []
    for i, prompt in enumerate(prompts):
        layout = xyz.make_grid(grid.images, epochs, grid_weights, i, prompt, params.seeds)
        buf = io.BytesIO()
        layout.image.save(buf, format="PNG")
        path = outdir / f"grid-{i + 1:02d}.png"
        path.write_bytes(buf.getvalue())
        grid_paths.append(path)
        grids.append((prompt, buf.getvalue()))

    rec_file = files[rec.epoch] if rec.epoch is not None else files[epochs[-1]]
    meta = read_metadata(rec_file) if rec.epoch is not None else last_meta
    tag_stats = _train_tag_stats(train) if train else report_craft.parse_tag_frequency(meta)
    buckets, bsource = report_craft.parse_bucket_info(meta), "ss_bucket_info of the file"
    if not buckets and train:
        buckets, bsource = _train_buckets(train, run), "sizes of the prepared training images"
    timings = grid.timings
    data = report_craft.ReportData(
        name=bake.name, base_model=bake.base_model, architecture=bake.architecture, triggers=triggers,
        recommendation=rec, evals=evals, loss_means=loss_means, loss_choice=loss, grids=grids,
        likeness_method=method, likeness_note=note, tag_stats=tag_stats, buckets=buckets, buckets_source=bsource,
        metadata={k: v for k, v in meta.items() if k.startswith(META_PREFIXES)},
        recommended_file=rec_file if rec.epoch is not None else "",
        settings={"epochs": ", ".join(map(str, epochs)), "weights": ", ".join(f"{w:g}" for w in grid_weights),
                  "seeds": ", ".join(map(str, params.seeds)), "sampler": params.sampler, "steps": params.steps,
                  "cfg": params.cfg_scale, "size": f"{params.width}x{params.height}", "clip skip": bake.clip_skip,
                  "negative prompt": params.negative_prompt, "device": taster.device},
        timings={"render s": timings.render_s, "LoRA load s": timings.load_s, "reload share": timings.reload_share,
                 "images": timings.cells},
    )
    report_path = outdir / "report.html"
    report_path.write_text(report_craft.render_html(data), encoding="utf-8")
    metrics = report_craft.metrics_rows(evals, loss_means)

    with Catalog.open(run.catalog) as cat:
        cat.add_evaluation(
            {
                "eval_key": eval_key, "run_id": run.run_id, "bake_key": bake.bake_key, "name": bake.name,
                "recommended_epoch": rec.epoch, "weight_min": rec.weight_min, "weight_max": rec.weight_max,
                "recommended_file": rec_file if rec.epoch is not None else None,
                "reasons": json.dumps(rec.reasons), "flags": json.dumps(rec.flags), "loss_shape": loss.shape,
                "likeness_method": method, "report_path": str(report_path),
                "load_s": timings.load_s, "render_s": timings.render_s, "cells": timings.cells,
            },
            [
                {"epoch": e.epoch, "file": files[e.epoch], "loss_mean": e.loss, "effect": e.effect,
                 "does_nothing": e.does_nothing, "fries_at": e.fries_at, "over_trained": e.over_trained}
                for e in evals
            ],
            [{k: r[k] for k in r if k != "loss"} for r in metrics],
        )
    summary = report_craft.markdown_summary(data, str(report_path), [str(p) for p in grid_paths])
    return Evaluation(eval_key, report_path, grid_paths, rec, evals, timings, summary, metrics)


def publish_artifacts(result: Evaluation) -> None:
    """Markdown summary, metrics table and a link to the report on the Prefect dashboard."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    create_markdown_artifact(result.summary_markdown, key="evaluate-summary", description="Evaluation: recommendation and flags")
    create_table_artifact(result.metrics, key="evaluate-metrics", description="Evaluation metrics per epoch and weight")
    create_link_artifact(result.report_path.resolve().as_uri(), link_text="evaluation report (HTML)", key="evaluate-report",
                         description="Self-contained HTML report with the grids")


def untasted_note(bake: BakeOutput) -> str | None:
    """Why this bake cannot be evaluated yet (a LoHa/LoKr network), read from its last file's keys and metadata."""
    from safetensors import safe_open

    last = Path(bake.files[max(bake.files)]) if bake.files else None
    if last is None or not last.is_file():
        return None  # evaluate itself says what is missing
    with safe_open(str(last), framework="pt") as f:
        network = craft.untasted_network(f.keys(), f.metadata() or {})
    return craft.untasted_note(network, str(last.parent), bake.triggers) if network else None


def skip_untasted(run: RunInfo, bake: BakeOutput) -> bool:
    """Skip evaluate for a bake it cannot load (LoHa/LoKr), saying so in the log, the catalog and an artifact."""
    note = untasted_note(bake)
    if note is None:
        return False
    skip_stage(run, EVALUATE.name, note, n_in=len(bake.files))
    get_run_logger().warning("evaluate: skipped: %s", note)
    if _in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        files = "\n".join(f"- epoch {e}: `{p}`" for e, p in sorted(bake.files.items()))
        create_markdown_artifact(f"# Evaluate: skipped\n\n{note}.\n\n{files}\n", key="evaluate-summary",
                                 description="Evaluation: skipped for this network type")
    return True


@task(name="evaluate")
def evaluate(
    inputs: BakeOutput, params_json: str, workdir: str, run_id: str, workers: int | None, train: TrainSet | None = None,
) -> StageResult:
    params = EvaluateParams.model_validate_json(params_json)
    run = RunInfo(run_id, workdir, workers)
    result = evaluate_bake(inputs, params, run, EVALUATE.code_version, train)
    if _in_prefect_run():
        publish_artifacts(result)
    rec = result.recommendation
    get_run_logger().info(
        "evaluate: %s; %d flag(s); report %s",
        f"epoch {rec.epoch} at weight {rec.weight_min:g}-{rec.weight_max:g}" if rec.epoch is not None else "nothing to recommend",
        len(rec.flags), result.report_path,
    )
    return StageResult(images=[], n_in=len(inputs.files), n_processed=result.timings.cells, payload=str(result.report_path))


EVALUATE = Stage(
    "evaluate", evaluate,
    caching.code_version(craft, xyz, likeness_craft, report_craft, sys.modules[__name__]),
)
