"""Evaluate (rules.md §13): tasting the cake after every bake.

Renders the last saved epochs x LoRA weights x prompts x seeds with the base
model and each epoch's kohya-format file, measures effect / frying / likeness,
reads the loss log, recommends an epoch and a weight range, and writes labelled
grids, a self-contained HTML report, catalog rows and Prefect artifacts.
Input: the bake stage's payload (BakeOutput); optionally the training set
(TrainSet) for likeness and tag statistics. Payload out: the report path.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import get_run_logger, task

from bakery.craft import deepghs
from bakery.craft.bake.bases import load as bases
from bakery.craft.bake.networks import lycoris
from bakery.craft.caption import wd14
from bakery.craft.taste import evaluate as craft
from bakery.craft.taste import ranking, tasting, xyz
from bakery.craft.taste.judges import character as character_judge
from bakery.craft.taste.judges import face as face_judge
from bakery.craft.taste.judges import likeness as likeness_craft
from bakery.craft.taste.judges import panel as judging
from bakery.craft.taste.judges import tags as judges
from bakery.craft.taste.reports import evaluation as report_craft
from bakery.craft.taste.reports import html as report_html
from bakery.craft.taste.reports import judges as judge_report  # noqa: F401 (code version)
from bakery.manifest import BakeOutput, StageResult, TrainSet, digest
from bakery.recipe import EvaluateParams
from storage import Catalog
from tasks import caching
from tasks.progress import StageProgress, _in_prefect_run
from tasks.runlog import listed
from tasks.stage import RunInfo, Stage

EVALUATE_DIR = "evaluate"


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
    scores: list[dict] = field(default_factory=list)  # the judges' scores (catalog `evaluation_scores`)


def _load_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


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


def _train_buckets(train: TrainSet, run: RunInfo) -> list[tuple[tuple[int, int], int]]:
    with Catalog.open(run.catalog) as cat:
        sizes = cat.image_rows([im.image_hash for im in train.images])
    counts = Counter((sizes[im.image_hash]["width"], sizes[im.image_hash]["height"])
                     for im in train.images if im.image_hash in sizes and not im.is_reg)
    return sorted(counts.items())


def _prune_record(train: TrainSet, run: RunInfo) -> list[dict] | None:
    """The tag counts before/after pruning of the prune run that built this training set (None: none recorded).
    A run whose prune was cached records the captions but no counts: the run that pruned has them."""
    want = sorted((t.folder, t.name, t.image_hash, t.caption) for t in train.images)
    with Catalog.open(run.catalog) as cat:
        for run_id in cat.runs_with("train_captions"):
            rows = cat.train_captions(run_id)
            if sorted((r["folder"], r["name"], r["image_hash"], r["caption"]) for r in rows) == want:
                if stats := cat.tag_stats(run_id):
                    return stats
    return None


def judge_setup(train: TrainSet | None, bake: BakeOutput, run: RunInfo,
                tagger: judging.TaggerSpec | None, faces: face_judge.FaceSpec | None = None,
                references: dict[str, list[np.ndarray]] | None = None) -> judging.JudgeSetup:
    """The tagger, the training captions with what prune recorded for them, the face detector and training images."""
    if train is None:
        return judging.JudgeSetup(tagger, faces=faces)  # no training pictures: CCIP has nothing to compare
    captions = [(t.folder, t.caption) for t in train.images if not t.is_reg]
    setup = judging.setup(tagger, captions, list(bake.triggers), _prune_record(train, run))
    setup.faces, setup.face_training = faces, [im for ims in (references or {}).values() for im in ims]
    setup.references = dict(references or {})
    return setup


def taste_inputs(bake: BakeOutput, params: EvaluateParams, run: RunInfo, train: TrainSet | None,
                 tagger: judging.TaggerSpec | None = None, faces: face_judge.FaceSpec | None = None
                 ) -> tasting.TasteInputs:
    """Everything tasting reads: the bake's files (all must exist), the training images, the loss log."""
    if not bake.files:
        raise ValueError(f"bake {bake.name!r} produced no LoRA files to evaluate")
    files = {int(e): p for e, p in sorted(bake.files.items())}
    missing = [p for p in files.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"bake {bake.name!r} lacks {listed(run, missing, noun='LoRA file')}: "
                                "moved or deleted since the bake?")
    epochs = sorted(files)[-params.last_epochs:] if params.last_epochs else sorted(files)
    with Catalog.open(run.catalog) as cat:
        loss_log = cat.bake_log(bake.bake_key)
        validation_log = cat.validation_loss(bake.bake_key)
    last_meta = tasting.read_metadata(files[epochs[-1]])
    references = _references(train, list(bake.triggers), run, params.likeness_references)
    return tasting.TasteInputs(
        bake, files, epochs, tasting.evaluation_prompts(bake, train, params, last_meta), last_meta, train,
        references, loss_log, _train_buckets(train, run) if train else [], validation_log,
        judge_setup(train, bake, run, tagger, faces, references),
    )


