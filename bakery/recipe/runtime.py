"""The recipe's [runtime] section: where per-image work runs (processes or Dask)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bakery.recipe.base import _Section


class RuntimeParams(_Section):
    # Processes for per-image work; None = one per CPU core.
    workers: Annotated[int, Field(gt=0)] | None = None
    # Where per-image work runs: local processes, or Dask (prefect-dask's DaskTaskRunner).
    task_runner: Literal["processes", "dask"] = "processes"
    # An existing Dask scheduler (tcp://host:8786); unset = $BAKERY_DASK_ADDRESS, else a local cluster.
    dask_address: str | None = None
    # Images per Dask task: keeps a flow run to tens of task runs, not thousands.
    chunk_size: Annotated[int, Field(gt=0)] = 256
