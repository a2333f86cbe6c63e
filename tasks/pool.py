"""Run per-image work in a process pool or on a Dask cluster, streaming results in input order.

Where the work runs never changes what it produces, so it is not part of any cache
key: the flow picks the runner for the whole run (`use_runner`), stages just call
`map_images`.
"""

from __future__ import annotations

import contextvars
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from tasks.progress import StageProgress

J = TypeVar("J")
R = TypeVar("R")

# Below this many jobs a pool's start-up (~0.5 s per worker) costs more than it saves.
MIN_JOBS_FOR_POOL = 8



@dataclass(frozen=True)
class Runner:
    """Where per-image work runs: local processes, or Dask (an existing cluster, else a local one)."""

    kind: str = "processes"  # "processes" | "dask"
    dask_address: str | None = None  # tcp://scheduler:8786; None = a temporary LocalCluster
    chunk_size: int = 256  # images per Dask task: task count stays small (Prefect ~100 task runs/s)
    api_url: str | None = None  # the Prefect API Dask workers report their task runs to


_RUNNER: contextvars.ContextVar[Runner] = contextvars.ContextVar("bakery_runner", default=Runner())


class _RunPools:
    """Worker processes kept for a whole run, so the stages after the first find them started.

    Spawning a worker (a fresh interpreter importing Pillow, numpy and our modules) costs about
    a second; paying it once per stage was most of a small stage's time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[int, ProcessPoolExecutor] = {}

    def get(self, workers: int) -> ProcessPoolExecutor:
        with self._lock:
            pool = self._pools.get(workers)
            if pool is None or getattr(pool, "_broken", False):  # a worker died: start afresh
                pool = self._pools[workers] = ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            return pool

    def shutdown(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


_POOLS: contextvars.ContextVar[_RunPools | None] = contextvars.ContextVar("bakery_pools", default=None)


@contextmanager
def use_runner(runner: Runner) -> Iterator[None]:
    """Run per-image work on `runner` until the block ends; local worker processes live that long."""
    pools = _RunPools()
    token, pools_token = _RUNNER.set(runner), _POOLS.set(pools)
    try:
        yield
    finally:
        _POOLS.reset(pools_token)
        _RUNNER.reset(token)
        pools.shutdown()


def worker_count(requested: int | None) -> int:
    return requested or os.cpu_count() or 1


def chunks(jobs: Sequence[J], size: int) -> list[Sequence[J]]:
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def map_images(
    stage: str, fn: Callable[[J], R], jobs: Sequence[J], workers: int | None
) -> Iterator[R]:
    """fn(job) for every job, with progress; in worker processes when it pays.

    'spawn' rather than fork: the flow process runs Prefect's threads, and forking a
    process with threads can deadlock the child.
    """
    runner = _RUNNER.get()
    if runner.kind == "dask" and jobs:
        yield from _map_on_dask(stage, fn, jobs, workers, runner)
        return
    workers = min(worker_count(workers), len(jobs))
    with StageProgress(stage, len(jobs)) as progress:
        if workers <= 1 or len(jobs) < MIN_JOBS_FOR_POOL:
            for job in jobs:
                yield fn(job)
                progress.advance()
            return
        pools = _POOLS.get()
        with ExitStack() as stack:
            if pools is not None:
                pool = pools.get(workers)
            else:  # outside a run (a stage called on its own): a pool for this call only
                pool = stack.enter_context(ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("spawn")))
            # Small chunks keep memory flat (a few images in flight per worker).
            for result in pool.map(fn, jobs, chunksize=2):
                yield result
                progress.advance()


def run_chunk(fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
    return [fn(job) for job in jobs]


def _map_on_dask(
    stage: str, fn: Callable[[J], R], jobs: Sequence[J], workers: int | None, runner: Runner
) -> Iterator[R]:
    """One Prefect task run per chunk, on Dask workers; results come back in input order."""
    from prefect import task
    from prefect_dask import DaskTaskRunner

    chunk_task = task(run_chunk, name=f"{stage}-chunk", persist_result=False)
    if runner.dask_address:
        dask = DaskTaskRunner(address=runner.dask_address)
    else:
        env: dict[str, Any] = {"PREFECT_API_URL": runner.api_url} if runner.api_url else {}
        dask = DaskTaskRunner(
            cluster_kwargs={"n_workers": worker_count(workers), "threads_per_worker": 1, "processes": True,
                            "dashboard_address": None, "env": env}
        )
    with StageProgress(stage, len(jobs)) as progress, dask:
        futures = [dask.submit(chunk_task, {"fn": fn, "jobs": list(part)}) for part in chunks(jobs, runner.chunk_size)]
        for future in futures:
            for result in future.result():
                yield result
                progress.advance()
