"""Shared fixtures: a private Prefect home, one Prefect server per session, image makers."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports prefect: a private home, no analytics (they try DNS).
_HOME = Path(tempfile.mkdtemp(prefix="bakery-test-prefect-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)  # sessions without the server fixture leaked it
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

from tests.images import write_sample_folder  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session (each start costs seconds)."""
    from flows.runtime import prefect_api

    with prefect_api(_HOME / "logs") as url:
        yield url
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """A folder with a recipe pointing at images/ (empty) and workdir work/."""
    (tmp_path / "images").mkdir()
    write_recipe(tmp_path)
    return tmp_path


# The suite's pictures are thumbnails (tens of pixels) trained at 512 px: far past upscale.max_factor. Recipes
# keep them unless a test asks for the default (thumbnails=False) or sets max_factor itself.
KEEP_THUMBNAILS = "max_factor = 64.0\n"


def write_recipe(folder: Path, extra: str = "", thumbnails: bool = True) -> Path:
    path = folder / "recipe.toml"
    if thumbnails and "max_factor" not in extra:
        head = "[upscale]\n"
        extra = extra.replace(head, head + KEEP_THUMBNAILS, 1) if head in extra else extra + "\n" + head + KEEP_THUMBNAILS
    path.write_text(
        '[project]\nname = "t"\nworkdir = "work"\n\n[[sources]]\nkind = "folder"\npath = "images"\n\n'
        "[runtime]\nworkers = 2\n" + extra,
        encoding="utf-8",
    )
    return path


@pytest.fixture
def sample_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_sample_folder(folder)
    return folder
