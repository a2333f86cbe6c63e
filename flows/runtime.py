"""Where flows report to: a Prefect server given by PREFECT_API_URL, or our own temporary one.

Prefect's built-in ephemeral server inherits the terminal and is terminated
while events are still being persisted, which prints CancelledError
tracebacks and "Error flushing events" at exit. Ours writes its output to a
log file in the work dir and is stopped only after the client has flushed its
logs and events.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drain_client_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10)


@contextmanager
def _temporary_server(log_file: Path) -> Iterator[str]:
    import prefect

    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Prefect server exited at start (code {proc.returncode}); see {log_file}")
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start in {STARTUP_TIMEOUT_S:.0f} s; see {log_file}")
            time.sleep(0.1)
        yield api_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def configured_api() -> str | None:
    """The Prefect server runs report to (PREFECT_API_URL), if one is configured."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextmanager
def prefect_api(log_dir: Path) -> Iterator[str]:
    """Yield the API URL flows report to for the duration of the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = configured_api()
    if configured:
        try:
            yield configured
        finally:
            drain_client_workers()
        return
    with _temporary_server(log_dir / "prefect-server.log") as api_url:
        # No flow-run heartbeats: they tell a long-lived server that a run crashed, but this
        # server ends with the process. Each flow run's end waited up to 1 s for the thread.
        with temporary_settings({PREFECT_API_URL: api_url, "flows.heartbeat_frequency": None}):
            try:
                yield api_url
            finally:
                drain_client_workers()
