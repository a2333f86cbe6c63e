"""Prune: captions from their sources, cleaned, triggered and pruned per group; repeats per folder.

The stage hands the bake stage a TrainSet (bakery/manifest.py). Its cache key
holds the image hashes, the recipe's caption/concept/repeat settings and a
digest of the caption sources (tags and sidecars in the catalog), so editing a
sidecar or re-tagging re-runs it. Tag statistics before and after pruning and
the run's training set are written to the catalog.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bakery.caption_sources import caption_settings, crop_framings, gather_sources
from bakery.craft import edits as edits_craft
from bakery.craft.caption import composition as composition_craft
from bakery.craft.caption import holdout as holdout_craft
from bakery.craft.caption import judged as judged_craft
from bakery.craft.caption import prune as prune_craft
from bakery.craft.caption import repeats as repeats_craft
from bakery.craft.caption import tags as tags_craft
from bakery.craft.caption import trainset as craft
from bakery.kohya_export import concept_spec
from bakery.manifest import ImageRef, StageResult, TrainImage, TrainSet, digest
from bakery.recipe import Concept, RepeatsParams, TrainParams, ValidationParams
from bakery.report import COMPOSITION_LISTING, COMPOSITION_REPORT, name_list
from storage import Catalog
from tasks import caching
from tasks.caption import heads
from tasks.runlog import write_full
from tasks.stage import RunInfo, Stage


@dataclass(frozen=True)
class PruneInput:
    images: list[ImageRef]
    sources_digest: str  # tags and sidecars of these images and their originals
    portraits: tuple[str, ...] = ()  # pictures framed as portraits, for the misc concept ([crops] portraits_to_misc)

    def subjects(self) -> list[str]:
        return [r.name for r in self.images]


@task(name="caption-sources", cache_policy=NO_CACHE)
def caption_sources(images: list[ImageRef], workdir: str, portraits: list[str] | None = None) -> PruneInput:
    """The prune stage's input: the images plus a digest of their caption sources (read fresh each run)."""
    with Catalog.open(RunInfo("", workdir).catalog) as cat:
        side, rows = gather_sources(cat, images)
        framings = crop_framings(cat, images)
        kinds = cat.origins(sorted(side))
    # The source kinds feed the composition report: a changed kind re-runs the stage.
    payload = {h: [side[h], [(r["tag"], r["category"], r["origin"], r["confidence"]) for r in rows[h]]]
               + ([framings[h]] if framings[h] else []) + [kinds.get(h, ([], ""))[0]] for h in side}
    return PruneInput(sorted(images), digest(payload), tuple(sorted(portraits or ())))


