"""Stage cache keys: content of the inputs + the stage's parameters + its code.

Prefect's DEFAULT policy includes the run id (it never hits across runs) and
hashes a Path argument by its string, not its contents. So every stage task
takes its inputs as content hashes (a manifest, or a scan listing with sha256s)
and its parameters as canonical JSON, and the key is computed from those
alone: run ids, progress settings and worker counts never enter it.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

from bakery.manifest import digest

# Task parameters that are part of a stage's identity. Anything else (run id,
# worker count) may change without invalidating the cache.
KEY_PARAMETERS = ("inputs", "params_json", "workdir")


def code_version(*modules: ModuleType) -> str:
    """sha256 of the source of the modules that implement a stage."""
    h = hashlib.sha256()
    for module in modules:
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:16]


def stage_cache_key_fn(stage: str, version: str) -> Callable[[Any, dict[str, Any]], str]:
    def key(_context: Any, parameters: dict[str, Any]) -> str:
        missing = [p for p in KEY_PARAMETERS if p not in parameters]
        if missing:  # a wiring bug: fail loudly rather than run uncached
            raise KeyError(f"stage {stage} task lacks cache-key parameters {missing}")
        identity = {"stage": stage, "code": version, **{p: parameters[p] for p in KEY_PARAMETERS}}
        return f"{stage}-{digest(identity)}"

    return key
