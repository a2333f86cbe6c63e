"""Regularisation (rules.md §11): one image per training image, drawn by the base model.

Runs between prune and bake when `[regularisation] enabled`. Input: the prune
stage's TrainSet; payload out: the same set with a regularisation image beside
each training image (`is_reg`, same folder and name, caption = the training
caption without its triggers). The stage is cached on the training set, the
base model's identity and the parameters; when it runs it draws only the images
the catalog does not hold for the same caption, seed, size, model and code.
Each image goes to the content store with a `regularisation` derivation from
its training image whose parameters say how it was drawn (`bakery provenance`).
The picture account: every training picture goes on, and each names the one
new picture drawn beside it as its own (`split`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task

from bakery.craft.bake import regularisation as craft
from bakery.craft.bake.bases import load as bases
from bakery.craft.bake.bases.family import BaseFiles
from bakery.craft.bake.bases.load import TINY, load_base, use_prediction
from bakery.craft.taste import xyz
from bakery.manifest import ImageRef, StageResult, TrainSet
from bakery.recipe import stage_params_json
from storage import Catalog, digest_bytes
from tasks import caching
from tasks.caption.prune import train_caption_rows
from tasks.progress import StageProgress
from tasks.stage import RunInfo, Stage, params_hash


def reg_settings(cfg: dict[str, Any]) -> craft.RegSettings:
    r, b = cfg["render"], cfg["buckets"]
    return craft.RegSettings(r["steps"], r["cfg_scale"], r["negative_prompt"], r["sampler"], cfg["size"],
                             b["min_side"], b["max_side"], b["step"], cfg["seed"], cfg["clip_skip"])


@task(name="regularisation")
def regularisation(inputs: TrainSet, params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    """Read the training images' sizes and earlier renders -> craft.regularise -> write images and derivations."""
    cfg = json.loads(params_json)
    run, settings = RunInfo(run_id, workdir, workers), reg_settings(cfg)
    # The tiny model is built from the triggers: they are part of its identity.
    model = {**cfg["model"], **({"words": sorted(set(inputs.triggers))} if cfg["model"]["base_model"] == TINY else {})}
    with Catalog.open(run.catalog) as cat:
        sizes = {h: (r["width"], r["height"]) for h, r in cat.image_rows([t.image_hash for t in inputs.images]).items()}
    jobs = craft.plan_reg(inputs, sizes, settings)
    known = _known(run, jobs, settings, model)
    todo = [j for j in jobs if j not in known]
    with _drawer(run, cfg, inputs.triggers, todo) as make, StageProgress("regularisation", len(todo)) as progress:
        out = craft.regularise(inputs, jobs, known, make, _keeper(run, settings, model), progress.advance)
    get_run_logger().info("regularisation: %d images beside %d training images (%d drawn, %d from earlier runs)",
                          len(jobs), len(inputs.images), out.made, len(known))
    # Held-out validation pictures go on as they came (no image is drawn beside them: they are not trained on).
    images = [ImageRef(t.subject, t.image_hash, t.mask_hash) for t in out.trainset.images + out.trainset.held_out()]
    return StageResult(images=images, n_in=len(inputs.images), n_processed=out.made, origins=out.origins,
                       payload=out.trainset)


def _job_params(job: craft.RegJob, settings: craft.RegSettings, model: dict[str, Any]) -> str:
    return stage_params_json(job.params(settings, model))


def _known(run: RunInfo, jobs: list[craft.RegJob], settings: craft.RegSettings,
           model: dict[str, Any]) -> dict[craft.RegJob, str]:
    """Images the catalog holds for these jobs (same parameters and code) that are still in the store."""
    with Catalog.open(run.catalog) as cat:
        found = cat.derived_by_params(REGULARISATION.name, REGULARISATION.code_version,
                                      sorted({j.source.image_hash for j in jobs}))
    store, known = run.store, {}
    for job in jobs:
        out = found.get((job.source.image_hash, params_hash(_job_params(job, settings, model))))
        if out and store.has(out):
            known[job] = out
    return known


@contextmanager
def _drawer(run: RunInfo, cfg: dict[str, Any], triggers: list[str],
            todo: list[craft.RegJob]) -> Iterator[Callable[[craft.RegJob], str] | None]:
    """Job -> its image in the store, with the base model loaded only when there is something to draw."""
    if not todo:
        yield None
        return
    m = cfg["model"]
    base = load_base(m["base_model"], run.workdir, architecture=m["architecture"], words=triggers,
                     files=BaseFiles.of(m))
    use_prediction(base, m.get("v_parameterization"), m.get("zero_terminal_snr"))  # the sampler matches the model
    taster = xyz.Taster(base.source, base.architecture, cfg["clip_skip"], cfg["render"]["sampler"],
                        cfg["render"]["device"], pipe=base.pipe)
    get_run_logger().info("regularisation: drawing %d images with %s on %s", len(todo), m["base_model"], taster.device)
    settings, store = reg_settings(cfg), run.store
    try:
        yield lambda job: store.put_bytes(craft.render_png(taster.render, job, settings)).sha256
    finally:  # bake loads its own copy next: free this one's (GPU) memory first
        taster.pipe = base.pipe = None
        if taster.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def _keeper(run: RunInfo, settings: craft.RegSettings,
            model: dict[str, Any]) -> Callable[[list[tuple[craft.RegJob, str]]], None]:
    """Writes a batch of new images: their image rows and their derivations from their training images."""
    store = run.store

    def keep(batch: list[tuple[craft.RegJob, str]]) -> None:
        rows, derivations = [], []
        for job, h in batch:
            d, pj = digest_bytes(store.read_bytes(h)), _job_params(job, settings, model)
            rows.append({"hash": h, "md5": d.md5, "width": job.width, "height": job.height, "mode": "RGB",
                         "format": "PNG", "bytes": d.size, "frames": 1})
            derivations.append({"input_hash": job.source.image_hash, "output_hash": h, "output_suffix": "",
                                "stage": REGULARISATION.name, "params": pj, "params_hash": params_hash(pj),
                                "code_version": REGULARISATION.code_version})
        with Catalog.open(run.catalog) as cat:
            cat.add_images(rows)
            cat.add_derivations(derivations, run.run_id)

    return keep


def record_trainset(run: RunInfo, trainset: TrainSet) -> None:
    """The run's training set in the catalog with its regularisation images (what `export-kohya` writes),
    cached stage or not."""
    with Catalog.open(run.catalog) as cat:
        cat.add_train_captions(run.run_id, train_caption_rows(trainset.images))


REGULARISATION = Stage("regularisation", regularisation,
                       caching.code_version(craft, xyz, *bases.modules(), sys.modules[__name__]))
