"""Bake: train the LoRA on the prune stage's TrainSet; kohya files every epoch, resumable.

The task is cached like every stage (inputs + parameters + code). Its training
state lives in `work/bakes/<name>-<bake key>/state/`, keyed by the same
identity plus the base model file, so re-running the flow after a crash or a
kill resumes from the last finished epoch without any flag.
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from tqdm import tqdm

from bakery.craft.bake import data as data_craft
from bakery.craft.bake import loop as craft
from bakery.craft.bake import optim, precision, state, step, training
from bakery.craft.bake import validation as validation_craft
from bakery.craft.bake.bases import load as bases
from bakery.craft.bake.networks import kohya_lora, lycoris_net
from bakery.craft.bake.throughput import Throughput, peak_memory
from bakery.manifest import BakeOutput, ImageRef, StageResult, TrainSet, digest
from bakery.recipe import BucketParams, TrainParams
from bakery.stage_params import base_fingerprint
from storage import Catalog
from storage.locks import exclusive
from tasks import caching
from tasks.progress import UPDATE_EVERY_S, _in_prefect_run
from tasks.stage import RunInfo, Stage, run_logger

BAKES_DIR = "bakes"


def bake_key(trainset: TrainSet, params_json: str, code: str, base_model: str | None, train: Any = None) -> str:
    """`train`: [train], whose companion files (a changed text encoder re-bakes) join the base model's fingerprint."""
    return digest({"trainset": trainset, "params": params_json, "code": code,
                   "model": base_fingerprint(base_model, train)})[:16]


def session_id(trainset: TrainSet, params_json: str, base_model: str | None, train: Any = None) -> str:
    """The files' `ss_session_id`: the bake key without the code, so a refactor leaves the LoRA files byte-identical."""
    return digest({"trainset": trainset, "params": params_json, "model": base_fingerprint(base_model, train)})[:16]


class BakeProgress:
    """Terminal bar + Prefect progress artifact (steps, epoch, loss, it/s, ETA) + loss rows for the catalog."""

    def __init__(self, catalog: Path, key: str, epochs: int, stage: str = "bake"):
        """`stage`: "slide" for a slider, whose "epochs" are its steps (the bar shows no epoch then)."""
        self.catalog, self.key, self.epochs, self.stage = catalog, key, epochs, stage
        self.rows: list[dict[str, Any]] = []
        self._bar: tqdm | None = None
        self._artifact = None
        self._last = 0.0
        self._first_step: tuple[int, float] | None = None
        self.throughput = Throughput()

    def step(self, info: craft.StepInfo) -> None:
        if warning := self.throughput.tick(time.monotonic()):
            run_logger().warning("%s: %s", self.stage, warning)
        if self._bar is None:
            self._bar = tqdm(total=info.total, initial=info.step - 1, desc=self.stage, unit="step", file=sys.stderr,
                             leave=False)
            if _in_prefect_run():
                self._artifact = create_progress_artifact(progress=0.0, key=f"{self.stage}-progress",
                                                          description=f"{self.stage}: starting")
        if self._first_step is None:
            self._first_step = (info.step - 1, time.monotonic())
        self.rows.append({"bake_key": self.key, "step": info.step, "epoch": info.epoch, "loss": info.loss,
                          "lr": info.lr})
        self._bar.update(1)
        epoch = {"epoch": f"{info.epoch}/{self.epochs}"} if self.stage == "bake" else {}
        self._bar.set_postfix(**epoch, loss=f"{info.loss:.4f}")
        now = time.monotonic()
        if self._artifact and (now - self._last >= UPDATE_EVERY_S or info.step == info.total):
            self._last = now
            done = info.step - self._first_step[0]
            rate = done / max(now - self._first_step[1], 1e-9)
            eta = (info.total - info.step) / rate if rate else 0.0
            update_progress_artifact(
                self._artifact, progress=100.0 * info.step / info.total,
                description=(f"{self.stage}: step {info.step}/{info.total}, "
                             + (f"epoch {info.epoch}/{self.epochs}, " if self.stage == "bake" else "")
                             + f"loss {info.loss:.4f}, {rate:.2f} it/s, ETA {eta:.0f} s"),
            )

    def validation(self, v: validation_craft.ValidationLoss) -> None:
        """The validation loss of one epoch, into the catalog at once (before the epoch's state is saved)."""
        with Catalog.open(self.catalog) as cat:
            cat.add_validation_loss([{"bake_key": self.key, "epoch": v.epoch, "loss": v.loss, "held_out": v.held_out,
                                      "n_pictures": v.n_pictures}])

    def flush(self) -> None:
        if self.rows:
            with Catalog.open(self.catalog) as cat:
                cat.add_bake_log(self.rows)
            self.rows = []

    def close(self) -> None:
        self.flush()
        if self._bar is not None:
            self._bar.close()


