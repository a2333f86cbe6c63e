"""Masks: a greyscale loss mask per image (transparent-background), then mask QA.

The model runs in this process (one model in memory, CUDA when present), only
on images that have no mask yet for the same checkpoint, mode, size and code:
each mask is a 'masks' derivation of its image in the catalog, with its
histogram in `mask_stats`. QA then runs on the histograms, so changing a QA
threshold re-checks every mask without re-running the model. An accepted mask
goes on `ImageRef.mask`; a rejected one leaves it "" and is recorded in
`mask_qa` with the reason. With no checkpoint the stage passes every image on
without a mask and says how to configure one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bakery.craft.prepare import masks as craft
from bakery.manifest import ImageRef, StageResult
from bakery.recipe import MaskParams, stage_params_json
from bakery.report import name_list
from storage import Catalog
from tasks import caching
from tasks.progress import StageProgress
from tasks.stage import RunInfo, Stage, params_hash

FLUSH_EVERY = 32  # catalog writes per this many new masks: a crash keeps what was done
CONFIG_DIR = "cache/transparent-background"  # in the work dir: the library's config.yaml


def model_params_json(params: MaskParams, checkpoint_sha256: str) -> str:
    """What the model's output depends on (not the QA thresholds, not the device)."""
    return stage_params_json({"checkpoint_sha256": checkpoint_sha256, "mode": params.mode, "size": params.size})


def qa_of(params: MaskParams) -> craft.MaskQA:
    return craft.MaskQA(
        black_level=params.black_level,
        min_foreground=params.min_foreground,
        max_foreground=params.max_foreground,
        grey_low=params.grey_low,
        grey_high=params.grey_high,
        max_grey=params.max_grey,
    )


@task(name="masks")
def masks(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    """Read which pictures have masks -> craft.mask_pictures (model, then QA) -> write the verdicts."""
    data = json.loads(params_json)
    params = MaskParams.model_validate(data["masks"])
    plain = sorted(ImageRef(r.name, r.hash) for r in inputs)
    if params.checkpoint is None:
        get_run_logger().warning(craft.DISABLED_MESSAGE)
        create_markdown_artifact(f"**masks: off.** {craft.DISABLED_MESSAGE}", key="masks-qa",
                                 description="Mask QA")
        return StageResult(images=plain, n_in=len(inputs))
    sha = data.get("checkpoint_sha256")
    if not sha:  # the flow found no file there
        craft.check_checkpoint(params.checkpoint)
        raise craft.MaskSetupError(f"masks.checkpoint: cannot read {params.checkpoint}")

    run = RunInfo(run_id, workdir, workers)
    model_json = model_params_json(params, sha)
    known, todo = _known_masks(run, plain, params_hash(model_json))
    with _mask_maker(run, params, todo) as make, StageProgress("masks", len(todo)) as progress:
        outcome = craft.mask_pictures(plain, known, todo, make, _keeper(run, model_json), qa_of(params),
                                      advance=progress.advance, batch=FLUSH_EVERY)
    with Catalog.open(run.catalog) as cat:
        cat.add_mask_qa(outcome.verdicts, run_id)
    warnings = [f"{len(outcome.rejected)} of {len(plain)} masks rejected; those images train without masked loss: "
                f"{name_list([ref.name for ref, _ in outcome.rejected])}"] if outcome.rejected else []
    create_markdown_artifact(qa_markdown(len(plain), outcome.rejected), key="masks-qa", description="Mask QA")
    return StageResult(images=outcome.images, n_in=len(inputs), n_processed=outcome.made, warnings=warnings)


def _known_masks(run: RunInfo, plain: list[ImageRef], p_hash: str) -> tuple[dict[str, craft.Mask], list[ImageRef]]:
    """Masks the catalog holds for these pictures with this model, and the pictures that still need one."""
    unique = list({r.hash: r for r in plain}.values())
    with Catalog.open(run.catalog) as cat:
        memo = {h: outs[0][0] for h, outs in
                cat.find_derivations("masks", p_hash, MASKS.code_version, [r.hash for r in unique]).items()}
        hists = cat.mask_histograms(sorted(set(memo.values())))
    store = run.store
    known = {h: craft.Mask(h, m, hists[m]) for h, m in memo.items() if m in hists and store.has(m)}
    return known, [r for r in unique if r.hash not in known]


@contextmanager
def _mask_maker(run: RunInfo, params: MaskParams, todo: list[ImageRef]) -> Iterator[Callable[[ImageRef], craft.Mask] | None]:
    """Picture -> its mask in the store, with the model loaded only when there is work; closed after."""
    if not todo:
        yield None
        return
    model = craft.MaskModel(params.checkpoint, Path(run.workdir) / CONFIG_DIR, params.mode, params.size, params.device)
    get_run_logger().info("masks: %d images on %s (mode %s, size %s)", len(todo), model.device, params.mode,
                          params.size or "the mode's own")
    store = run.store

    def make(ref: ImageRef) -> craft.Mask:
        with Image.open(store.path(ref.hash)) as img:
            img.load()
            mask = model.predict(img)
        digest = store.put_bytes(craft.mask_png(mask))
        return craft.Mask(ref.hash, digest.sha256, craft.histogram(np.asarray(mask)), mask.width, mask.height)

    try:
        yield make
    finally:
        model.close()


def _keeper(run: RunInfo, model_json: str) -> Callable[[list[tuple[ImageRef, craft.Mask]]], None]:
    """Writes a batch of new masks: their histograms and their derivations (a killed run keeps them)."""
    p_hash = params_hash(model_json)

    def keep(pairs: list[tuple[ImageRef, craft.Mask]]) -> None:
        batch = [m for _, m in pairs]
        with Catalog.open(run.catalog) as cat:
            cat.add_mask_stats({"mask_hash": m.mask_hash, "width": m.width, "height": m.height,
                                "histogram": m.histogram} for m in batch)
            cat.add_derivations([
                {"input_hash": m.image_hash, "output_hash": m.mask_hash, "output_suffix": "", "stage": "masks",
                 "params": model_json, "params_hash": p_hash, "code_version": MASKS.code_version}
                for m in batch
            ], run.run_id)

    return keep


def qa_markdown(total: int, rejected: list[tuple[ImageRef, str]]) -> str:
    lines = [f"**masks:** {total - len(rejected)} of {total} masks accepted; "
             f"{len(rejected)} rejected (those images train without masked loss)."]
    if rejected:
        lines += ["", "| image | reason |", "|---|---|"]
        lines += [f"| {ref.name} | {reason} |" for ref, reason in rejected]
    return "\n".join(lines)


MASKS = Stage("masks", masks, caching.code_version(craft, sys.modules[__name__]))
