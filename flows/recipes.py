"""The recipe of the run under way: parsed once per run, handed to every flow of it that names the recipe's path.

A flow's parameters go to the Prefect API and a deployment starts a run from them, so the bake flow takes the
recipe's path (`bake_lora(recipe_path: str, ...)`), as does its gather subflow. Parsing that path in each of
them would read and validate the file three or four times in one `bakery run` (the CLI, the replay of a cached
run, the flow, gather), and a recipe edited in between would give one run two recipes. Instead, whoever parsed
it hands it on for the length of a block (`recipe_given`), and each flow asks `run_recipe(path)`: the recipe
handed in for that path, else (a deployment's run, a test calling the flow) the file parsed there, which the
bake flow then hands on to its own subflows.

A context variable, not a cache keyed by the file's mtime: it lives exactly as long as the run, so no later run
can see a stale recipe, and nothing is kept once the block ends. Read through these functions only: a flow's
function is pickled by value with the globals it names (prefect_dask), and a ContextVar cannot be pickled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from bakery.recipe import Recipe, load_recipe

_GIVEN: ContextVar[tuple[Path, Recipe] | None] = ContextVar("bakery_given_recipe", default=None)


@contextmanager
def recipe_given(recipe_path: str | Path, recipe: Recipe) -> Iterator[Recipe]:
    """Within the block, `run_recipe(recipe_path)` is `recipe` (the file's recipe, parsed by the caller)."""
    token = _GIVEN.set((Path(recipe_path).resolve(), recipe))
    try:
        yield recipe
    finally:
        _GIVEN.reset(token)


def run_recipe(recipe_path: str | Path) -> Recipe:
    """The recipe at `recipe_path` for the run under way: the one handed in for that file, else parsed now."""
    given = _GIVEN.get()
    if given is not None and given[0] == Path(recipe_path).resolve():
        return given[1]
    return load_recipe(recipe_path)
