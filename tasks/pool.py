"""Run per-image work in a process pool, streaming results in input order."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tasks.progress import StageProgress

J = TypeVar("J")
R = TypeVar("R")

# Below this many jobs a pool's start-up (~0.5 s per worker) costs more than it saves.
MIN_JOBS_FOR_POOL = 8


def worker_count(requested: int | None) -> int:
    return requested or os.cpu_count() or 1


def map_images(
    stage: str, fn: Callable[[J], R], jobs: Sequence[J], workers: int | None
) -> Iterator[R]:
    """fn(job) for every job, with progress; in worker processes when it pays.

    'spawn' rather than fork: the flow process runs Prefect's threads, and forking a
    process with threads can deadlock the child.
    """
    workers = min(worker_count(workers), len(jobs))
    with StageProgress(stage, len(jobs)) as progress:
        if workers <= 1 or len(jobs) < MIN_JOBS_FOR_POOL:
            for job in jobs:
                yield fn(job)
                progress.advance()
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            # Small chunks keep memory flat (a few images in flight per worker).
            for result in pool.map(fn, jobs, chunksize=2):
                yield result
                progress.advance()
