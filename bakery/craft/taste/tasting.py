"""Tasting a bake (rules.md §13): one call from the LoRA files to the recommendation and the report.

`taste` renders the XYZ grid (epochs x weights x prompts x seeds) with the base model and
each epoch's kohya-format file, judges every epoch (effect, frying, likeness, loss),
recommends an epoch and a weight range, and lays out the grids and the report's data.
No Prefect, no catalog: the evaluate task hands in what it read and writes what comes back.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from bakery.craft.bake.bases import prediction
from bakery.craft.bake.bases.family import BaseFiles
from bakery.craft.taste import evaluate as craft
from bakery.craft.taste import ranking, xyz
from bakery.craft.taste.judges import character
from bakery.craft.taste.judges import likeness as likeness_craft
from bakery.craft.taste.judges import panel as judging
from bakery.craft.taste.reports import evaluation as report_craft
from bakery.manifest import BakeOutput, TrainSet

if TYPE_CHECKING:
    from bakery.recipe import EvaluateParams

META_PREFIXES = ("ss_", "modelspec.", "sshs_")


@dataclass
class TasteInputs:
    """What the evaluate task read for one bake."""

    bake: BakeOutput
    files: dict[int, str]  # every saved epoch -> its file (checked to exist)
    epochs: list[int]  # the epochs to taste
    prompts: list[str]  # see `evaluation_prompts`
    last_meta: dict[str, str]  # the last epoch file's metadata
    train: TrainSet | None = None  # the training set: captions, tag statistics
    references: dict[str, list[np.ndarray]] = field(default_factory=dict)  # trigger -> its training images
    loss_log: list[dict] = field(default_factory=list)  # the bake's `bake_log` rows
    train_buckets: list[tuple[tuple[int, int], int]] = field(default_factory=list)  # sizes of the training images
    validation_log: list[dict] = field(default_factory=list)  # the bake's `validation_loss` rows
    judges: judging.JudgeSetup = field(default_factory=judging.JudgeSetup)  # the tagger and what prune recorded


@dataclass
class Tasting:
    evals: list[craft.EpochEval]
    loss_means: dict[int, float]
    loss: craft.LossChoice
    recommendation: craft.Recommendation
    recommended_file: str  # "" when nothing is recommended
    grids: list[tuple[str, bytes]]  # (prompt, PNG) per prompt
    report: report_craft.ReportData
    timings: xyz.Timings
    validation: craft.ValidationCurve | None = None
    judged: judging.Judged | None = None


def with_negatives(negative_prompt: str, extra: list[str]) -> str:
    """The negative prompt with `extra` tags appended, each once (the composition's `monochrome, greyscale`)."""
    have = {t.strip() for t in negative_prompt.split(",")}
    return ", ".join([p for p in (negative_prompt.strip(),) if p] + [t for t in extra if t not in have])


def read_metadata(path: str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def taste(inputs: TasteInputs, params: EvaluateParams, on_cells: Callable[[int], None] = lambda n: None) -> Tasting:
    """Render, judge, recommend: everything the report shows."""
    bake, epochs, prompts, last_meta = inputs.bake, inputs.epochs, inputs.prompts, inputs.last_meta
    triggers = list(bake.triggers)
    taster = xyz.Taster(bake.base_model, bake.architecture, bake.clip_skip, params.sampler, params.device,
                        prediction=prediction.from_lora_metadata(last_meta),  # sampled as it was trained
                        files=BaseFiles(**bake.base_files))
    grid_weights = sorted({float(w) for w in params.weights})
    grid = xyz.render_grid(
        taster, {e: inputs.files[e] for e in epochs}, grid_weights, prompts, params.seeds, params.negative_prompt,
        params.steps, params.cfg_scale, params.width, params.height, on_cells=on_cells,
        extra_prompts=judging.flexibility_prompts(inputs.judges, triggers, params),
    )
    evals = [craft.evaluate_epoch(e, {k[1:]: v for k, v in grid.images.items() if k[0] == e}, params.effect_min,
                                  params.fry_threshold, params.fry_max_weight) for e in epochs]
    method, note = judge_likeness(evals, grid.images, prompts, triggers, inputs, params, taster.device)
    loss_means = craft.epoch_losses(inputs.loss_log)
    for ev in evals:
        ev.loss = loss_means.get(ev.epoch)
    loss = craft.loss_choice(loss_means, params.loss_rise_tolerance, params.loss_flat_tolerance)
    validation = craft.validation_curve(inputs.validation_log, params.loss_rise_tolerance)
    judged = judging.judge(taster, grid.images, grid.extra, prompts, triggers, evals, inputs.judges, params)
    total = total_epochs(last_meta, inputs.files)
    rec = craft.recommend(evals, loss, total, grid_weights, method, validation)
    rec = ranking.ranked_recommendation(rec, judged.ranking, evals, loss, total, grid_weights, method, validation)
    spec = inputs.judges.character or character.CharacterSpec()
    rec = character.with_fbeta(rec, judged.character.fbeta, spec.pick, spec.fbeta)
    rec.flags += judged.flags
    rec_file = inputs.files[rec.epoch] if rec.epoch is not None else ""
    grids = [(prompt, _png(xyz.make_grid(grid.images, epochs, grid_weights, i, prompt, params.seeds).image))
             for i, prompt in enumerate(prompts)]
    tasting = Tasting(evals, loss_means, loss, rec, rec_file, grids, None, grid.timings,  # type: ignore[arg-type]
                      validation=validation, judged=judged)
    meta = read_metadata(rec_file) if rec_file else last_meta
    tasting.report = report_data(inputs, params, tasting, meta, method, note, taster.device,
                                 prediction=taster.prediction.describe())
    return tasting


def evaluation_prompts(bake: BakeOutput, train: TrainSet | None, params: EvaluateParams,
                       last_meta: Mapping[str, str]) -> list[str]:
    """The recipe's prompts, else each trigger alone and with its group's most frequent kept tags."""
    triggers = list(bake.triggers)
    counts = craft.tag_counts_by_trigger(
        triggers,
        captions=[im.caption for im in train.images if not im.is_reg] if train else None,
        tag_frequency=report_craft.parse_tag_frequency(dict(last_meta)),
    )
    prefix = [t.strip() for t in params.prompt_prefix.split(",") if t.strip()]
    counts = {trig: {t: c for t, c in tags.items() if t not in prefix} for trig, tags in counts.items()}
    prompts = list(params.prompts) or craft.default_prompts(triggers, counts, params.tags_per_prompt)
    if not prompts:
        raise ValueError("no evaluation prompts: set evaluate.prompts in the recipe, or give the concepts trigger words")
    return [", ".join([*prefix, p]) for p in prompts]  # e.g. Pony's score tags first


def total_epochs(last_meta: Mapping[str, str], files: Mapping[int, str]) -> int:
    """How many epochs the bake was set to train (its metadata), at least the last one saved."""
    n = str(last_meta.get("ss_num_epochs", ""))
    return max(int(n) if n.isdigit() else 0, max(files))


def judge_likeness(evals: list[craft.EpochEval], images: dict[xyz.CellKey, np.ndarray], prompts: list[str],
                   triggers: list[str], inputs: TasteInputs, params: EvaluateParams,
                   device: str) -> tuple[str | None, str]:
    """Likeness to the training images of each trigger's group, set on `evals`; (method, note for the report)."""
    refs = inputs.references
    embedder = likeness_craft.Embedder(params.likeness_model, device) if params.likeness_model else None
    if not refs:
        return None, ("not measured: no training images of the triggers were handed to evaluate" if inputs.train is None
                      else "not measured: no training image carries a trigger of the evaluation prompts")
    scores = likeness(images, prompts, triggers, refs, embedder)
    for ev in evals:
        ev.likeness_by_weight = {w: s for (e, w), s in scores.items() if e == ev.epoch}
    note = ("cosine similarity of image embeddings to the nearest training image" if embedder else
            "colour-histogram intersection with the nearest training image (a cheap proxy: palette, not identity; "
            "set evaluate.likeness_model to a local CLIP/DINOv2 folder for an embedding score)")
    note += f", {sum(len(r) for r in refs.values())} training images of {len(refs)} trigger(s)"
    return (embedder.method if embedder else "histogram"), note


def prompt_trigger(prompt: str, triggers: list[str]) -> str | None:
    tags = craft.caption_tags(prompt)
    return next((t for t in triggers if t in tags), None)


def likeness(
    images: dict[xyz.CellKey, np.ndarray], prompts: list[str], triggers: list[str],
    refs: dict[str, list[np.ndarray]], embedder: likeness_craft.Embedder | None,
) -> dict[tuple[int, float], float]:
    """Likeness per (epoch, weight): per trigger with references, its prompts' images vs its training images; mean over triggers."""
    by_trigger = {i: prompt_trigger(p, triggers) for i, p in enumerate(prompts)}
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


def train_tag_stats(train: TrainSet) -> dict[str, dict[str, int]]:
    stats: dict[str, Counter] = {}
    for im in train.images:
        stats.setdefault(f"{im.kohya_dir}" + (" (reg)" if im.is_reg else ""), Counter()).update(craft.caption_tags(im.caption))
    return {k: dict(v) for k, v in sorted(stats.items())}


def report_data(inputs: TasteInputs, params: EvaluateParams, t: Tasting, meta: Mapping[str, str],
                method: str | None, note: str, device: str, prediction: str = "") -> report_craft.ReportData:
    """What the HTML report and the summary show; `meta` is the recommended (else the last) file's metadata."""
    bake, train = inputs.bake, inputs.train
    tag_stats = train_tag_stats(train) if train else report_craft.parse_tag_frequency(dict(meta))
    buckets, bsource = report_craft.parse_bucket_info(dict(meta)), "ss_bucket_info of the file"
    if not buckets and train:
        buckets, bsource = inputs.train_buckets, "sizes of the prepared training images"
    grid_weights = sorted({float(w) for w in params.weights})
    return report_craft.ReportData(
        name=bake.name, base_model=bake.base_model, architecture=bake.architecture, triggers=list(bake.triggers),
        recommendation=t.recommendation, evals=t.evals, loss_means=t.loss_means, loss_choice=t.loss, grids=t.grids,
        likeness_method=method, likeness_note=note, tag_stats=tag_stats, buckets=buckets, buckets_source=bsource,
        metadata={k: v for k, v in meta.items() if k.startswith(META_PREFIXES)},
        recommended_file=t.recommended_file, validation=t.validation,
        settings={"epochs": ", ".join(map(str, inputs.epochs)), "weights": ", ".join(f"{w:g}" for w in grid_weights),
                  "seeds": ", ".join(map(str, params.seeds)), "sampler": params.sampler, "steps": params.steps,
                  "cfg": params.cfg_scale, "size": f"{params.width}x{params.height}", "clip skip": bake.clip_skip,
                  "negative prompt": params.negative_prompt, "device": device,
                  **({"prediction": prediction} if prediction else {})},
        judges=t.judged, timings={"render s": t.timings.render_s, "LoRA load s": t.timings.load_s,
                 "reload share": t.timings.reload_share, "images": t.timings.cells},
    )


def _png(image) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
