"""Progress for long stages: a terminal bar and a Prefect progress artifact."""

from __future__ import annotations

import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from tqdm import tqdm

UPDATE_EVERY_S = 1.0  # the dashboard needs no more; each update is an API call


class StageProgress:
    def __init__(self, stage: str, total: int):
        self.stage, self.total, self.done = stage, total, 0
        self._bar = tqdm(total=total, desc=stage, unit="img", file=sys.stderr, leave=False, disable=total == 0)
        self._artifact = None
        self._last = 0.0
        if total and _in_prefect_run():
            self._artifact = create_progress_artifact(
                progress=0.0, key=f"{_key(stage)}-progress", description=f"{stage}: 0/{total} images"
            )

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        now = time.monotonic()
        if self._artifact and (now - self._last >= UPDATE_EVERY_S or self.done >= self.total):
            self._last = now
            update_progress_artifact(
                self._artifact,
                progress=100.0 * self.done / self.total,
                description=f"{self.stage}: {self.done}/{self.total} images",
            )

    def close(self) -> None:
        self._bar.close()
        if self._artifact and self._last and self.done < self.total:
            update_progress_artifact(self._artifact, progress=100.0 * self.done / self.total)

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_prefect_run() -> bool:
    try:
        get_run_context()
    except RuntimeError:
        return False
    return True


def _key(stage: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in stage.lower())
