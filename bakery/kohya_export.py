"""`bakery export-kohya`: the last training set in the catalog, written for kohya sd-scripts."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bakery.craft.bake import data as bake_data
from bakery.craft.bake import kohya_args
from bakery.craft.bake import kohya_dataset as kohya
from bakery.craft.bake.bases import checkpoint, prediction
from bakery.craft.caption import prune as prune_craft
from bakery.manifest import TrainImage, TrainSet
from bakery.recipe import Concept, Recipe, TrainParams
from storage import STORE_DIR, Catalog, ContentStore


class ExportError(RuntimeError):
    pass


LEFT_OUT_FILE = "left_out.tsv"  # every picture of the run the export does not train on, and why


@dataclass(frozen=True)
class LeftOut:
    picture: str  # as the run's account names it: a path, `extras/pose_copy`, `folder/name` for a held-out one
    stage: str
    reason: str


@dataclass(frozen=True)
class Exported:
    run_id: str
    images: int  # training pictures exported (regularisation images apart)
    folders: list[str]
    files: dict[str, Path]
    left_out: list[LeftOut] = field(default_factory=list)
    held_out: int = 0  # of left_out: the validation pictures, exported to val/ as sd-scripts' validation set
    reg_images: int = 0
    account: str = ""  # the run's picture account as the export sees it (the same numbers as `bakery status`)
    not_as_recipe: list[str] = field(default_factory=list)  # recipe values sd-scripts cannot take as they are


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


def train_values(t: TrainParams) -> dict:
    """[train] as kohya_args.TRAIN_ARGS reads it: every key, the learning rates (scaled for the batch size, as the
    bake scales them) and the scheduler the bake uses."""
    factor = t.batch_lr_factor
    return {**t.model_dump(mode="json"), "learning_rate": t.effective_learning_rate,
            "unet_lr": t.unet_lr * factor if t.unet_lr else None,
            "text_encoder_lr": t.text_encoder_lr * factor if t.text_encoder_lr else None,
            "lr_scheduler": t.effective_lr_scheduler}


def settings(recipe: Recipe, triggers: list[str], unet_only: bool, total_steps: int = 0) -> kohya.TrainSettings:
    t, b = recipe.train, recipe.buckets
    flow = _architecture(recipe) == "anima"
    return kohya.TrainSettings(
        name=t.output_name or recipe.project.name, sdxl=not flow and (recipe.repeats.sdxl or t.architecture == "sdxl"),
        resolution=b.resolution, min_bucket_reso=b.min_side, max_bucket_reso=b.max_side, bucket_reso_steps=b.step,
        train=train_values(recipe.train), triggers=tuple(triggers), unet_only=unet_only, total_steps=total_steps,
        architecture="anima" if flow else "", **({} if flow else _prediction_flags(recipe)),
    )


def _base_path(recipe: Recipe) -> Path | None:
    t = recipe.train
    return recipe.resolve(Path(t.base_model).expanduser()) if t.base_model and t.base_model != "tiny" else None


def _architecture(recipe: Recipe) -> str:
    """The recipe's architecture, or what its single file is (bases/checkpoint.py) when it says "auto"."""
    path = _base_path(recipe)
    if recipe.train.architecture != "auto" or not (path and path.is_file() and path.suffix == ".safetensors"):
        return recipe.train.architecture
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return checkpoint.kind_of(f.keys(), lambda k: tuple(f.get_slice(k).get_shape()))


def total_steps(recipe: Recipe, images: list[TrainImage], store: ContentStore) -> int:
    """The bake's optimizer steps for this set: epochs x batches per epoch (one bucket per batch, as kohya)."""
    b = recipe.buckets
    cfg = bake_data.DataConfig(b.resolution, b.min_side, b.max_side, b.step, recipe.train.batch_size)
    samples = bake_data.plan_samples(TrainSet(images, []), store.path, cfg)
    return bake_data.steps_per_epoch(samples, cfg.batch_size) * recipe.train.epochs


def _prediction_flags(recipe: Recipe) -> dict[str, bool]:
    """kohya needs v-prediction said: the recipe's keys over what a local checkpoint or folder says."""
    t = recipe.train
    found = prediction.Prediction()
    path = _base_path(recipe)
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


