"""Prune: captions from their sources, cleaned, triggered and pruned per group; repeats per folder.

The stage hands the bake stage a TrainSet (bakery/manifest.py). Its cache key
holds the image hashes, the recipe's caption/concept/repeat settings and a
digest of the caption sources (tags and sidecars in the catalog), so editing a
sidecar or re-tagging re-runs it. Tag statistics before and after pruning and
the run's training set are written to the catalog.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from bakery.craft import prune as craft
from bakery.craft import repeats as repeats_craft
from bakery.craft import tags as tags_craft
from bakery.manifest import ImageRef, Skip, StageResult, TrainImage, TrainSet, digest
from bakery.kohya_export import concept_spec
from bakery.recipe import CaptionParams, Concept, Recipe, RepeatsParams
from storage import Catalog
from tasks import caching
from tasks.stage import RunInfo, Stage

MAX_LISTED = 10  # image names shown in an error message


class CaptionError(RuntimeError):
    pass


@dataclass(frozen=True)
class PruneInput:
    images: list[ImageRef]
    sources_digest: str  # tags and sidecars of these images and their originals

    def subjects(self) -> list[str]:
        return [r.name for r in self.images]


def prune_params_json(recipe: Recipe) -> str:
    data = {
        "concepts": [c.model_dump(mode="json") for c in recipe.concepts],
        "captions": recipe.captions.model_dump(mode="json"),
        "repeats": recipe.repeats.model_dump(mode="json"),
        "train": {k: getattr(recipe.train, k) for k in ("epochs", "optimizer", "min_snr_gamma", "ip_noise_gamma")},
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _gather(cat: Catalog, images: list[ImageRef]) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """Sidecars and tag rows of each image, found on it and on the originals it came from."""
    chains = cat.ancestors(sorted({r.hash for r in images}))
    everyone = sorted({h for chain in chains.values() for h in chain})
    sidecars = cat.sidecars_for(everyone)
    rows_by: dict[str, list[dict]] = {}
    for row in cat.tags_for(everyone):
        rows_by.setdefault(row["image_hash"], []).append(row)
    side, rows = {}, {}
    for h, chain in chains.items():
        side[h] = [text for a in chain for text in sidecars.get(a, [])]
        tagger = next((rows_by[a] for a in chain if any(r["origin"] == "tagger" for r in rows_by.get(a, []))), [])
        rows[h] = [r for a in chain for r in rows_by.get(a, []) if r["origin"] != "tagger"] + [
            r for r in tagger if r["origin"] == "tagger"
        ]
    return side, rows


@task(name="caption-sources", cache_policy=NO_CACHE)
def caption_sources(images: list[ImageRef], workdir: str) -> PruneInput:
    """The prune stage's input: the images plus a digest of their caption sources (read fresh each run)."""
    with Catalog.open(RunInfo("", workdir).catalog) as cat:
        side, rows = _gather(cat, images)
    payload = {h: [side[h], [(r["tag"], r["category"], r["origin"], r["confidence"]) for r in rows[h]]] for h in side}
    return PruneInput(sorted(images), digest(payload))


def _file_names(names: list[str]) -> dict[str, str]:
    """Flat, unique file names for kohya folders (`chara/img001` -> `chara_img001`)."""
    out, used = {}, set()
    for name in names:
        flat = name.replace("/", "_")
        candidate, k = flat, 1
        while candidate in used:
            k += 1
            candidate = f"{flat}_{k}"
        used.add(candidate)
        out[name] = candidate
    return out


