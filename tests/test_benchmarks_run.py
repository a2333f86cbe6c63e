"""Every benchmark script still runs, at a tiny size, and cleans up after itself.

Their figures are not checked here (speed targets are the scripts' own business, on a quiet machine): this
catches a script broken by a rename (benchmarks/captions.py imported a function that no longer existed) and
temp folders left behind. benchmarks/bake.py has its own test (test_bench_bake.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "captions": (["--n", "50", "--tagger-n", "2"], "catalog n=50"),
    "crops": (["--n", "8", "--size", "64"], "crops stage / decode-only"),
    "prepare": (["--n", "12", "--search-n", "100"], "re-run all cached: True"),
    "scrape": (["--posts", "10", "--kb", "2"], "PASS  re-run: 0 image requests"),
    "review": (["--n", "12", "--size", "64"], "first dataset page (12 pictures"),
    "ingest": (["--n", "12"], "re-run: every stage cached              true"),
    "masks": (["--n", "1", "--size", "64"], '"peak_rss_mb"'),
    "evaluate": (["--epochs", "1", "--steps", "2", "--size", "64"], "stage_cells"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_cleans_up(name: str, tmp_path: Path) -> None:
    args, expected = CASES[name]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert expected in out, out[-3000:]
    # torch keeps its compile cache in TMPDIR, onnxruntime one small `.ses` file; anything else is the script's
    assert [p.name for p in tmp.iterdir() if not (p.name.startswith("torchinductor_") or p.name == ".ses")] == []
