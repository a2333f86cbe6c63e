"""Every stage's parameters, built in one place: the canonical JSON each stage's cache key sees and its task reads.

Each builder takes the Recipe, and the run-time inputs some stages add: the review studio's edits (dedupe's keeps,
buckets' crop boxes, prune's caption edits) and the boxes the crops stage found. The JSON holds what a stage's
output depends on besides its input pictures: its recipe section, paths resolved against the recipe, the content
hash or fingerprint of every model file it names. The strings are cache keys (and the bake's key, and so the LoRA
files' ss_session_id): a change to one re-runs its stage, so a refactor must leave them byte-identical.

No Prefect and no task in here: the flows' wiring builds every stage's parameters with it (and the trigger
check's wiring in tasks/taste/trigger_check.py), the tasks read them back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bakery.craft import edits as edits_craft
from bakery.craft.caption import wd14
from bakery.craft.prepare import detect
from bakery.manifest import digest
from bakery.recipe import CropsParams, Recipe, stage_params_json
from storage import digest_file
from storage.digests import DigestCache

DETECTOR_ROLES = ("face", "head", "person", "halfbody")  # the crops stage's ONNX detectors: `[crops] <role>_model`
# What the slide reads from [train]; the rest of the section is the bake's.
SLIDE_TRAIN_KEYS = ("base_model", "vae", "architecture", "clip_skip", "seed", "device", "max_grad_norm",
                    "weight_decay", "gradient_checkpointing")
SLIDER_TASTE_KEYS = {"strengths", "prompts", "still_ratio", "tag_margin"}  # [slider]'s for the taste, not the slide
# [train]'s files a base loads with besides base_model and vae (Anima's parts that ship apart): in a stage's params
# and cache keys only when set, so a base without them keeps its params byte-identical.
COMPANION_KEYS = ("text_encoder", "llm_adapter", "t5_tokenizer")


def model_fingerprint(model: str | None) -> str:
    """What identifies a base model (or any model named by path) beyond its name: a local file's size and mtime,
    or every .safetensors file of a local folder's."""
    if not model:
        return ""
    path = Path(model).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.safetensors")) if path.is_dir() else []
    return json.dumps([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def companions(train: Any) -> dict[str, str]:
    """[train]'s companion files that are set (`COMPANION_KEYS`), each with its fingerprint (`<key>_fingerprint`)."""
    out = {}
    for key in COMPANION_KEYS:
        if value := getattr(train, key, None):
            out.update({key: value, f"{key}_fingerprint": model_fingerprint(value)})
    return out


def base_fingerprint(base_model: str | None, train: Any = None) -> str:
    """What identifies the base a bake loads: the base model's fingerprint, and its companion files' when set."""
    found = companions(train)
    return json.dumps([model_fingerprint(base_model), found]) if found else model_fingerprint(base_model)


# -- gather ---------------------------------------------------------------------------------------------------------


def scrape_params_json(recipe: Recipe) -> str:
    """[scrape], its export folder resolved against the recipe."""
    params = recipe.scrape
    if params.export_dir:
        params = params.model_copy(update={"export_dir": recipe.resolve(params.export_dir)})
    return stage_params_json(params)


def gather_params(recipe: Recipe, keep: Sequence[str] = ()) -> dict[str, str]:
    """ingest, convert and dedupe; `keep`: the near-duplicates the keep_duplicate edits keep (after `[dedupe] keep`)."""
    dedupe = recipe.dedupe.model_copy(update={"keep": [*recipe.dedupe.keep, *keep]}) if keep else recipe.dedupe
    return {"ingest": stage_params_json(recipe.ingest), "convert": stage_params_json(recipe.convert),
            "dedupe": stage_params_json(dedupe)}


# -- prepare --------------------------------------------------------------------------------------------------------


def prepare_params(recipe: Recipe, edits: Sequence[edits_craft.Edit] = ()) -> dict[str, str]:
    """alpha, trim, upscale, masks and buckets; buckets' holds the crop edits' boxes (the flow adds the faces the
    crops stage found with `buckets_params_json`)."""
    return {
        "alpha": stage_params_json(recipe.alpha),
        "trim": stage_params_json(recipe.trim),
        "upscale": upscale_params_json(recipe),
        "masks": stage_params_json(masks_params(recipe)),
        "buckets": buckets_params_json(recipe, edits_craft.crop_boxes(edits)),
    }


def upscale_params_json(recipe: Recipe) -> str:
    """[upscale], the training resolution, and a spandrel model's path and content hash."""
    params = recipe.upscale
    data: dict[str, Any] = {"upscale": params.model_dump(mode="json"), "resolution": recipe.buckets.resolution}
    model = recipe.resolve(params.model) if params.model else None
    if params.backend == "spandrel" and model is not None:
        data["upscale"]["model"] = str(model)
        data["model_sha256"] = digest_file(model).sha256 if model.is_file() else None
    return stage_params_json(data)


def masks_params(recipe: Recipe) -> dict[str, Any]:
    """[masks], its checkpoint made absolute and hashed.

    The checkpoint's sha256 is part of the cache key (a file replaced at the same path
    makes new masks); its path is not (moving the file changes nothing).
    """
    params = recipe.masks
    sha = None
    if params.checkpoint is not None:
        path = recipe.resolve(params.checkpoint)
        params = params.model_copy(update={"checkpoint": path})
        if path.is_file():  # remembered by path, size, mtime and inode: a checkpoint is read once, not every run
            digests = DigestCache(recipe.workdir / "cache" / "model-digests.json")
            sha = digests.digest(path).sha256
            digests.save()
    return {"masks": params.model_dump(mode="json"), "checkpoint_sha256": sha}


def buckets_params_json(recipe: Recipe, keep_boxes: dict[str, Sequence[float]] | None = None) -> str:
    """[buckets]; `keep_boxes` (picture -> [x0, y0, x1, y1] fractions of the picture: detected faces, the crop
    edits) joins it only when there are some, so that a recipe without keeps keeps its key."""
    data = recipe.buckets.model_dump(mode="json")
    if keep_boxes:
        data["keep_boxes"] = {n: [float(v) for v in box] for n, box in keep_boxes.items()}
    return stage_params_json(data)


def detector_files(params: CropsParams, recipe: Recipe | None = None) -> dict[str, str]:
    """role -> model file (resolved against the recipe) of every ONNX detector the recipe names."""
    files = {}
    for role in DETECTOR_ROLES:
        path = getattr(params, f"{role}_model")
        if path is not None:
            files[role] = str(recipe.resolve(path) if recipe else path)
    return files


def uses_animeface(params: CropsParams) -> bool:
    """No face or head model named: AnimeFace finds faces, when it is installed."""
    return params.face_model is None and params.head_model is None and detect.animeface_available()


def crops_params_json(recipe: Recipe) -> str | None:
    """[crops] with resolved paths, each detector file's content hash, the buckets' geometry and the concepts'
    paths (the balance is per concept). None: nothing to detect with."""
    params = recipe.crops
    files = detector_files(params, recipe)
    if not params.enabled or not (files.keys() & {"face", "head"} or uses_animeface(params)):
        return None
    section = params.model_dump(mode="json") | {f"{r}_model": p for r, p in files.items()}
    return stage_params_json({
        "crops": section, "animeface": uses_animeface(params),
        "sha256": {r: digest_file(Path(p)).sha256 if Path(p).is_file() else None for r, p in files.items()},
        "buckets": recipe.buckets.model_dump(mode="json", include={"resolution", "min_side", "max_side", "step",
                                                                    "no_upscale"}),
        "concepts": {c.name: list(c.paths) for c in recipe.concepts},
    })


# -- caption --------------------------------------------------------------------------------------------------------


def autotag_params_json(recipe: Recipe) -> str:
    """[autotag] plus the identity of local model files (a replaced model re-tags) and the recipe's folder."""
    params = recipe.autotag
    ids = []
    for model in (params.model, params.second_model):
        if model is None:
            continue
        path = Path(model).expanduser()
        if not path.is_absolute() and recipe.resolve(path).is_dir():
            path = recipe.resolve(path)
        ids.append(wd14.model_fingerprint(path) if (path / wd14.MODEL_FILE).is_file() else model)
    return stage_params_json({"autotag": params.model_dump(mode="json"), "model_ids": ids,
                              "base_dir": str(recipe.resolve(Path(".")))})


def prune_params_json(recipe: Recipe, edits: Sequence[edits_craft.Edit] = ()) -> str:
    """The concepts, [captions], [repeats], the [train] keys repeats read, [validation]; the misc concept with
    `[crops] portraits_to_misc`; the review studio's caption edits (only when there are some, so a recipe
    without edits keeps its key)."""
    data = {
        "concepts": [c.model_dump(mode="json") for c in recipe.concepts],
        "captions": recipe.captions.model_dump(mode="json"),
        "repeats": recipe.repeats.model_dump(mode="json"),
        # What the repeats and the plan's notes read (rules.md §8, §12): the step multipliers and the learning rate.
        "train": {k: getattr(recipe.train, k) for k in ("epochs", "optimizer", "min_snr_gamma", "ip_noise_gamma",
                                                         "network_type", "batch_size", "learning_rate",
                                                         "lr_batch_scaling")},
        "validation": recipe.validation.model_dump(mode="json"),
    }
    if recipe.crops.portraits_to_misc:
        data["misc_concept"] = recipe.crops.misc_concept
    if judges := dataset_judges(recipe):  # only when set, so a recipe without keeps its key
        data["judges"] = judges
    if concerned := edits_craft.concerning(edits, "prune"):
        data["edits"] = [e.key() for e in concerned]
    return stage_params_json(data)


# -- bake -----------------------------------------------------------------------------------------------------------


def regularisation_params_json(recipe: Recipe) -> str:
    """How to draw, where the sizes come from, and which model draws."""
    reg, train, b = recipe.regularisation, recipe.train, recipe.buckets
    return stage_params_json({
        "render": reg.model_dump(mode="json", exclude={"enabled", "size"}), "size": reg.size or b.resolution,
        "buckets": {"min_side": b.min_side, "max_side": b.max_side, "step": b.step},
        "model": {"base_model": train.base_model, "fingerprint": model_fingerprint(train.base_model),
                  "vae": train.vae, "vae_fingerprint": model_fingerprint(train.vae),
                  "architecture": train.architecture, "v_parameterization": train.v_parameterization,
                  "zero_terminal_snr": train.zero_terminal_snr, **companions(train)},
        "clip_skip": train.clip_skip, "seed": train.seed,
    })


def _likeness_model(recipe: Recipe) -> str | None:
    """`evaluate.likeness_model`: a local folder resolved against the recipe, else a hub id as written."""
    model = recipe.evaluate.likeness_model
    if model is None:
        return None
    local = recipe.resolve(Path(model).expanduser())
    return str(local) if local.exists() else model


def trigger_check_params_json(recipe: Recipe) -> str:
    """[trigger_check] + what identifies the base model, the tagger and the embedding model (a replaced file
    re-checks)."""
    t, likeness = recipe.train, _likeness_model(recipe)
    return stage_params_json({
        "check": recipe.trigger_check.model_dump(mode="json"),
        "base": {"model": t.base_model, "id": model_fingerprint(t.base_model), "vae": t.vae,
                 "architecture": t.architecture, "clip_skip": t.clip_skip,
                 "v_parameterization": t.v_parameterization, "zero_terminal_snr": t.zero_terminal_snr,
                 **companions(t)},
        "tagger": json.loads(autotag_params_json(recipe)) if recipe.autotag.model else None,
        "embedding": {"model": likeness, "id": model_fingerprint(likeness)} if likeness else None,
        "device": recipe.evaluate.device,
        **({"ccip": {**ccip, "threshold": recipe.judges.ccip_threshold}}
           if (ccip := judge_model(recipe, "ccip_model")) else {}),
    })


def bake_params_json(recipe: Recipe) -> str:
    """[train] (a variant's, for a variant's recipe), [buckets], the output name, the validation timesteps."""
    train = recipe.train
    return stage_params_json({"train": train.model_dump(mode="json"), "buckets": recipe.buckets.model_dump(mode="json"),
                              "name": train.output_name or recipe.project.name,
                              "validation_timesteps": recipe.validation.timesteps})


# -- taste ----------------------------------------------------------------------------------------------------------


def face_spec(recipe: Recipe) -> dict | None:
    """The face judge's detector: `[crops] face_model` (else `head_model`) with its content hash, else AnimeFace."""
    c = recipe.crops
    for role in ("face", "head"):
        path = getattr(c, f"{role}_model")
        if path is not None:
            path = recipe.resolve(path)
            return {"kind": "onnx", "path": str(path), "key": f"crops.{role}_model", "confidence": c.confidence,
                    "iou": c.iou, "sha256": digest_file(path).sha256 if path.is_file() else None}
    return {"kind": "animeface"} if detect.animeface_available() else None


def evaluate_params_json(recipe: Recipe) -> str:
    """[evaluate] plus the [autotag] tagger the judges use (its files' identity) and the face judge's detector."""
    data = recipe.evaluate.model_dump(mode="json")
    model, tagger = recipe.autotag.model, None
    if model:
        path = recipe.resolve(Path(model).expanduser())
        local = path.is_dir()
        tagger = {"model": str(path) if local else model, "general": recipe.autotag.general_threshold,
                  "character": recipe.autotag.character_threshold,
                  "id": wd14.model_fingerprint(path) if local and (path / wd14.MODEL_FILE).is_file() else model}
    faces, character = face_spec(recipe), character_spec(recipe)
    return stage_params_json({**data, "tagger": tagger, **({"faces": faces} if faces else {}),
                              **({"character": character} if character else {})})


def judge_model(recipe: Recipe, key: str) -> dict | None:
    """A [judges] model folder: its path and its files' identity (None: not set)."""
    folder = getattr(recipe.judges, key)
    if folder is None:
        return None
    path = recipe.resolve(folder)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    return {"path": str(path), "id": digest([digest_file(p).sha256 for p in files])}


DATASET_MODELS = ("ccip", "monochrome", "completeness", "kind", "aesthetic")


def dataset_judges(recipe: Recipe) -> dict | None:
    """The prune stage's [judges] models (paths and files' identity), actions and thresholds; None: none set."""
    models = {k: judge_model(recipe, f"{k}_model") for k in DATASET_MODELS}
    if not any(models.values()):
        return None
    j = recipe.judges
    return {"models": models, "ccip_threshold": j.ccip_threshold, "classifier_threshold": j.classifier_threshold,
            "aesthetic_min": j.aesthetic_min, "heads": head_detector(recipe),
            "actions": {k: getattr(j, f"screen_{k}") for k in ("other_character", "several_characters", "monochrome",
                                                                "rough", "3d", "comic", "low_aesthetic")}}


def detector_key(role: str, sha: str, params: CropsParams) -> str:
    """The catalog's name of a detector's detections (tasks/prepare/crops.py records them under it)."""
    size = f":{params.detector_size}" if params.detector_size else ""  # other sizes, other detections
    return f"{role}:{sha[:16]}:{params.confidence}:{params.iou}{size}"


def head_detector(recipe: Recipe) -> dict | None:
    """The detector that counts characters: `[crops] head_model`, else `person_model` (None: neither set)."""
    files = detector_files(recipe.crops, recipe)
    role = next((r for r in ("head", "person") if r in files), None)
    if role is None or recipe.judges.screen_several_characters == "off":
        return None
    path = Path(files[role])
    sha = digest_file(path).sha256 if path.is_file() else None
    c = recipe.crops
    return {"role": role, "path": str(path), "key": detector_key(role, sha, c) if sha else None,
            "confidence": c.confidence, "iou": c.iou, "detector_size": c.detector_size}


def character_spec(recipe: Recipe) -> dict | None:
    """The evaluation's character judges ([judges] ccip_model, corrupt_model); None when neither is set."""
    ccip, corrupt = judge_model(recipe, "ccip_model"), judge_model(recipe, "corrupt_model")
    if ccip is None and corrupt is None:
        return None
    j = recipe.judges
    return {"ccip": ccip, "corrupt": corrupt, "threshold": j.ccip_threshold, "corrupt_min": j.corrupt_min,
            "fbeta": j.fbeta, "pick": j.pick}


def slide_params_json(recipe: Recipe) -> str:
    """[slider] (less the taste's keys), the [train] keys the slide reads, the output name."""
    train = recipe.train.model_dump(mode="json")
    named = {k: train[k] for k in COMPANION_KEYS if train[k]}  # their fingerprints: in the slide's key (bake_key)
    return stage_params_json({"train": {**{k: train[k] for k in SLIDE_TRAIN_KEYS}, **named},
                              "slider": recipe.slider.model_dump(mode="json", exclude=SLIDER_TASTE_KEYS),
                              "name": recipe.train.output_name or recipe.project.name})


def slider_taste_params_json(recipe: Recipe) -> str:
    """The slider taste (the evaluate stage of a [slider] recipe): evaluate's parameters, and [slider]."""
    return stage_params_json({**json.loads(evaluate_params_json(recipe)),
                              "slider": recipe.slider.model_dump(mode="json")})