def waiting(logger, stage: str, folder: Path, holder: str) -> None:
    logger.warning("%s: %s is writing %s already (the same variant, or the same recipe run twice): waiting for it, "
                   "then resuming from what it saved", stage, holder, folder)


@task(name="bake")
def bake(inputs: TrainSet, params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    data = json.loads(params_json)
    params = TrainParams.model_validate(data["train"])
    if inputs.unet_only:  # rules.md §10: a style captioned with no tags trains the UNet alone (export-kohya says so too)
        params = params.model_copy(update={"train_text_encoder": False})
    buckets = BucketParams.model_validate(data["buckets"])
    name = data["name"]
    run = RunInfo(run_id, workdir, workers)
    key = bake_key(inputs, params_json, BAKE.code_version, params.base_model, params)
    folder = Path(workdir) / BAKES_DIR / f"{name}-{key[:12]}"
    progress = BakeProgress(run.catalog, key, params.epochs)
    store = run.store
    logger = get_run_logger()
    try:
        with exclusive(folder / "state", partial(waiting, logger, "bake", folder)):
            result = craft.bake(
                inputs, params, image_path=store.path, workdir=Path(workdir), out_dir=folder,
                state_dir=folder / "state", name=name, bake_key=key,
                session_id=session_id(inputs, params_json, params.base_model, params),
                data=data_craft.DataConfig(buckets.resolution, buckets.min_side, buckets.max_side, buckets.step,
                                      params.batch_size),
                on_step=progress.step, on_epoch=lambda epoch, path: progress.flush(),
                on_validation=progress.validation, validation_steps=data.get("validation_timesteps", 4),
            )
    finally:
        progress.close()
    if result.resumed_from_epoch:
        logger.info("bake: resumed from the state saved after epoch %d", result.resumed_from_epoch)
    with Catalog.open(run.catalog, read_only=True) as cat:
        log = cat.bake_log(key)
        validation = {r["epoch"]: r["loss"] for r in cat.validation_loss(key)}
    per_epoch: dict[int, list[float]] = {}
    for row in log:
        per_epoch.setdefault(row["epoch"], []).append(row["loss"])
    if _in_prefect_run():
        create_table_artifact(
            [{"epoch": e, "mean loss": round(sum(v) / len(v), 6), "validation loss": validation.get(e),
              "file": Path(result.files.get(e, "")).name}
             for e, v in sorted(per_epoch.items())],
            key="bake-loss", description=f"{name}: mean loss per epoch",
        )
    rate = progress.throughput.steps_per_s
    logger.info("bake: %d steps, %d epoch files in %s; %s steps/s, %s", result.steps, len(result.files), folder,
                f"{rate:.2f}" if rate else "-", peak_memory())
    output = BakeOutput(
        name=name, base_model=result.extra["base_source"], architecture=result.extra.get("architecture", "sd15"), files=result.files,
        bake_key=key, triggers=list(inputs.triggers), clip_skip=params.clip_skip,
        base_files=result.extra.get("base_files", {}),
    )
    # Held-out validation pictures go on too: not trained on, but validated on (the picture account follows them).
    images = [ImageRef(t.subject, t.image_hash, t.mask_hash) for t in inputs.images + inputs.held_out()]
    return StageResult(images=images, n_in=len(images), n_processed=len(images), payload=output,
                       warnings=data_craft.resolution_warnings(output.architecture, buckets.resolution))


BAKE = Stage("bake", bake, caching.code_version(craft, training, step, validation_craft, state, data_craft, optim,
                                                 precision, *bases.modules(), kohya_lora, lycoris_net,
                                                 sys.modules[__name__]))
