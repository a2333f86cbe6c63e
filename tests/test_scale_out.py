"""Per-image stages on a local Dask cluster (2 workers) give the same catalog as the local run."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import Catalog
from tests.conftest import write_recipe
from tests.images import gradient

pytestmark = pytest.mark.usefixtures("prefect_server")


def _derivations(workdir: Path) -> set[tuple]:
    with Catalog.open(workdir, read_only=True) as cat:
        rows = cat.rows("SELECT stage, input_hash, output_hash, output_suffix, params_hash, code_version FROM derivations")
    return {tuple(r.values()) for r in rows}


def _run(folder: Path, runtime: str) -> tuple[Path, str]:
    from flows.bake import bake_lora

    images = folder / "images"
    images.mkdir(parents=True)
    for i in range(12):
        gradient(96 + 8 * i, 64, seed=i).save(images / f"img{i:02d}.{'jpg' if i % 2 else 'png'}")
    recipe = write_recipe(folder).read_text().replace("workers = 2\n", f"workers = 2\n{runtime}")
    (folder / "recipe.toml").write_text(recipe)
    return folder / "work", bake_lora(str(folder / "recipe.toml"))


def test_dask_cluster_gives_the_same_catalog(tmp_path: Path):
    local_work, _ = _run(tmp_path / "local", "")
    dask_work, run_id = _run(tmp_path / "dask", 'task_runner = "dask"\nchunk_size = 5\n')

    local, on_dask = _derivations(local_work), _derivations(dask_work)
    assert sum(1 for d in local if d[0] == "convert") == 12  # one convert derivation per image
    assert on_dask == local
    with Catalog.open(dask_work, read_only=True) as cat:
        st = {s["stage"]: s for s in cat.stage_table(run_id)}
    assert st["convert"]["status"] == "ran" and st["convert"]["n_processed"] == 12
    # The work really went through Prefect task runs on the Dask workers: 12 images / 5 per chunk.
    assert _completed_task_runs("convert-chunk") == 3


def _completed_task_runs(name: str) -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)))
    return sum(1 for r in runs if r.state and r.state.is_completed())