@task(name="prune")
def prune(inputs: PruneInput, params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    cfg = json.loads(params_json)
    concepts = [concept_spec(Concept.model_validate(c)) for c in cfg["concepts"]]
    cap = CaptionParams.model_validate(cfg["captions"])
    rep = RepeatsParams.model_validate(cfg["repeats"])
    train = cfg["train"]
    run = RunInfo(run_id, workdir, workers)
    logger = get_run_logger()
    images = sorted(inputs.images)
    if not concepts:
        logger.info("prune: the recipe has no [[concepts]]: no training set")
        return StageResult(images=images, n_in=len(images), payload=TrainSet([], []))

    warnings = craft.check_layout(concepts)
    if any("duplicate_split" in w for w in warnings):
        raise CaptionError("; ".join(w for w in warnings if "duplicate_split" in w))
    by_name = {r.name: r for r in images}
    rules, members, unassigned = craft.layout(concepts, by_name)
    skips = [Skip(n, "no concept's paths match this image") for n in unassigned]

    with Catalog.open(run.catalog) as cat:
        side, rows = _gather(cat, [by_name[n] for names in members.values() for n in names])
    clean_rules = tags_craft.CleanRules(
        delete=tuple(cap.delete), synonyms=dict(cap.synonyms), split={k: tuple(v) for k, v in cap.split.items()},
        redundancy=cap.redundancy, keep_generic=tuple(cap.keep_generic), implies={k: tuple(v) for k, v in cap.implies.items()},
    )
    cleaned: dict[str, list[str]] = {}
    characters: set[str] = set()
    missing = []
    for rule in rules:
        for name in members[rule.folder]:
            h = by_name[name].hash
            if name not in cleaned:
                raw = tags_craft.source_tags(side[h], rows[h], cap.sources, cap.merge, cap.keep_namespaces)
                cleaned[name] = tags_craft.clean_tags(raw, clean_rules)
                characters |= tags_craft.character_tags(side[h], rows[h])
            if not cleaned[name] and craft.needs_tags(rule):
                missing.append(f"{rule.folder}/{name}")
    if missing:
        listed = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else "")
        raise CaptionError(
            f"{len(missing)} images have no caption (no tags from user sidecars, booru tags or the tagger): {listed}. "
            "kohya would caption them with the folder name; add .txt sidecars, set autotag.model, or remove them"
        )

    # Prune per group, count tags before and after.
    stats, captions, pruned_by = [], {}, {}
    for rule in rules:
        group = {n: cleaned[n] for n in members[rule.folder]}
        if not group:
            continue
        result = craft.prune_group(rule, group, characters)
        warnings += result.warnings
        pruned_by[rule.folder] = result.pruned
        before = Counter(t for tags in group.values() for t in tags)
        after: Counter[str] = Counter()
        for n, kept in result.captions.items():
            text = craft.build_caption(rule, kept, cap.tag_style, cap.keep_tokens_separator)
            captions[(rule.folder, n)] = text
            head, body = craft.caption_parts(rule, kept)
            after.update(dict.fromkeys(head + body, 1))
        stats += [{"concept": rule.folder, "phase": "before_prune", "tag": t, "count": c} for t, c in before.items()]
        stats += [{"concept": rule.folder, "phase": "after_prune", "tag": t, "count": c} for t, c in after.items()]

    # Repeats per folder.
    mult = repeats_craft.multiplier(
        rep.sdxl, rep.snr_multiplier and (train["min_snr_gamma"] > 0 or train["ip_noise_gamma"] > 0), rep.old_anime
    )
    outfit_names = {o.name for c in concepts for o in c.outfits}
    plan = repeats_craft.plan_repeats(
        [repeats_craft.FolderIn(r.folder, r.concept, len(members[r.folder]), r.target_steps, r.folder in outfit_names)
         for r in rules],
        epochs=train["epochs"], optimizer=train["optimizer"], mult=mult, main_concept=rep.main_concept,
    )
    warnings += plan.warnings
    n_repeats = plan.repeats()

    # The guide's caption checks: over 1 KB, rare tags (when post counts are known).
    with Catalog.open(run.catalog) as cat:
        counts = cat.tag_post_counts(sorted({t for tags in cleaned.values() for t in tags}))
    rare: set[str] = set()
    for (folder, n), text in captions.items():
        flags = tags_craft.flag_caption(text, cleaned[n], counts, cap.warn_caption_bytes, cap.rare_tag_posts)
        if flags.too_long:
            warnings.append(f"{folder}/{n}: caption is {len(text.encode())} bytes (> {cap.warn_caption_bytes}): a tagger gone wrong?")
        rare.update(flags.rare)
    if rare:
        warnings.append(f"rare tags (< {cap.rare_tag_posts} posts, weakly known by the model): {', '.join(sorted(rare))}")

    files = _file_names(sorted({n for _, n in captions}))
    train_images = sorted(
        TrainImage(folder=folder, name=files[n], image_hash=by_name[n].hash, caption=text,
                   repeats=n_repeats[folder], mask_hash=by_name[n].mask)
        for (folder, n), text in captions.items()
    )
    triggers = list(dict.fromkeys(t for r in rules if members[r.folder] for t in craft.caption_parts(r, [])[0]))
    unet_only = any(r.style == "style_no_tags" and members[r.folder] for r in rules)
    train_set = TrainSet(train_images, triggers, unet_only=unet_only,
                         keep_tokens_separator=cap.keep_tokens_separator, warnings=warnings)

    with Catalog.open(run.catalog) as cat:
        cat.add_tag_stats(run_id, stats)
        cat.add_train_captions(run_id, [
            {"folder": t.folder, "name": t.name, "image_hash": t.image_hash, "caption": t.caption,
             "repeats": t.repeats, "mask_hash": t.mask_hash, "is_reg": t.is_reg} for t in train_images
        ])
    logger.info(
        "prune: %s; steps per epoch per concept %s; %d steps over %d epochs (before batch size)",
        ", ".join(f"{f.repeats}_{f.folder} ({f.images} img, {f.steps_per_epoch}/epoch)" for f in plan.folders),
        plan.per_concept, plan.total_steps, plan.epochs,
    )
    for w in warnings:
        logger.warning("prune: %s", w)
    create_table_artifact(table=plan.table(), key="repeats", description=(
        f"Repeats per folder (multiplier {plan.multiplier:.3g}); total {plan.total_steps} steps over "
        f"{plan.epochs} epochs before batch size" + ("".join(f"\n- {w}" for w in plan.warnings))))
    create_table_artifact(table=stats_table(stats), key="tag-stats", description="Tag counts per group, before and after pruning")
    # The pictures that went into the training set (a picture in two folders is still one picture).
    trained = sorted(by_name[n] for n in {n for _, n in captions})
    return StageResult(images=trained, skips=skips, n_in=len(images), n_processed=len(captions), payload=train_set)


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


PRUNE = Stage("prune", prune, caching.code_version(craft, repeats_craft, tags_craft, sys.modules[__name__]))