def evaluate_bake(
    bake: BakeOutput, params: EvaluateParams, run: RunInfo, code_version: str, train: TrainSet | None = None,
    tagger: judging.TaggerSpec | None = None, faces: face_judge.FaceSpec | None = None,
    character: character_judge.CharacterSpec | None = None,
) -> Evaluation:
    """Read the bake's inputs -> tasting.taste -> write the grids, the report and the catalog rows."""
    if train is not None and train.eval_negatives:  # the composition report's (rules.md §3: mostly monochrome)
        params = params.model_copy(update={"negative_prompt": tasting.with_negatives(params.negative_prompt,
                                                                                     train.eval_negatives)})
    inputs = taste_inputs(bake, params, run, train, tagger, faces)
    inputs.judges.character = character
    n_weights = len({float(w) for w in params.weights} | {0.0, 1.0})
    with StageProgress("evaluate", len(inputs.epochs) * n_weights * len(inputs.prompts) * len(params.seeds)) as progress:
        t = tasting.taste(inputs, params, on_cells=progress.advance)
    eval_key = digest({"bake": bake, "params": params.model_dump(mode="json"), "code": code_version,
                       **({"tagger": tagger} if tagger else {}), **({"faces": faces} if faces else {}),
                       **({"character": character} if character else {})})[:16]
    return _write_tasting(run, bake, inputs, t, eval_key)


def _write_tasting(run: RunInfo, bake: BakeOutput, inputs: tasting.TasteInputs, t: tasting.Tasting,
                   eval_key: str) -> Evaluation:
    outdir = Path(run.workdir) / EVALUATE_DIR / f"{bake.name}-{eval_key[:12]}"
    outdir.mkdir(parents=True, exist_ok=True)
    grid_paths = [outdir / f"grid-{i + 1:02d}.png" for i in range(len(t.grids))]
    for path, (_, png) in zip(grid_paths, t.grids):
        path.write_bytes(png)
    report_path = outdir / "report.html"
    with Catalog.open(run.catalog) as cat:  # the trigger_check stage's verdicts, before the bake
        report = dataclasses.replace(t.report, trigger_check=cat.latest_trigger_checks(bake.triggers))
    report_path.write_text(report_craft.render_html(report), encoding="utf-8")
    metrics = report_craft.metrics_rows(t.evals, t.loss_means)
    rec, timings = t.recommendation, t.timings
    with Catalog.open(run.catalog) as cat:
        cat.add_evaluation(
            {
                "eval_key": eval_key, "run_id": run.run_id, "bake_key": bake.bake_key, "name": bake.name,
                "recommended_epoch": rec.epoch, "weight_min": rec.weight_min, "weight_max": rec.weight_max,
                "recommended_file": t.recommended_file or None,
                "reasons": json.dumps(rec.reasons), "flags": json.dumps(rec.flags), "loss_shape": t.loss.shape,
                "likeness_method": t.report.likeness_method, "report_path": str(report_path),
                "load_s": timings.load_s, "render_s": timings.render_s, "cells": timings.cells,
            },
            [
                {"epoch": e.epoch, "file": inputs.files[e.epoch], "loss_mean": e.loss, "effect": e.effect,
                 "does_nothing": e.does_nothing, "fries_at": e.fries_at, "over_trained": e.over_trained}
                for e in t.evals
            ],
            [{k: r[k] for k in r if k != "loss"} for r in metrics],
        )
        scores = t.judged.score_rows(t.evals) if t.judged else []
        cat.add_evaluation_scores(eval_key, scores)
    summary = report_craft.markdown_summary(t.report, str(report_path), [str(p) for p in grid_paths])
    return Evaluation(eval_key, report_path, grid_paths, rec, t.evals, timings, summary, metrics, scores)


