"""How a stage runs: cache settings, per-image incremental work, the run record.

A stage is a Prefect task whose result is persisted under a key made of its
inputs' content hashes, its parameters and its code version (tasks/caching.py):
re-running an unchanged recipe returns every stage `Cached`. When a stage does
run, `derive_per_image` still only works on images the catalog has not seen
with the same parameters and code, so adding one image processes one image.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger
from prefect.context import FlowRunContext, TaskRunContext

import bakery.manifest
from bakery.account import Account, account
from bakery.craft.gather.names import Wanted, unique_names
from bakery.manifest import ImageRef, Skip, StageResult, picture_subjects
from storage import STORE_DIR, Catalog
from tasks.caching import code_version, stage_cache_key_fn
from tasks.pool import map_images
from tasks.runinfo import RunInfo  # every task names it from here too
from tasks.runlog import REPLAY_LOGGER, brief, write_skips

RESULTS_DIR = "results"

# Set while a run is replayed from the stage cache without Prefect (flows/bake.py `replay_cached`).
REPLAYING: ContextVar[bool] = ContextVar("bakery_replaying", default=False)


def replaying() -> bool:
    """Whether a run is being replayed. Flow functions read REPLAYING through this: Dask pickles a flow's function
    by value with the globals it names (prefect_dask sends the flow run's context), and a ContextVar cannot be pickled."""
    return REPLAYING.get()


class NotReplayed(Exception):
    """A replayed run met a stage that has to run (or anything else): the run goes through Prefect instead."""

    def __init__(self, run_id: str, why: str):
        self.run_id = run_id
        super().__init__(why)


def call(prefect_callable: Any, *args: Any, **kwargs: Any) -> Any:
    """A task or subflow called through Prefect, or as its plain function while a run is replayed."""
    return prefect_callable.fn(*args, **kwargs) if REPLAYING.get() else prefect_callable(*args, **kwargs)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger, or (a replayed run has no Prefect run) one that writes to the run's log file only."""
    if FlowRunContext.get() or TaskRunContext.get():
        return get_run_logger()
    logger = logging.getLogger(REPLAY_LOGGER)
    logger.setLevel(logging.INFO)
    return logger


@dataclass(frozen=True)
class Stage:
    name: str
    task: Task[..., StageResult]
    code_version: str


class StageFailed(RuntimeError):
    def __init__(self, stage: str, reason: str):
        self.stage, self.reason = stage, reason
        super().__init__(f"stage {stage} failed: {reason}")


def params_hash(params_json: str) -> str:
    return hashlib.sha256(params_json.encode()).hexdigest()[:16]


def begin_run(workdir: Path, recipe_path: str, recipe_hash: str, recipe_json: str, workers: int | None) -> RunInfo:
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    run = RunInfo(run_id=uuid.uuid4().hex[:12], workdir=str(workdir), workers=workers)
    with Catalog.open(run.catalog) as cat:
        cat.start_run(run.run_id, recipe_path, recipe_hash, recipe_json, flow_run_id)
    if swept := run.store.sweep_leftovers():
        run_logger().info("removed %d half-written file(s) an interrupted run left in %s/tmp", swept, STORE_DIR)
    return run


def forget_run(workdir: str | Path, run_id: str) -> None:
    """Every catalog row of a replay that stopped (the run goes through Prefect under a run id of its own)."""
    with Catalog.open(RunInfo(run_id, str(workdir)).catalog) as cat:
        cat.forget_run(run_id)


def end_run(run: RunInfo, status: str, message: str | None = None) -> None:
    """Record how the run ended (a long message as one line naming the run's log) and log all its skips."""
    with Catalog.open(run.catalog) as cat:
        cat.finish_run(run.run_id, status, brief(run, message) if message else None)
        write_skips(run, cat.skips_for(run.run_id))


def skip_stage(run: RunInfo, stage: str, note: str, n_in: int | None = None) -> None:
    """Record a stage this run passes over on purpose, with why (`bakery status` and the run summary show it)."""
    with Catalog.open(run.catalog) as cat:
        cat.record_stage(run.run_id, stage, status="skipped", n_in=n_in, duration_s=0.0, message=note)


def warn_stage(run: RunInfo, stage: str, messages: list[str]) -> None:
    """Warnings the flow finds about a stage outside its result (the recipe asks for what the stage cannot do):
    recorded with the run as a stage's own are (`bakery status`, the run summary, the studio), and logged."""
    with Catalog.open(run.catalog) as cat:
        cat.add_stage_warnings(run.run_id, stage, messages)
    for w in messages:
        run_logger().warning("%s: %s", stage, w)


@functools.cache
def _result_format() -> str:
    # Read once per process (it hashes two modules' source). What every stage returns and how per-image work names its outputs: part of every cache key.
    return code_version(bakery.manifest, sys.modules[__name__])


def run_stage(
    stage: Stage, inputs: Any, params_json: str, run: RunInfo, refresh: bool = False, extra: dict[str, Any] | None = None
) -> StageResult:
    """Run (or fetch from cache) one stage, check its picture account and record it in the catalog.

    `extra`: further keyword arguments for the task, outside its cache key (things
    its inputs already identify, e.g. the training set of a bake for evaluate).
    """
    key_fn = stage_cache_key_fn(stage.name, stage.code_version + _result_format())
    started = time.monotonic()
    if REPLAYING.get():
        result = _replayed(stage.name, key_fn, inputs, params_json, run, refresh)
        return _recorded(stage.name, inputs, result, run, True, time.monotonic() - started)
    task = stage.task.with_options(
        cache_key_fn=key_fn, result_storage=Path(run.workdir) / RESULTS_DIR, persist_result=True, refresh_cache=refresh,
    )
    state = task(
        inputs=inputs, params_json=params_json, workdir=run.workdir, run_id=run.run_id, workers=run.workers,
        return_state=True, **(extra or {}),
    )
    duration = time.monotonic() - started
    if not state.is_completed():
        try:
            state.result()
        except Exception as exc:  # the task's own exception carries the reason
            reason = brief(run, f"{type(exc).__name__}: {exc}")
        else:
            reason = state.message or state.name
        with Catalog.open(run.catalog) as cat:
            cat.record_stage(run.run_id, stage.name, status="failed", duration_s=duration, message=reason)
        raise StageFailed(stage.name, reason)
    return _recorded(stage.name, inputs, state.result(), run, state.name == "Cached", duration)


def _recorded(name: str, inputs: Any, result: StageResult, run: RunInfo, cached: bool, duration: float) -> StageResult:
    subjects = picture_subjects(inputs)
    books = account(subjects, result) if subjects is not None else None
    _record_stage(name, run, result, cached, duration, books)
    if books is not None and not books.ok:
        raise StageFailed(name, books.problem(name))
    return result


def _replayed(name: str, key_fn: Callable[[Any, dict[str, Any]], str], inputs: Any, params_json: str, run: RunInfo,
              refresh: bool) -> StageResult:
    """The stage's result as Prefect persisted it under the same cache key; NotReplayed when it has to run."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    key = key_fn(None, {"inputs": inputs, "params_json": params_json, "workdir": run.workdir})
    folder = Path(run.workdir) / RESULTS_DIR
    if refresh or not (folder / key).is_file():
        raise NotReplayed(run.run_id, f"stage {name} is not cached")
    return ResultStore(result_storage=LocalFileSystem(basepath=str(folder))).read(key).result


def _record_stage(name: str, run: RunInfo, result: StageResult, cached: bool, duration: float,
                  books: Account | None) -> None:
    """The stage's row in `stage_runs` (with its picture account), its skips and warnings; one log line."""
    logger = run_logger()
    n_in = books.n_in if books else result.n_in
    status = "cached" if cached else "ran"
    message = None
    if books is not None and not books.ok:
        status, message = "failed", books.problem(name)
        logger.error("%s; every one: lost %s; named twice %s; of unknown origin %s",
                     message, books.lost, books.named_twice, books.unknown)
    with Catalog.open(run.catalog) as cat:
        cat.record_stage(
            run.run_id, name, status=status, n_in=n_in, n_out=result.n_out,
            n_processed=0 if cached else result.n_processed, n_skipped=len(result.skips),
            n_split=books.n_split if books else None, n_lost=books.n_broken if books else None,
            duration_s=duration, message=message,
        )
        cat.add_skips(run.run_id, name, [(s.subject, s.reason) for s in result.skips])
        cat.add_stage_warnings(run.run_id, name, result.warnings)
    for w in result.warnings:
        logger.warning("%s: %s", name, w)
    logger.info(
        "%s: %d in, %d out, %d skipped, %d processed%s", name, n_in, result.n_out, len(result.skips),
        0 if cached else result.n_processed, " (cached)" if cached else "",
    )


def known_pixel_hashes(run: RunInfo, inputs: list[ImageRef]) -> dict[str, str]:
    """Pixel hashes the catalog already holds for `inputs`: workers pass an unchanged image on without decoding it."""
    with Catalog.open(run.catalog) as cat:
        return cat.pixel_hashes([r.hash for r in inputs])


class _PendingRows:
    """Catalog rows of finished images, written in batches while the stage runs.

    A killed run keeps what it finished: the re-run finds those derivations and
    works only on the rest.
    """

    FLUSH_EVERY = 64  # images
    FLUSH_AFTER_S = 10.0

    def __init__(self, run: RunInfo):
        self.run = run
        self.images: list[dict[str, Any]] = []
        self.passthrough: list[tuple[str, str]] = []
        self.derivations: list[dict[str, Any]] = []
        self.facts: list[dict[str, Any]] = []  # perceptual_hashes rows
        self._last = time.monotonic()

    def flush_if_due(self) -> None:
        if len(self.derivations) >= self.FLUSH_EVERY or time.monotonic() - self._last >= self.FLUSH_AFTER_S:
            self.flush()

    def flush(self) -> None:
        if self.derivations or self.images or self.passthrough:
            with Catalog.open(self.run.catalog) as cat:
                cat.add_images(self.images)
                cat.set_pixel_hashes(self.passthrough)
                cat.add_perceptual_hashes(self.facts)
                cat.add_derivations(self.derivations, self.run.run_id)
        self.images, self.passthrough, self.derivations, self.facts = [], [], [], []
        self._last = time.monotonic()


def derive_per_image(
    stage: str,
    code_version: str,
    inputs: list[ImageRef],
    params_json: str,
    run: RunInfo,
    work: Callable[[Any], list[dict[str, Any]] | Skip],
    make_job: Callable[[ImageRef], Any],
) -> StageResult:
    """Apply `work` to each input image not already derived with these parameters and code.

    `work(job)` returns one row per output image (image columns plus `output_suffix`, and
    optionally `pixel_facts`: a perceptual_hashes row of the output), or a Skip. An output
    equal to its input (nothing to change) keeps the input's file.
    """
    p_hash = params_hash(params_json)
    unique = list({ref.hash: ref for ref in sorted(inputs)}.values())
    with Catalog.open(run.catalog) as cat:
        memo = cat.find_derivations(stage, p_hash, code_version, [r.hash for r in unique])
    store = run.store
    todo = [r for r in unique if not all(store.has(h) for h, _ in memo.get(r.hash, [("", "")]))]

    skipped: dict[str, str] = {}  # input hash -> why
    pending = _PendingRows(run)
    for ref, rows in zip(todo, map_images(stage, work, [make_job(r) for r in todo], run.workers)):
        if isinstance(rows, Skip):
            skipped[ref.hash] = rows.reason
            continue
        memo[ref.hash] = [(row["hash"], row["output_suffix"]) for row in rows]
        for row in rows:
            suffix = row.pop("output_suffix")
            if facts := row.pop("pixel_facts", None):
                pending.facts.append({"image_hash": row["hash"], **facts})
            if row["hash"] == ref.hash:
                pending.passthrough.append((ref.hash, row["pixel_hash"]))
            else:
                pending.images.append(row)
            pending.derivations.append(
                {
                    "input_hash": ref.hash,
                    "output_hash": row["hash"],
                    "output_suffix": suffix,
                    "stage": stage,
                    "params": params_json,
                    "params_hash": p_hash,
                    "code_version": code_version,
                }
            )
        pending.flush_if_due()
    pending.flush()

    images, origins = name_outputs(sorted(inputs), memo)
    # Every picture of a skipped content is a skip, named as the stage's inputs name it.
    skips = [Skip(ref.name, skipped[ref.hash]) for ref in sorted(inputs) if ref.hash in skipped]
    return StageResult(images=images, skips=skips, n_in=len(inputs), n_processed=len(todo), origins=origins)


def name_outputs(inputs: list[ImageRef], memo: dict[str, list[tuple[str, str]]]) -> tuple[list[ImageRef], dict[str, str]]:
    """Each input's outputs named `<input name><suffix>` (`anim` -> `anim0001`), unique across the stage.

    Returns the outputs and, for every output not named like its input, the input's name.
    """
    wanted = [(ref, out_hash, ref.name + suffix) for ref in inputs for out_hash, suffix in memo.get(ref.hash, [])]
    # One identity per output: the input it came from and its own content ("anim0001" of anim.gif
    # and a file "anim0001.png" are two pictures).
    keys = [f"{out_hash}:{ref.name}" for ref, out_hash, _ in wanted]
    names = unique_names([Wanted(name, key) for (_, _, name), key in zip(wanted, keys)])
    images, origins = [], {}
    for (ref, out_hash, _), key in zip(wanted, keys):
        name = names[key]
        images.append(ImageRef(name, out_hash))
        if name != ref.name:
            origins[name] = ref.name
    return images, origins
