"""The review studio's edits at the start of a run: import the recipe's edits file, read the active edits.

The flow hands each stage the edits that concern it (bakery/craft/edits.py STAGE_OF) as part of
its parameters, so a stage's cache key holds exactly those edits.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bakery.craft.edits import Edit
from bakery.edits import active_edits, edits_file, import_edits


@task(name="edits", cache_policy=NO_CACHE)
def load_edits(recipe_path: str, workdir: str) -> list[Edit]:
    """Import `<recipe stem>.edits.toml` when it exists (adds only what the catalog lacks); the active edits."""
    file = edits_file(Path(recipe_path))
    if file.is_file():
        if added := import_edits(Path(workdir), file):
            get_run_logger().info("edits: %d edit(s) or undo(s) imported from %s", added, file)
    edits = active_edits(Path(workdir))
    if edits:
        get_run_logger().info("edits: %d active (see `bakery edits RECIPE list`)", len(edits))
    return edits