def publish_artifacts(result: Evaluation) -> None:
    """Markdown summary, metrics table and a link to the report on the Prefect dashboard."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    create_markdown_artifact(result.summary_markdown, key="evaluate-summary", description="Evaluation: recommendation and flags")
    create_table_artifact(result.metrics, key="evaluate-metrics", description="Evaluation metrics per epoch and weight")
    if result.scores:
        create_table_artifact(result.scores, key="evaluate-scores",
                              description="Judges' scores per epoch and weight: identity, bleed, flexibility, effect ratio, rank")
    create_link_artifact(result.report_path.resolve().as_uri(), link_text="evaluation report (HTML)", key="evaluate-report",
                         description="Self-contained HTML report with the grids")


@task(name="evaluate")
def evaluate(
    inputs: BakeOutput, params_json: str, workdir: str, run_id: str, workers: int | None, train: TrainSet | None = None,
) -> StageResult:
    data = json.loads(params_json)
    tagger = _tagger(data.pop("tagger", None))
    faces = data.pop("faces", None)
    faces = face_judge.FaceSpec(**{k: v for k, v in faces.items() if k != "sha256"}) if faces else None
    run = RunInfo(run_id, workdir, workers)
    character = _character(data.pop("character", None), run)
    params = EvaluateParams.model_validate(data)
    result = evaluate_bake(inputs, params, run, EVALUATE.code_version, train, tagger, faces, character)
    if _in_prefect_run():
        publish_artifacts(result)
    rec = result.recommendation
    get_run_logger().info(
        "evaluate: %s; %d flag(s); report %s",
        f"epoch {rec.epoch} at weight {rec.weight_min:g}-{rec.weight_max:g}" if rec.epoch is not None else "nothing to recommend",
        len(rec.flags), result.report_path,
    )
    # The guide's alarms (a LoRA that does nothing, one that fries at a low weight) are the stage's warnings.
    return StageResult(images=[], n_in=len(inputs.files), n_processed=result.timings.cells,
                       payload=str(result.report_path), warnings=list(rec.flags))


def _character(cfg: dict | None, run: RunInfo) -> character_judge.CharacterSpec | None:
    """[judges] CCIP and corruption models (stage_params.character_spec); features cached in the work folder."""
    if not cfg:
        return None
    return character_judge.CharacterSpec(
        (cfg["ccip"] or {}).get("path", ""), (cfg["corrupt"] or {}).get("path", ""), cfg["threshold"],
        cfg["corrupt_min"], cfg["fbeta"], cfg["pick"], str(Path(run.workdir) / "cache" / "ccip-features"))


def _tagger(cfg: dict | None) -> judging.TaggerSpec | None:
    if not cfg:
        return None
    return judging.TaggerSpec(str(wd14.resolve_model(cfg["model"])), cfg["general"], cfg["character"])


EVALUATE = Stage(
    "evaluate", evaluate,
    caching.code_version(craft, tasting, xyz, *bases.modules(), lycoris, likeness_craft, report_craft, judges,
                         judging, ranking, judge_report, report_html, face_judge, character_judge, deepghs,
                         sys.modules[__name__]),
)