@task(name="prune")
def prune(inputs: PruneInput, params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    """Read the pictures' caption sources -> craft.build_trainset -> write tag stats, the set, artifacts."""
    cfg = json.loads(params_json)
    run = RunInfo(run_id, workdir, workers)
    images = sorted(inputs.images)
    concepts = [concept_spec(Concept.model_validate(c)) for c in cfg["concepts"]]
    if not concepts:
        get_run_logger().info("prune: the recipe has no [[concepts]]: no training set")
        return StageResult(images=images, n_in=len(images), payload=TrainSet([], []))
    with Catalog.open(run.catalog) as cat:
        side, rows = gather_sources(cat, images)
        framings = crop_framings(cat, images)
        counts = cat.tag_post_counts(None)
        kinds = cat.origins(sorted({r.hash for r in images}))
    pictures = {r.name: craft.Picture(r.name, r.hash, r.mask, tuple(side[r.hash]), tuple(rows[r.hash]),
                                      framings[r.hash], tuple(kinds.get(r.hash, ([], ""))[0])) for r in images}
    forced = {n: cfg["misc_concept"] for n in inputs.portraits} if "misc_concept" in cfg else {}
    judged = judge_pictures(cfg.get("judges"), images, run)
    try:
        built = craft.build_trainset(concepts, pictures, caption_settings(cfg["captions"]), repeat_settings(cfg), counts,
                                     holdout_settings(cfg.get("validation", {})),
                                     [edits_craft.Edit.from_key(e) for e in cfg.get("edits", [])], forced, judged)
    except craft.CaptionError as exc:
        if exc.names:  # the message shows the first few
            write_full(run, f"{len(exc.names)} pictures at fault", exc.names)
        raise
    notes, advice = plan_advice(cfg, concepts, built)
    _write(run, built)
    write_composition(run, built, notes)
    by_name = {r.name: r for r in images}
    # The guide's checks (outfits under 8 pictures, step caps, long captions, rare tags...) go with the result:
    # recorded with every run, cached ones too (tasks/stage.py).
    built.trainset.warnings.extend(advice)
    return StageResult(images=[by_name[n] for n in built.trained], skips=built.skips, n_in=len(images),
                       n_processed=len(built.captions), payload=built.trainset,
                       warnings=[*built.trainset.warnings, *screening_warnings(built.decisions),
                                 *(judged[0].notes if judged else [])])


def judge_pictures(cfg: dict | None, images: list[ImageRef], run: RunInfo
                   ) -> tuple[judged_craft.Judgements, judged_craft.JudgeSettings] | None:
    """The [judges] models over the pictures (stage_params.dataset_judges; None: no dataset model set)."""
    if not cfg:
        get_run_logger().info("prune: no [judges] dataset model (ccip_model, monochrome_model, completeness_model, "
                              "kind_model, aesthetic_model): the pictures are screened by their tags only")
        return None
    hashes = sorted({r.hash for r in images})
    pictures = [Image.open(io.BytesIO(run.store.read_bytes(h))) for h in hashes]
    models = {k: (m or {}).get("path") for k, m in cfg["models"].items()}
    cache = Path(run.workdir) / "cache" / "ccip-features"
    found = judged_craft.judge_pictures(models, hashes, pictures, cfg["ccip_threshold"], cache)
    if cfg.get("heads"):
        judged_craft.judge_heads(found, heads.head_crops(cfg["heads"], hashes, run), models.get("ccip"),
                                 cfg["ccip_threshold"], cache)
    elif cfg["actions"].get("several_characters", "off") != "off":
        found.notes.append("several characters: not counted: set [crops] head_model (or person_model), the "
                           "detector that counts the heads ([judges] screen_several_characters)")
        get_run_logger().info("prune: %s", found.notes[-1])
    return found, judged_craft.JudgeSettings(cfg["actions"], cfg["classifier_threshold"], cfg["aesthetic_min"])


def step_flags(cfg: dict) -> dict[str, bool]:
    """Which of the guide's step multipliers apply (rules.md §8, §12), from the recipe's [repeats] and [train]."""
    rep, train = RepeatsParams.model_validate(cfg["repeats"]), cfg["train"]
    return {"adamw": rep.adamw_double and train["optimizer"] in repeats_craft.ADAMW_LIKE,
            "ia3": train.get("network_type") == "ia3", "sdxl": rep.sdxl,
            "snr_or_ip_noise": rep.snr_multiplier and (train["min_snr_gamma"] > 0 or train["ip_noise_gamma"] > 0),
            "old_anime": rep.old_anime}


def plan_advice(cfg: dict, concepts: list, built: craft.TrainSetBuild) -> tuple[list[str], list[str]]:
    """(notes, warnings) of the plan: the step multipliers applied, the batch-size lr, a style LoRA's numbers."""
    train = TrainParams.model_validate(cfg["train"])
    style = {c.name for c in concepts if c.style.startswith("style_")}
    styles = {s.concept: s.pictures for s in built.composition.concepts if s.concept in style}
    notes, warnings = repeats_craft.rate_advice(train.optimizer, train.network_type, train.batch_size,
                                                train.written_learning_rate, train.batch_lr_factor, styles)
    return repeats_craft.step_notes(**step_flags(cfg)) + notes, warnings




def holdout_settings(data: dict) -> holdout_craft.HoldOutSettings:
    v = ValidationParams.model_validate(data)
    return holdout_craft.HoldOutSettings(v.enabled, v.per_group, v.min_group, v.max_share)


def repeat_settings(cfg: dict) -> craft.RepeatSettings:
    rep, train = RepeatsParams.model_validate(cfg["repeats"]), cfg["train"]
    mult = repeats_craft.multiplier(**step_flags(cfg))
    return craft.RepeatSettings(train["epochs"], train["optimizer"], mult, rep.main_concept, rep.retro_cut)


def _write(run: RunInfo, built: craft.TrainSetBuild) -> None:
    """The set and its tag counts into the catalog; the repeats in the log and as artifacts (the warnings: the
    stage's result)."""
    plan, train_images = built.plan, built.trainset.images
    with Catalog.open(run.catalog) as cat:
        cat.add_tag_stats(run.run_id, built.stats)
        cat.add_train_captions(run.run_id, train_caption_rows(train_images))
        cat.add_caption_decisions(run.run_id, built.decisions)
        cat.add_validation_pictures(run.run_id, [
            {"folder": t.folder, "name": t.name, "image_hash": t.image_hash, "caption": t.caption,
             "held_out": built.trainset.validation_held_out} for t in built.trainset.validation
        ])
    logger = get_run_logger()
    logger.info(
        "prune: %s; steps per epoch per concept %s; %d steps over %d epochs (before batch size)",
        ", ".join(f"{f.repeats}_{f.folder} ({f.images} img, {f.steps_per_epoch}/epoch)" for f in plan.folders),
        plan.per_concept, plan.total_steps, plan.epochs,
    )
    if built.holdout.chosen:
        logger.info("prune: %s", holdout_craft.note(built.holdout))
    create_table_artifact(table=plan.table(), key="repeats", description=(
        f"Repeats per folder (multiplier {plan.multiplier:.3g}); total {plan.total_steps} steps over "
        f"{plan.epochs} epochs before batch size" + ("".join(f"\n- {w}" for w in plan.warnings))))
    create_table_artifact(table=stats_table(built.stats), key="tag-stats",
                          description="Tag counts per group, before and after pruning")


def screening_warnings(decisions: list[dict], shown: int = 5) -> list[str]:
    """One line per screening kind that flagged pictures or yielded to a keep edit (skips are listed as skips)."""
    by: dict[tuple[str, str], list[str]] = {}
    for d in decisions:
        if d["rule"].startswith(("screen:", "judge:")) and d["action"] in ("flag", "keep"):
            tags = ", ".join(t for t in d["tags"] if not t.startswith("typical:"))
            by.setdefault((d["rule"].split(":", 1)[1], d["action"]), []).append(f"{d['name']} ({tags})")
    verb = {"flag": "flagged", "keep": "kept by a keep edit, though screened"}
    return [f"screening (rules.md §3): {len(names)} picture(s) {verb[action]} for {kind}: {name_list(names, shown)}"
            for (kind, action), names in sorted(by.items())]


def write_composition(run: RunInfo, built: craft.TrainSetBuild, plan_notes: list[str]) -> None:
    """reports/composition.md and .json (the run summary and `bakery status` read the JSON), the artifact
    `composition`, and the log: source kinds, monochrome and retro shares, and what follows (rules.md §1, §3);
    with the plan's step and rate notes (rules.md §8, §12)."""
    comp = built.composition
    text = composition_craft.markdown(comp)
    if plan_notes:
        text += "\n## The plan\n\n" + "".join(f"- {n}\n" for n in plan_notes)
    base = Path(run.workdir)
    (base / COMPOSITION_REPORT).parent.mkdir(parents=True, exist_ok=True)
    (base / COMPOSITION_REPORT).write_text(text, encoding="utf-8")
    listing = {"run_id": run.run_id, **comp.as_dict(), "plan": plan_notes}
    (base / COMPOSITION_LISTING).write_text(json.dumps(listing, indent=1), encoding="utf-8")
    for note in comp.notes + plan_notes:
        get_run_logger().info("prune: %s", note)
    create_markdown_artifact(text, key="composition", description="Source kinds, monochrome and retro shares, the plan")


def train_caption_rows(images: list[TrainImage]) -> list[dict]:
    """The `train_captions` rows of a training set."""
    return [{"folder": t.folder, "name": t.name, "image_hash": t.image_hash, "caption": t.caption,
             "repeats": t.repeats, "mask_hash": t.mask_hash, "is_reg": t.is_reg} for t in images]


def stats_table(stats: list[dict], top: int = 30) -> list[dict]:
    """Top tags per group with their count before and after pruning (for the Prefect artifact)."""
    by: dict[str, dict[str, list[int]]] = {}
    for s in stats:
        cell = by.setdefault(s["concept"], {}).setdefault(s["tag"], [0, 0])
        cell[0 if s["phase"] == "before_prune" else 1] = s["count"]
    out = []
    for group, tags in by.items():
        for tag, (b, a) in sorted(tags.items(), key=lambda kv: (-max(kv[1]), kv[0]))[:top]:
            out.append({"group": group, "tag": tag, "before": b, "after": a, "pruned": a == 0 and b > 0})
    return out


PRUNE = Stage("prune", prune, caching.code_version(craft, composition_craft, edits_craft, holdout_craft, prune_craft,
                                                   repeats_craft, tags_craft, judged_craft, heads,
                                                   sys.modules[__name__]))
