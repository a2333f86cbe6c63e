"""`bakery export-kohya`: the last training set in the catalog, written for kohya sd-scripts."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bakery.craft.bake import kohya_dataset as kohya
from bakery.craft.bake.bases import prediction
from bakery.craft.caption import prune as prune_craft
from bakery.manifest import TrainImage
from bakery.recipe import Concept, Recipe
from storage import STORE_DIR, Catalog, ContentStore


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Exported:
    run_id: str
    images: int
    folders: list[str]
    files: dict[str, Path]


def concept_spec(c: Concept) -> prune_craft.ConceptSpec:
    """A recipe concept as the pure pruning code sees it."""
    return prune_craft.ConceptSpec(
        name=c.name, trigger=c.trigger, paths=tuple(c.paths), style=c.prune, target_steps=c.target_steps,
        outfits=tuple(prune_craft.OutfitSpec(o.name, o.trigger, tuple(o.paths), o.target_steps, tuple(o.absorb),
                                             o.auto_absorb) for o in c.outfits),
        extra_triggers=tuple(c.extra_triggers), prune_tags=tuple(c.prune_tags), keep_tags=tuple(c.keep_tags),
        intrinsic=tuple(c.intrinsic), prune_people_count=c.prune_people_count, duplicate_split=c.duplicate_split,
        absorb_min_share=c.absorb_min_share,
    )


def concept_specs(recipe: Recipe) -> list[prune_craft.ConceptSpec]:
    return [concept_spec(c) for c in recipe.concepts]


def settings(recipe: Recipe, triggers: list[str], unet_only: bool) -> kohya.TrainSettings:
    t, b = recipe.train, recipe.buckets
    return kohya.TrainSettings(
        name=recipe.project.name, base_model=t.base_model, sdxl=recipe.repeats.sdxl, clip_skip=t.clip_skip,
        network_type=t.network_type, network_dim=t.network_dim, network_alpha=t.network_alpha, conv_dim=t.conv_dim,
        conv_alpha=t.conv_alpha, epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer,
        learning_rate=t.effective_learning_rate, min_snr_gamma=t.min_snr_gamma, noise_offset=t.noise_offset,
        ip_noise_gamma=t.ip_noise_gamma, seed=t.seed, save_every_n_epochs=t.save_every_n_epochs,
        resolution=b.resolution, min_bucket_reso=b.min_side, max_bucket_reso=b.max_side, bucket_reso_steps=b.step,
        triggers=tuple(triggers), unet_only=unet_only, prior_loss_weight=t.prior_loss_weight,
        **_prediction_flags(recipe),
    )


def _prediction_flags(recipe: Recipe) -> dict[str, bool]:
    """kohya needs v-prediction said: the recipe's keys over what a local checkpoint or folder says."""
    t = recipe.train
    found = prediction.Prediction()
    path = recipe.resolve(Path(t.base_model).expanduser()) if t.base_model and t.base_model != "tiny" else None
    config = path / "scheduler" / "scheduler_config.json" if path else None
    if path and path.is_file():
        found = prediction.read_checkpoint(path) or found
    elif config and config.is_file():
        found = prediction.from_scheduler_config(json.loads(config.read_text(encoding="utf-8")))
    try:
        pred = prediction.resolve(found, t.v_parameterization, t.zero_terminal_snr)
    except prediction.PredictionError as exc:
        raise ExportError(str(exc)) from exc
    return {"v_parameterization": pred.v_pred, "zero_terminal_snr": pred.zero_snr}


def export_kohya(recipe: Recipe, out: Path, force: bool = False) -> Exported:
    catalog = recipe.workdir / "catalog.duckdb"
    if not catalog.exists():
        raise ExportError(f"no runs yet: {recipe.workdir} has no catalog (run the recipe first)")
    with Catalog.open(catalog, read_only=True) as cat:
        runs = cat.runs_with("train_captions")
        if not runs:
            raise ExportError("no training set in the catalog yet: the recipe needs [[concepts]] and a run "
                              "through the prune stage")
        run_id = runs[0]
        rows = cat.train_captions(run_id)
    images = [TrainImage(r["folder"], r["name"], r["image_hash"], r["caption"], r["repeats"], r["mask_hash"] or "",
                         bool(r["is_reg"])) for r in rows]
    # "mask" is what exports before the alpha-channel masks wrote: --force clears it too.
    ours = [out / d for d in ("img", "mask", "reg", "dataset_config.toml", "train_network.toml")]
    if any(p.exists() for p in ours):
        if not force:
            raise ExportError(f"{out} already holds an export: pass --force to replace it")
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    rules, _, _ = prune_craft.layout(concept_specs(recipe), [])
    prefix = len(recipe.captions.prefix_tags)  # written before the triggers: kept first too
    heads = {r.folder: prefix + len(prune_craft.caption_parts(r, [])[0]) for r in rules}
    triggers = list(dict.fromkeys(t for r in rules for t in prune_craft.caption_parts(r, [])[0]))
    unet_only = any(c.prune == "style_no_tags" for c in recipe.concepts)
    store = ContentStore(recipe.workdir / STORE_DIR)
    missing = [t.name for t in images if not store.has(t.image_hash) or (t.mask_hash and not store.has(t.mask_hash))]
    if missing:
        raise ExportError(f"{len(missing)} images of run {run_id} are gone from the store (e.g. {missing[0]}): run the recipe again")
    try:
        files = kohya.export(out.resolve(), images, store.path, settings(recipe, triggers, unet_only), heads,
                             recipe.captions.keep_tokens_separator)
    except ValueError as exc:  # a mask that does not fit its image
        raise ExportError(f"run {run_id}: {exc}") from exc
    return Exported(run_id, len(images), sorted({t.kohya_dir for t in images}), files)
