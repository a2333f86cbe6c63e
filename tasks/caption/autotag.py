"""Autotag: WD14 tagger tags for every prepared image, kept in the catalog with their confidence.

Incremental like the per-image stages: an image already tagged with the same
models, thresholds and code is not run again (a passthrough derivation records
it). With no `autotag.model`, the stage hands its images on untouched and the
captions come from booru tags and sidecars (tasks/caption/prune.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image
from prefect import get_run_logger, task

from bakery.craft.caption import wd14 as craft
from bakery.manifest import ImageRef, StageResult
from bakery.recipe import AutotagParams
from storage import Catalog
from tasks import caching
from tasks.progress import StageProgress
from tasks.stage import RunInfo, Stage, params_hash

CHUNK = 64  # images decoded and written to the catalog at a time


def model_path(model: str, base_dir: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_absolute() and (Path(base_dir) / path).is_dir():
        return craft.resolve_model(str(Path(base_dir) / path))
    return craft.resolve_model(model)


@task(name="autotag")
def autotag(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    cfg = json.loads(params_json)
    params = AutotagParams.model_validate(cfg["autotag"])
    run = RunInfo(run_id, workdir, workers)
    images = sorted(inputs)
    if not params.model:
        return StageResult(images=images, n_in=len(inputs))

    tagger_counts(params, cfg["base_dir"], run)
    p_hash = params_hash(params_json)
    unique = sorted({r.hash: r for r in images}.values(), key=lambda r: r.hash)
    with Catalog.open(run.catalog) as cat:
        memo = cat.find_derivations("autotag", p_hash, AUTOTAG.code_version, [r.hash for r in unique])
    todo = [r for r in unique if r.hash not in memo]
    notes: list[str] = []  # the picture goes on untagged
    if todo:
        taggers = [craft.WD14Tagger(model_path(m, cfg["base_dir"])) for m in (params.model, params.second_model) if m]
        logger = get_run_logger()
        logger.info("autotag: %d images with %s on %s", len(todo), [t.folder.name for t in taggers], taggers[0].providers)
        th = craft.Thresholds(params.general_threshold, params.character_threshold, params.keep_rating)
        store = run.store
        with StageProgress("autotag", len(todo)) as progress:
            for start in range(0, len(todo), CHUNK):
                chunk, pics = [], []
                for ref in todo[start : start + CHUNK]:
                    try:
                        with Image.open(store.path(ref.hash)) as im:
                            im.load()
                            pics.append(im.copy())
                        chunk.append(ref)
                    except Exception as exc:  # a store object that does not decode: report, go on
                        notes.append(f"{ref.name}: not tagged, cannot read it: {type(exc).__name__}: {exc}")
                per_model = [t.predict(pics, params.batch_size) for t in taggers]
                rows, derivations = [], []
                for i, ref in enumerate(chunk):
                    merged = craft.merge(*[craft.select(probs[i], t.tags, th) for t, probs in zip(taggers, per_model)])
                    rows += [{"image_hash": ref.hash, "tag": p.tag, "category": p.category, "confidence": p.confidence}
                             for p in merged]
                    derivations.append({"input_hash": ref.hash, "output_hash": ref.hash, "output_suffix": "",
                                        "stage": "autotag", "params": params_json, "params_hash": p_hash,
                                        "code_version": AUTOTAG.code_version})
                with Catalog.open(run.catalog) as cat:
                    # Tags of other settings are replaced: their derivation records must go too.
                    cat.forget_derivations("autotag", [r.hash for r in chunk], p_hash)
                    cat.replace_tags("tagger", [r.hash for r in chunk], rows)
                    cat.add_derivations(derivations, run_id)
                progress.advance(len(chunk))
    return StageResult(images=images, n_in=len(inputs), n_processed=len(todo), warnings=notes)


def tagger_counts(params: AutotagParams, base_dir: str, run: RunInfo) -> None:
    """The taggers' post counts per tag into the catalog (site `tagger:<folder>`): the rare-tag check of pictures
    with no booru count (rules.md §9)."""
    for model in (params.second_model, params.model):  # the first tagger's counts win
        if not model:
            continue
        try:
            folder = model_path(model, base_dir)
            counts = craft.read_tag_counts(folder / craft.TAGS_FILE)
        except (craft.TaggerError, OSError) as exc:  # tagging says so when it needs the model; no counts is no error
            get_run_logger().info("autotag: no tag counts from %s (%s)", model, exc)
            continue
        if counts:
            with Catalog.open(run.catalog) as cat:
                cat.add_tagger_counts(f"tagger:{folder.name}", counts)


AUTOTAG = Stage("autotag", autotag, caching.code_version(craft, sys.modules[__name__]))
