"""benchmarks/bake.py --compare runs (the CPU check): our trainer on the tiny SD1.5- and SDXL-shaped models and the
tiny Anima, and sd-scripts' train_network.py / anima_train_network.py beside it when BAKERY_SD_SCRIPTS names a
checkout (its requirements installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bake.py"


def _compare(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out.json"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # a checkout may need more
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--compare", "--dir", str(tmp_path / "bench"), "--json",
                           str(out), *args], env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_our_side_trains_both_architectures_and_reports_steps_per_second(tmp_path: Path):
    report = _compare(tmp_path, "--tiny", "--models", "sd15,sdxl", "--steps", "2", "--warmup", "2")
    assert report["settings"]["sd15"]["batch"] == 2 and report["settings"]["sd15"]["dim"] == 32
    runs = {r["model"]: r for r in report["runs"]}
    assert set(runs) == {"sd15", "sdxl"}
    for run in runs.values():
        ours = run["ours"]
        assert "error" not in ours, ours
        # Every optimizer step is stamped: 2 warm-up + 2 measured + 1, rounded up to whole epochs of 4 steps.
        assert ours["steps"] == 8 and ours["steps_measured"] == 5 and ours["steps_per_s"] > 0
        assert ours["peak_rss_mb"] > 0 and "sd_scripts" not in run  # no checkout given


def test_the_anima_case_runs_our_side_and_skips_sd_scripts_without_a_checkout(tmp_path: Path):
    """Tiny Anima (bases/anima/tiny.py's files), 64 px, batch 2: our bake's steps timed; no checkout, no sd-scripts."""
    report = _compare(tmp_path, "--tiny", "--models", "anima", "--steps", "2", "--warmup", "2")
    (run,) = report["runs"]
    assert report["settings"]["anima"]["batch"] == 2 and "error" not in run["ours"], run["ours"]
    assert run["ours"]["steps"] == 8 and run["ours"]["steps_per_s"] > 0 and "sd_scripts" not in run


@pytest.mark.skipif(not os.environ.get("BAKERY_SD_SCRIPTS"), reason="set BAKERY_SD_SCRIPTS to an sd-scripts checkout")
def test_sd_scripts_anima_trains_the_tiny_files_from_our_export(tmp_path: Path):
    """anima_train_network.py reads the same tiny files (its fixed sizes shrunk) with export-kohya's config."""
    report = _compare(tmp_path, "--tiny", "--models", "anima", "--steps", "1", "--warmup", "1", "--sd-scripts",
                      os.environ["BAKERY_SD_SCRIPTS"])
    (run,) = report["runs"]
    assert "error" not in run["sd_scripts"], run["sd_scripts"]
    assert run["sd_scripts"]["steps"] == 3 and run["speed_ratio"] > 0


def test_a_bad_variant_is_refused_by_name(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--compare", "--variants", "base,turbo"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 2 and "unknown model or variant: turbo" in proc.stderr


@pytest.mark.skipif(not os.environ.get("BAKERY_SD_SCRIPTS"), reason="set BAKERY_SD_SCRIPTS to an sd-scripts checkout")
def test_sd_scripts_side_runs_at_the_same_settings(tmp_path: Path):
    report = _compare(tmp_path, "--models", "sd15", "--steps", "1", "--warmup", "1", "--sd-scripts",
                      os.environ["BAKERY_SD_SCRIPTS"])
    (run,) = report["runs"]
    assert "error" not in run["sd_scripts"], run["sd_scripts"]
    assert run["sd_scripts"]["steps_per_s"] > 0 and run["speed_ratio"] > 0
