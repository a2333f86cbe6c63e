"""Trigger check (rules.md §10, §13): before bake, is each trigger free on the base model?

The base model (`train.base_model`, loaded as bake loads it) renders every
trigger of the training set alone over `trigger_check.seeds` seeds, plus a few
nonsense control words: (triggers + controls) x seeds renders, no LoRA. The
recipe's tagger (`[autotag]`) tags them and/or `evaluate.likeness_model` embeds
them; bakery/craft/taste/trigger_check.py decides. Cached on the triggers, the base
model's and the judges' identity and the parameters. Without a tagger and
without an embedding model the stage is skipped with a note (no stand-in judge).
Results: the catalog's `trigger_checks`, a Prefect markdown artifact, a log line
per trigger every run (a contaminated one as the stage's warning: the run summary
and `bakery status` show it) and the evaluation report's "Trigger check" section.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import task

from bakery.craft import deepghs
from bakery.craft.caption import wd14
from bakery.craft.taste import trigger_check as craft
from bakery.craft.taste import xyz
from bakery.manifest import StageResult, digest
from bakery.recipe import AutotagParams, Recipe, TriggerCheckParams
from bakery.stage_params import trigger_check_params_json
from storage import Catalog
from tasks import caching
from tasks.caption.autotag import model_path
from tasks.progress import _in_prefect_run
from tasks.stage import RunInfo, Stage, run_logger, run_stage, skip_stage


class ContaminatedTrigger(RuntimeError):
    """A contaminated trigger with `trigger_check.error_on_contaminated = true`."""


def skip_note(recipe: Recipe, triggers: list[str]) -> str | None:
    """Why the check does not run (disabled, no triggers, no judge), or None."""
    if not recipe.trigger_check.enabled:
        return "disabled (trigger_check.enabled = false)"
    if not triggers:
        return "the training set has no triggers"
    if not recipe.autotag.model and not recipe.evaluate.likeness_model and not recipe.judges.ccip_model:
        return ("no judge: set [autotag] model (a WD14 tagger), evaluate.likeness_model (a CLIP/DINOv2 folder) or "
                "[judges] ccip_model (a CCIP folder) to check that each trigger is free on the base model")
    return None


def check_triggers(recipe: Recipe, run: RunInfo, triggers: list[str], refresh: bool = False) -> StageResult | None:
    """Run (or fetch from cache) the trigger check; None when skipped, with the note in the catalog and the log."""
    note = skip_note(recipe, triggers)
    if note is not None:
        skip_stage(run, TRIGGER_CHECK.name, note, n_in=len(triggers))
        run_logger().warning("trigger_check: skipped: %s", note)
        return None
    result = run_stage(TRIGGER_CHECK, sorted(set(triggers)), trigger_check_params_json(recipe), run, refresh)
    for verdict in (craft.Verdict(**v) for v in result.payload):  # contaminated ones: the stage's warnings
        if verdict.verdict == craft.FREE:
            run_logger().info("trigger_check: %s", verdict.note)
    return result


def render_all(cfg: dict, prompts: list[str], triggers: list[str], workdir: str) -> list[np.ndarray]:
    """Every prompt x seed on the base model, no LoRA (prompt-major)."""
    from bakery.craft.bake.bases.family import BaseFiles
    from bakery.craft.bake.bases.load import load_base, use_prediction

    p, b = TriggerCheckParams.model_validate(cfg["check"]), cfg["base"]
    base = load_base(b["model"], Path(workdir), architecture=b["architecture"], words=triggers, files=BaseFiles.of(b))
    use_prediction(base, b.get("v_parameterization"), b.get("zero_terminal_snr"))  # the sampler matches the model
    taster = xyz.Taster(base.source, base.architecture, b["clip_skip"], p.sampler, cfg["device"], pipe=base.pipe)
    return taster.render(prompts, p.negative_prompt, list(range(p.seeds)), p.steps, p.cfg_scale, p.size, p.size)


def tag_renders(cfg: dict, images: list[np.ndarray]) -> list[list[str]] | None:
    """The recipe's tagger(s) on every render (thresholds from [autotag]); None without a tagger."""
    if cfg["tagger"] is None:
        return None
    params = AutotagParams.model_validate(cfg["tagger"]["autotag"])
    models = [m for m in (params.model, params.second_model) if m]
    taggers = [wd14.WD14Tagger(model_path(m, cfg["tagger"]["base_dir"])) for m in models]
    th = wd14.Thresholds(params.general_threshold, params.character_threshold, False)
    pics = [Image.fromarray(im) for im in images]
    per_model = [t.predict(pics, params.batch_size) for t in taggers]
    return [[p.tag for p in wd14.merge(*[wd14.select(probs[i], t.tags, th) for t, probs in zip(taggers, per_model)])]
            for i in range(len(images))]


