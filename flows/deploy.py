"""Deployments of the bake flow: on demand, on a schedule, and on an event.

`bakery serve RECIPE` serves these from one long-running process (no work pool
needed); `deployments/prefect.yaml` declares the same for `prefect deploy` with
work pools and workers. Caching makes the schedule cheap: a nightly re-run
re-scrapes the recipe's sources, and every later stage stays `Cached` unless
new images arrived.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect.events import DeploymentEventTrigger

from flows.bake import bake_lora

# Emitted by `bakery watch` when a recipe's source folders gain or change images.
IMAGES_ADDED_EVENT = "bakery.images.added"
NIGHTLY_CRON = "0 3 * * *"


def recipe_resource_id(recipe_path: str | Path) -> str:
    """The event resource a recipe is known by (stable per absolute path)."""
    path = str(Path(recipe_path).resolve())
    return f"bakery.recipe.{hashlib.sha256(path.encode()).hexdigest()[:16]}"


def deployment_name(recipe_path: str | Path) -> str:
    return Path(recipe_path).resolve().parent.name or "recipe"


def recipe_deployments(recipe_path: str | Path, cron: str | None = NIGHTLY_CRON, on_new_images: bool = True):
    """The deployments `bakery serve` runs for one recipe.

    - `<name>`: on demand (parameters: recipe_path, from_stage, only_stage), nightly
      on `cron`, and whenever `bakery watch` reports new images for this recipe.
    """
    recipe_path = str(Path(recipe_path).resolve())
    triggers = []
    if on_new_images:
        triggers.append(
            DeploymentEventTrigger(
                name=f"new images for {deployment_name(recipe_path)}",
                expect={IMAGES_ADDED_EVENT},
                match={"prefect.resource.id": recipe_resource_id(recipe_path)},
                parameters={"recipe_path": recipe_path},
            )
        )
    return [
        bake_lora.to_deployment(
            name=deployment_name(recipe_path),
            parameters={"recipe_path": recipe_path},
            cron=cron,
            triggers=triggers,
            tags=["bakery"],
            description=f"Bake {recipe_path}: cached stages skip, new images flow through.",
        )
    ]
