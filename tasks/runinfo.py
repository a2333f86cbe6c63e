"""What every stage of one run needs to know besides its own inputs: the run, its work dir, its workers.

Below tasks/stage.py and tasks/runlog.py, which both name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage import STORE_DIR, ContentStore


@dataclass(frozen=True)
class RunInfo:
    """What every stage of one run needs to know besides its own inputs."""

    run_id: str
    workdir: str
    workers: int | None = None

    @property
    def catalog(self) -> Path:
        return Path(self.workdir) / "catalog.duckdb"

    @property
    def store(self) -> ContentStore:
        return ContentStore(Path(self.workdir) / STORE_DIR)
