"""A run killed (SIGKILL) in the middle of a per-image stage resumes without redoing finished work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from storage import Catalog, digest_file
from tests.conftest import write_recipe
from tests.images import gradient

N_IMAGES = 100


BAR = re.compile(r"convert:\s*\d+%\|[^|]*\|\s*(\d+)/\d+")


def _kill_when(proc: subprocess.Popen, done: int, timeout: float = 400.0) -> bool:
    """SIGKILL `proc` once its convert progress bar shows at least `done` images finished."""
    killed = threading.Event()

    def read() -> None:
        tail = ""
        while (chunk := proc.stderr.read(64)) != "":
            tail = (tail + chunk)[-300:]
            counts = [int(n) for n in BAR.findall(tail)]
            if counts and max(counts) >= done and not killed.is_set():
                os.kill(proc.pid, signal.SIGKILL)
                killed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    finally:
        reader.join(timeout=5)
    return killed.is_set()


def test_sigkill_during_convert_then_rerun_finishes_only_the_rest(tmp_path: Path, prefect_server: str):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N_IMAGES):  # CMYK JPEGs: convert writes an RGB PNG for each (real per-image work)
        im = gradient(640, 480, seed=i)
        im.paste((i, 255 - i, 7), (8 * i % 600, 16, 8 * i % 600 + 32, 48))  # every file distinct
        im.convert("CMYK").save(images / f"img{i:03d}.jpg", quality=90)
    originals = {p.name: digest_file(p).sha256 for p in images.iterdir()}
    recipe = write_recipe(tmp_path).read_text().replace("workers = 2", "workers = 1")
    (tmp_path / "recipe.toml").write_text(recipe + "\n[convert]\npng_compress_level = 9\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bakery.cli", "run", str(tmp_path / "recipe.toml")]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _kill_when(proc, done=72), "the run finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL

    with Catalog.open(tmp_path / "work") as cat:
        saved = cat.rows("SELECT count(*) AS n FROM derivations WHERE stage = 'convert'")[0]["n"]
    # Rows are flushed every 64 images or 10 s, so at least 72 - 64 finished images were recorded.
    assert 8 <= saved < N_IMAGES

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        run_id = cat.last_run()["run_id"]
        st = {s["stage"]: s for s in cat.stage_table(run_id)}
        total = cat.rows("SELECT count(*) AS n FROM derivations WHERE stage = 'convert'")[0]["n"]
    assert st["ingest"]["n_processed"] == 0  # every original was stored before the kill
    assert st["convert"]["n_processed"] == N_IMAGES - saved  # only the unfinished ones
    assert total == N_IMAGES and st["convert"]["n_out"] == N_IMAGES
    assert {p.name: digest_file(p).sha256 for p in images.iterdir()} == originals  # originals untouched
