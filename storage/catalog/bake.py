"""The catalog's bake tables: the loss of every step, the validation pictures and the validation loss per epoch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.catalog.core import CatalogCore, now

# (version, statements), numbered over every phase (storage/catalog/__init__.py joins the lists).
# Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        5,
        """
        CREATE TABLE bake_log (
            bake_key VARCHAR NOT NULL,     -- one bake (inputs + parameters + code)
            step INTEGER NOT NULL,         -- optimizer step, 1-based
            epoch INTEGER NOT NULL,        -- 1-based epoch the step belongs to
            loss DOUBLE NOT NULL,
            lr DOUBLE,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (bake_key, step)
        );
        """,
    ),
    (
        13,
        """
        CREATE TABLE validation_pictures (  -- the validation loss's pictures of a run's training set
            run_id VARCHAR NOT NULL,
            folder VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            image_hash VARCHAR NOT NULL,
            caption VARCHAR NOT NULL,
            held_out BOOLEAN NOT NULL,     -- true: never trained on; false: training pictures, not held out
            PRIMARY KEY (run_id, folder, name)
        );
        CREATE TABLE validation_loss (     -- deterministic denoising loss after each epoch (fixed noise, timesteps)
            bake_key VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            loss DOUBLE NOT NULL,
            held_out BOOLEAN NOT NULL,
            n_pictures INTEGER NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (bake_key, epoch)
        );
        """,
    ),
]


class BakeTables(CatalogCore):
    """Training loss per step, validation pictures (chosen by prune) and validation loss per epoch."""

    # -- loss --------------------------------------------------------------------
    def add_bake_log(self, rows: Iterable[dict[str, Any]]) -> int:
        """Loss per step; re-logging a step (a resumed bake) replaces it."""
        stamped = [{**row, "created_at": row.get("created_at") or now()} for row in rows]
        return self._insert("bake_log", stamped, verb="INSERT OR REPLACE")

    def bake_log(self, bake_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT step, epoch, loss, lr FROM bake_log WHERE bake_key = ? ORDER BY step", [bake_key])

    # -- validation loss ---------------------------------------------------------
    def add_validation_pictures(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM validation_pictures WHERE run_id = ?", [run_id])
        return self._insert("validation_pictures", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def validation_pictures(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM validation_pictures WHERE run_id = ? ORDER BY folder, name", [run_id])

    def add_validation_loss(self, rows: Iterable[dict[str, Any]]) -> int:
        """Validation loss per epoch (bake_key, epoch, loss, held_out, n_pictures); a resumed bake's rows replace."""
        stamped = [{**row, "created_at": row.get("created_at") or now()} for row in rows]
        return self._insert("validation_loss", stamped, verb="INSERT OR REPLACE")

    def validation_loss(self, bake_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT epoch, loss, held_out, n_pictures FROM validation_loss WHERE bake_key = ? "
                         "ORDER BY epoch", [bake_key])
