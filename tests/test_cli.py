"""The `bakery` command: init, run, status, provenance, and a clean run with no server configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bakery.cli import app
from storage import Catalog, digest_file
from tests.conftest import write_recipe
from tests.images import gradient

runner = CliRunner()


def test_init_writes_a_starter_recipe_that_status_understands(tmp_path: Path):
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "proj" / "recipe.toml").is_file() and (tmp_path / "proj" / "images").is_dir()
    again = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert again.exit_code == 1 and "already exists" in again.output
    status = runner.invoke(app, ["status", str(tmp_path / "proj" / "recipe.toml")])
    assert status.exit_code == 1 and "no runs yet" in status.output


def test_bad_recipe_exits_2_naming_the_key(tmp_path: Path):
    recipe = write_recipe(tmp_path, "\n[train]\nnetwork_dim = -4\n")
    (tmp_path / "images").mkdir()
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "train.network_dim: must be > 0, got -4" in result.output


def test_missing_source_folder_and_unknown_stage_exit_2(tmp_path: Path):
    recipe = write_recipe(tmp_path)
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "sources[0].path: folder does not exist" in result.output
    (tmp_path / "images").mkdir()
    result = runner.invoke(app, ["run", str(recipe), "--from", "baek"])
    assert result.exit_code == 2 and "unknown stage 'baek'" in result.output


@pytest.mark.usefixtures("prefect_server")
def test_run_status_and_provenance(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    frames = [gradient(32, 24, seed=k) for k in range(2)]
    frames[0].save(images / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    recipe = write_recipe(tmp_path)
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "ingest" in result.output and "ran" in result.output

    status = runner.invoke(app, ["status", str(recipe)])
    assert status.exit_code == 0 and "convert  ran" in status.output

    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        frame = cat.rows("SELECT output_hash FROM derivations WHERE output_suffix = '0002'")[0]["output_hash"]
    prov = runner.invoke(app, ["provenance", str(recipe), frame[:10]])
    assert prov.exit_code == 0, prov.output
    assert str(images / "anim.gif") in prov.output
    assert digest_file(images / "anim.gif").sha256 in prov.output and "convert" in prov.output

    missing = runner.invoke(app, ["provenance", str(recipe), "abcdef0123"])
    assert missing.exit_code == 1 and "no image in the catalog" in missing.output


def test_cli_run_without_a_server_is_clean(tmp_path: Path):
    """No PREFECT_API_URL: our temporary server starts and stops without tracebacks or ERROR lines."""
    (tmp_path / "images").mkdir()
    for k in range(3):
        gradient(40, 30, seed=k).save(tmp_path / "images" / f"{k}.jpg")
    recipe = write_recipe(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    cmd = [sys.executable, "-c", "from bakery.cli import main; main()", "run", str(recipe)]
    for _ in range(2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "Traceback" not in out and "ERROR" not in out and "Error flushing" not in out
    assert "cached" in proc.stdout


@pytest.mark.usefixtures("prefect_server")
def test_a_run_parses_its_recipe_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`bakery run` reads and validates the recipe once, whether the run goes through Prefect or is replayed from
    the cache: the flow and its gather subflow take the Recipe the command parsed (flows/recipes.py). The real
    parse runs; the test only counts it."""
    from bakery.recipe import Recipe

    (tmp_path / "images").mkdir()
    for k in range(2):
        gradient(40, 30, seed=k).save(tmp_path / "images" / f"{k}.png")
    recipe = write_recipe(tmp_path)
    parses: list[dict] = []
    validate = Recipe.model_validate

    def counted(data, *args, **kwargs):
        parses.append(data)
        return validate(data, *args, **kwargs)

    monkeypatch.setattr(Recipe, "model_validate", counted)
    first = runner.invoke(app, ["run", str(recipe)])
    assert first.exit_code == 0, first.output
    assert "ingest" in first.output and len(parses) == 1

    monkeypatch.setattr("flows.runtime.configured_api", lambda: None)  # as with no server: the cached run is replayed
    again = runner.invoke(app, ["run", str(recipe)])
    assert again.exit_code == 0, again.output
    assert "every stage cached" in again.output and len(parses) == 2
