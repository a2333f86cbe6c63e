"""The catalog's sweep table: what became of each variant of a sweep (flows/bake.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from storage.catalog.core import CatalogCore

# (version, statements), numbered over every phase (storage/catalog/__init__.py joins the lists).
# Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        19,
        """
        -- What became of each variant of a sweep (flows/bake.py sweep): one row per variant and sweep run.
        CREATE TABLE sweep_variants (
            run_id VARCHAR NOT NULL,       -- the sweep's run
            variant VARCHAR NOT NULL,
            overrides VARCHAR NOT NULL,    -- JSON: the [train] keys it changes
            status VARCHAR NOT NULL,       -- completed | failed | lost
            attempts INTEGER NOT NULL,     -- flow runs it took (a lost worker's variant is run again)
            history VARCHAR NOT NULL,      -- JSON list: one line per attempt
            variant_run_id VARCHAR,        -- the run that baked it (its stages in stage_runs)
            bake_key VARCHAR,
            eval_key VARCHAR,
            report_path VARCHAR,
            message VARCHAR,
            PRIMARY KEY (run_id, variant)
        );
        """,
    ),
]


class SweepTables(CatalogCore):
    """One row per variant and sweep run."""

    def add_sweep_variants(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        """What became of each variant of the sweep run `run_id` (history: a list of lines)."""
        return self._insert("sweep_variants", [{**r, "run_id": run_id, "overrides": json.dumps(r["overrides"], sort_keys=True),
                                                "history": json.dumps(r["history"])} for r in rows], verb="INSERT OR REPLACE")

    def sweep_variants(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.rows("SELECT * EXCLUDE (run_id) FROM sweep_variants WHERE run_id = ? ORDER BY variant", [run_id])
        for r in rows:
            r["overrides"], r["history"] = json.loads(r["overrides"]), json.loads(r["history"])
        return rows
