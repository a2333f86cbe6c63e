"""The review studio's test bench: a small demo work dir run through prune, and the app served on a free port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from bakery.demo import DEMO_RECIPE, build_demo_models, generate

# The demo recipe without a base model: the run stops after prune (no bake), and runs in seconds.
RECIPE = DEMO_RECIPE.replace('base_model = "tiny"\n', "") + "\n[runtime]\nworkers = 2\n"


def demo_work(dest: Path, per_outfit: int = 5) -> Path:
    """The demo's pictures (`per_outfit` per outfit, the extras' duplicates and broken files) and its recipe."""
    generate(dest, count_per_outfit=per_outfit)
    build_demo_models(dest / "models")
    recipe = dest / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    return recipe


def run_recipe(recipe: Path) -> str:
    from flows.bake import bake_lora

    return bake_lora(str(recipe))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """An ASGI app served by uvicorn in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Served":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review studio did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