def _read_run(recipe: Recipe) -> tuple[str, list[TrainImage], list[TrainImage], list[LeftOut], str]:
    """The newest run with a training set: (run id, its images, its held-out pictures, what it left out, account)."""
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
        held = [r for r in cat.validation_pictures(run_id) if r["held_out"]]
        skips, stages = cat.skips_for(run_id), cat.stage_table(run_id)
    images = [TrainImage(r["folder"], r["name"], r["image_hash"], r["caption"], r["repeats"], r["mask_hash"] or "",
                         bool(r["is_reg"])) for r in rows]
    # Held out: 1 repeat in val/ (sd-scripts validates each picture once); the catalog keeps no mask for them.
    held_out = [TrainImage(r["folder"], r["name"], r["image_hash"], r["caption"], 1) for r in held]
    left = [LeftOut(t.subject, "prune", f"held out for validation (never trained on): exported to "
                                        f"{kohya.VALIDATION_DIR}/{t.kohya_dir} as sd-scripts' validation set")
            for t in held_out]
    left += [LeftOut(s["subject"], s["stage"], s["reason"]) for s in skips]
    trained = len({t.name for t in images if not t.is_reg})
    return run_id, images, held_out, left, _account(stages, trained, len(held_out), len(skips))


def _account(stages: list[dict], trained: int, held: int, skipped: int) -> str:
    """The run's picture account in the export's words; `bakery status` shows the same numbers per stage."""
    if not stages:
        return ""
    n_in, split = stages[0]["n_in"] or 0, sum(s["n_split"] or 0 for s in stages)
    line = (f"{n_in} picture(s) in" + (f" + {split} split (frames)" if split else "")
            + f" = {trained} exported + {held} held out + {skipped} skipped")
    return line if n_in + split == trained + held + skipped else line + " (does not add up: see bakery status)"


def _clear(out: Path, force: bool) -> None:
    # "mask" is what exports before the alpha-channel masks wrote: --force clears it too.
    ours = [out / d for d in ("img", "mask", "reg", kohya.VALIDATION_DIR, "dataset_config.toml",
                              "train_network.toml", kohya_args.LYCORIS_PRESET, LEFT_OUT_FILE)]
    if any(p.exists() for p in ours):
        if not force:
            raise ExportError(f"{out} already holds an export: pass --force to replace it")
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_left_out(path: Path, left: list[LeftOut]) -> None:
    """One line per picture the export does not train on: picture, stage, reason (tab-separated)."""
    clean = [[x.replace("\t", " ").replace("\n", " ") for x in (e.picture, e.stage, e.reason)] for e in left]
    path.write_text("\n".join("\t".join(row) for row in [["picture", "stage", "reason"], *clean]) + "\n",
                    encoding="utf-8")


def export_kohya(recipe: Recipe, out: Path, force: bool = False) -> Exported:
    run_id, images, held_out, left, account = _read_run(recipe)
    _clear(out, force)
    rules, _, _ = prune_craft.layout(concept_specs(recipe), [])
    prefix = len(recipe.captions.prefix_tags)  # written before the triggers: kept first too
    heads = {r.folder: prefix + len(prune_craft.caption_parts(r, [])[0]) for r in rules}
    triggers = list(dict.fromkeys(t for r in rules for t in prune_craft.caption_parts(r, [])[0]))
    unet_only = any(c.prune == "style_no_tags" for c in recipe.concepts)
    store = ContentStore(recipe.workdir / STORE_DIR)
    missing = [t.name for t in images + held_out if not store.has(t.image_hash)
               or (t.mask_hash and not store.has(t.mask_hash))]
    if missing:
        raise ExportError(f"{len(missing)} images of run {run_id} are gone from the store (e.g. {missing[0]}): run the recipe again")
    steps = total_steps(recipe, images, store) if recipe.train.effective_lr_scheduler == "rex" else 0
    s = settings(recipe, triggers, unet_only, steps)
    try:
        files = kohya.export(out.resolve(), images, store.path, s, heads, recipe.captions.keep_tokens_separator,
                             held_out)
    except ValueError as exc:  # a mask that does not fit its image
        raise ExportError(f"run {run_id}: {exc}") from exc
    write_left_out(out / LEFT_OUT_FILE, left)
    files["left_out"] = out.resolve() / LEFT_OUT_FILE
    masked = recipe.train.masked_loss and any(t.mask_hash for t in images)
    lost = kohya_args.left_out(s.train, s.context(masked, any(t.is_reg for t in images)))
    return Exported(run_id, len({t.name for t in images if not t.is_reg}),
                    sorted({t.kohya_dir for t in images}), files, left, len(held_out),
                    sum(t.is_reg for t in images), account, lost)
