"""A sweep on a Prefect work pool: a real server, the sweep deployment of deployments/prefect.yaml, two process
workers (`--limit 1`, one variant each at a time). Both variants bake in parallel; the worker baking one of them
is killed mid-bake (SIGKILL, with its flow run: a machine lost); the sweep notices the lost heartbeat, submits
that variant again, the other worker takes it and resumes the bake from its saved state; both are judged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storage import Catalog
from tests.test_sweep import TWO_VARIANTS, make_sweep_project

ROOT = Path(__file__).parent.parent
POOL = "bakery-gpu"
EPOCHS = 8  # a long enough bake that both variants are seen running at once with a saved epoch
VARIANTS = """
[sweep]
deployment = "bake-lora/sweep-variant"
heartbeat_s = 1.0
lost_after_s = 6.0
""" + TWO_VARIANTS


def _env(api_url: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1", "BAKERY_HOME": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _deploy(api_url: str, recipe: Path, log: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:  # the other test of this module may have made it
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:
            pass
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
         "--name", "sweep-variant"],
        cwd=ROOT, env={**_env(api_url), "BAKERY_RECIPE": str(recipe)}, capture_output=True, text=True, timeout=180)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def _descendant_running(worker: subprocess.Popen, flow_run_id: str):
    import psutil

    for proc in psutil.Process(worker.pid).children(recursive=True):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


class Killer(threading.Thread):
    """Once both variants are running and one has saved the state of a finished epoch, SIGKILL its worker
    and everything under it (its flow run included)."""

    def __init__(self, workers: list[subprocess.Popen], work: Path, api_url: str):
        super().__init__(daemon=True)
        self.workers, self.work, self.api_url = workers, work, api_url
        self.killed: dict = {}
        self.stop = threading.Event()

    def run(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # Settings do not follow a thread: name the test's server again.
        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            while not self.stop.wait(0.2) and not self.killed:
                running = {r.parameters["variant"]: r for r in client.read_flow_runs()
                           if r.parameters.get("variant") and r.state and r.state.is_running()}
                saved = sorted(self.work.glob("bakes/t-*/state/state.pt"))
                if len(running) == 2 and saved:
                    self._kill(running, saved[0].parent.parent)

    def _kill(self, running: dict, bake_dir: Path) -> None:
        import psutil

        variant = bake_dir.name.rsplit("-", 1)[0].removeprefix("t-")
        flow_run_id = str(running[variant].id)
        for worker in self.workers:
            if _descendant_running(worker, flow_run_id) is not None:
                tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
                first = bake_dir / f"t-{variant}-000001.safetensors"
                self.killed = {"variant": variant, "worker": worker, "flow_run_id": flow_run_id,
                               "epoch1": first.stat().st_mtime_ns if first.exists() else None,
                               "epochs_saved": len(list(bake_dir.glob("*.safetensors")))}
                for proc in tree:
                    try:
                        proc.send_signal(signal.SIGKILL)
                    except psutil.NoSuchProcess:
                        pass
                return


@pytest.mark.timeout(900)
def test_a_sweep_on_two_workers_survives_a_worker_killed_mid_bake(prefect_server: str, tmp_path: Path):
    from flows.bake import bake_lora

    recipe = make_sweep_project(tmp_path / "chara", VARIANTS, epochs=EPOCHS)
    recipe.write_text(recipe.read_text().replace("[evaluate]\n", "[evaluate]\nlast_epochs = 2\n"))
    _deploy(prefect_server, recipe, tmp_path / "deploy.log")
    logs = [open(tmp_path / f"worker{i}.log", "wb") for i in (1, 2)]
    workers = [subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "1",
                                 "--name", f"gpu{i}"], cwd=tmp_path, env=_env(prefect_server), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True) for i, log in zip((1, 2), logs)]
    killer = Killer(workers, tmp_path / "chara" / "work", prefect_server)
    killer.start()
    try:
        state = bake_lora(str(recipe), return_state=True)
    finally:
        killer.stop.set()
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
        for log in logs:
            log.close()
    tails = "\n".join((tmp_path / f"worker{i}.log").read_text(errors="replace")[-1500:] for i in (1, 2))
    assert state.is_completed(), f"{state.message}\n{tails}"
    killed = killer.killed
    assert killed, f"no worker was killed: both variants never ran at once with a saved epoch\n{tails}"
    assert 1 <= killed["epochs_saved"] < EPOCHS, killed  # mid-bake

    run_id = state.result()
    work = tmp_path / "chara" / "work"
    with Catalog.open(work, read_only=True) as cat:
        rows = {r["variant"]: r for r in cat.sweep_variants(run_id)}
        lost = rows[killed["variant"]]
        resumed_log = cat.bake_log(lost["bake_key"])
        stages = {s["stage"]: s["status"] for s in cat.stage_table(lost["variant_run_id"])}
    assert {r["status"] for r in rows.values()} == {"completed"}, rows
    assert all(r["eval_key"] and Path(r["report_path"]).is_file() for r in rows.values())
    assert lost["attempts"] == 2 and "worker lost: no heartbeat for 6 s: submitted again" in lost["history"][0]
    assert lost["history"][1].endswith(": completed")
    other = next(r for v, r in rows.items() if v != killed["variant"])
    assert other["attempts"] == 1
    assert stages["bake"] == "ran" and stages["prune"] == "cached"
    # Resumed, not restarted: the first epoch's file is the one the killed worker wrote, and every step is
    # logged once.
    first = next(work.glob(f"bakes/t-{killed['variant']}-*/t-{killed['variant']}-000001.safetensors"))
    assert first.stat().st_mtime_ns == killed["epoch1"]
    steps = [r["step"] for r in resumed_log]
    assert steps == list(range(1, len(steps) + 1))
    assert len(list(first.parent.glob("*.safetensors"))) == EPOCHS

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        gone = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[killed["flow_run_id"]])))
    assert gone[0].state.is_crashed() and "worker lost" in gone[0].state.message
    report = next(work.glob(f"sweeps/{run_id}-*/report.html")).read_text()
    assert "Ranking across variants" in report and "worker lost" in report


@pytest.mark.timeout(600)
def test_variants_that_no_worker_takes_are_cancelled_and_reported(prefect_server: str, tmp_path: Path):
    """No worker on the pool: the sweep gives up after `no_worker_after_s` instead of waiting for ever."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.bake import bake_lora

    no_worker = '[sweep]\ndeployment = "bake-lora/sweep-variant"\nno_worker_after_s = 3.0\n' + TWO_VARIANTS
    recipe = make_sweep_project(tmp_path / "chara", no_worker, epochs=1)
    _deploy(prefect_server, recipe, tmp_path / "deploy.log")
    state = bake_lora(str(recipe), return_state=True)
    assert state.is_failed() and "every variant of the sweep failed" in state.message, state.message
    work = tmp_path / "chara" / "work"
    with Catalog.open(work, read_only=True) as cat:
        run_id = cat.last_run()["run_id"]
        rows = cat.sweep_variants(run_id)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"failed"}, rows
    why = f"no worker took it in 3 s while no variant ran: start one (prefect worker start --pool {POOL})"
    assert all(why in r["message"] and r["attempts"] == 1 for r in rows), rows
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[r["history"][0].split("flow run ")[1].split(")")[0] for r in rows])))
    assert len(runs) == 2 and all(r.state.is_cancelled() for r in runs)  # a worker started later takes none
    assert not list(work.glob("bakes/*/*.safetensors"))
    report = next(work.glob(f"sweeps/{run_id}-*/report.html")).read_text()
    assert "no worker took it" in report
