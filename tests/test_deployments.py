"""Deployments on a real Prefect server: `bakery serve`, a run through the API, its artifacts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_recipe
from tests.images import gradient


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _wait_for(what: str, check, timeout: float = 90.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"serve exited early ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def served_recipe(prefect_server: str, tmp_path: Path):
    folder = tmp_path / "nightly_chara"
    (folder / "images").mkdir(parents=True)
    for i in range(3):
        gradient(96 + 16 * i, 80, seed=i).save(folder / "images" / f"img{i}.png")
    recipe = write_recipe(folder)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bakery.cli", "serve", str(recipe), "--cron", "0 3 * * *"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        yield recipe, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_serve_then_run_through_the_api_completes_with_artifacts(served_recipe, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment

    recipe, proc = served_recipe

    def deployment():
        with get_client(sync_client=True) as client:
            try:
                return client.read_deployment_by_name("bake-lora/nightly_chara")
            except Exception:
                return None

    dep = _wait_for("the served deployment", deployment, proc=proc)
    assert dep.parameters["recipe_path"] == str(recipe.resolve())
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]

    flow_run = run_deployment("bake-lora/nightly_chara", timeout=240, poll_interval=1)
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        flow_run.state, (tmp_path / "serve.log").read_text(errors="replace")[-3000:])

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    keys = {a.key for a in artifacts}
    assert "bake-summary" in keys
    summary = next(a for a in artifacts if a.key == "bake-summary")
    assert "| ingest | ran | 3 | 0 | 3 | 0 | ok |" in summary.data  # in, +split, out, skipped, account

    from storage import Catalog

    with Catalog.open(recipe.parent / "work", read_only=True) as cat:
        run = cat.last_run()
        assert run["status"] == "completed" and run["flow_run_id"] == str(flow_run.id)

    # A new image seen by `bakery watch` triggers the deployment through a Prefect event.
    env = {**os.environ, "PREFECT_API_URL": os.environ.get("PREFECT_API_URL") or _api_url(), "PYTHONUNBUFFERED": "1"}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "bakery.cli", "watch", str(recipe), "--interval", "0.5", "--polls", "20"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert "watching 3 files" in watcher.stdout.readline()
        gradient(128, 96, seed=9).save(recipe.parent / "images" / "new.png")
        out = watcher.communicate(timeout=60)[0]
    finally:
        watcher.kill()
    assert "event bakery.images.added sent" in out, out

    def triggered_run():
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            )
        done = [r for r in runs if r.id != flow_run.id and r.state and r.state.is_final()]
        return done[0] if done else None

    second = _wait_for("the event-triggered run", triggered_run, timeout=180, proc=proc)
    assert second.state.is_completed(), (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
    with Catalog.open(recipe.parent / "work", read_only=True) as cat:
        stages = {s["stage"]: s for s in cat.stage_table(cat.last_run()["run_id"])}
    assert stages["ingest"]["n_in"] == 4  # the new image is seen...
    assert stages["ingest"]["n_processed"] == 1 and stages["convert"]["n_processed"] == 1  # ...and only it is worked on


def test_watch_notices_new_images(tmp_path: Path):
    from bakery.watch import folders_fingerprint

    (tmp_path / "a" / "sub").mkdir(parents=True)
    gradient(64, 64, seed=1).save(tmp_path / "a" / "one.png")
    before = folders_fingerprint([(tmp_path / "a", True)])
    assert before[1] == 1 and folders_fingerprint([(tmp_path / "a", True)]) == before
    gradient(64, 64, seed=2).save(tmp_path / "a" / "sub" / "two.png")
    assert folders_fingerprint([(tmp_path / "a", False)]) == before  # not recursive: sub/ unseen
    after = folders_fingerprint([(tmp_path / "a", True)])
    assert after[1] == 2 and after[0] != before[0]