def embed_renders(cfg: dict, images: list[np.ndarray]) -> np.ndarray | None:
    if cfg["embedding"] is None:
        return None
    from bakery.craft.taste.judges.likeness import Embedder

    return Embedder(cfg["embedding"]["model"], xyz.pick_device(cfg["device"])[0]).embed(images)


def ccip_renders(cfg: dict, prompts: list[str], images: list[np.ndarray], seeds: int, workdir: str
                 ) -> dict[str, float] | None:
    """Per prompt: the share of its render pairs CCIP judges the same character; None without a CCIP model."""
    if not cfg.get("ccip"):
        return None
    model = deepghs.CCIP(cfg["ccip"]["path"], "judges.ccip_model", cfg["ccip"]["threshold"],
                         Path(workdir) / "cache" / "ccip-features")
    feats = model.features(images)
    return {p: craft.same_pair_share(model.differences(feats[i * seeds:(i + 1) * seeds]), model.threshold)
            for i, p in enumerate(prompts)}


def _per_prompt(values, prompts: list[str], seeds: int) -> dict | None:  # noqa: ANN001
    return None if values is None else {p: values[i * seeds:(i + 1) * seeds] for i, p in enumerate(prompts)}


def _rows(verdicts: list[craft.Verdict], controls: list[str], tags: dict | None) -> list[dict]:
    rows = [{"trigger": v.trigger, "is_control": False, "verdict": v.verdict, "drawn_tags": json.dumps(v.drawn_tags),
             "tag_shares": json.dumps(v.tag_shares), "similarity": v.similarity,
             "control_similarity": v.control_similarity} for v in verdicts]
    sim = verdicts[0].control_similarity if verdicts else None
    return rows + [{"trigger": c, "is_control": True, "verdict": None, "drawn_tags": None,
                    "tag_shares": json.dumps(craft.tag_shares(tags[c])) if tags else None,
                    "similarity": None, "control_similarity": sim} for c in controls]


def _publish(run: RunInfo, key: str, verdicts: list[craft.Verdict], controls: list[str], cfg: dict,
             tags: dict | None) -> None:
    """Catalog rows and the markdown artifact."""
    with Catalog.open(run.catalog) as cat:
        cat.add_trigger_checks(key, run.run_id, _rows(verdicts, controls, tags))
    judges = [j for j, on in (("the tagger", cfg["tagger"]), ("the image embedding", cfg["embedding"]),
                              ("CCIP", cfg.get("ccip"))) if on]
    seeds = list(range(cfg["check"]["seeds"]))
    if _in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(craft.markdown(verdicts, controls, seeds, judges), key="trigger-check",
                                 description="Trigger check: is each trigger free on the base model?")


@task(name="trigger_check")
def trigger_check(inputs: list[str], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    cfg = json.loads(params_json)
    p = TriggerCheckParams.model_validate(cfg["check"])
    run = RunInfo(run_id, workdir, workers)
    controls = craft.control_words(p.controls, p.control_seed)
    prompts = [*inputs, *controls]
    images = render_all(cfg, prompts, list(inputs), workdir)
    tags = _per_prompt(tag_renders(cfg, images), prompts, p.seeds)
    embeddings = _per_prompt(embed_renders(cfg, images), prompts, p.seeds)
    ccip = ccip_renders(cfg, prompts, images, p.seeds, workdir)
    verdicts = craft.judge(inputs, tags, embeddings, controls, p.threshold, p.embedding_margin, ccip)
    _publish(run, digest({"triggers": inputs, "params": params_json})[:16], verdicts, controls, cfg, tags)
    bad = [v for v in verdicts if v.verdict == craft.CONTAMINATED]
    if bad and p.error_on_contaminated:
        drawn = sorted({t for v in bad for t in v.drawn_tags}) or ["a consistent picture"]
        raise ContaminatedTrigger(
            f"contaminated trigger(s) {', '.join(v.trigger for v in bad)}: the base model draws {', '.join(drawn)}; "
            "rename them (see the log) or set trigger_check.error_on_contaminated = false")
    return StageResult(images=[], n_in=len(inputs), n_processed=len(images), payload=[asdict(v) for v in verdicts],
                       warnings=[v.note for v in bad])


TRIGGER_CHECK = Stage("trigger_check", trigger_check, caching.code_version(craft, deepghs, sys.modules[__name__]))
