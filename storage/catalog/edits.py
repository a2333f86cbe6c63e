"""The catalog's edits table: the review studio's overrides (bakery/edits.py), listed and undoable."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from storage.catalog.core import CatalogCore, jsonable, now

# (version, statements), numbered over every phase (storage/catalog/__init__.py joins the lists).
# Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        15,
        """
        -- The review studio's edits (bakery/edits.py): overrides the next run applies, listed and undoable.
        CREATE TABLE edits (
            id INTEGER PRIMARY KEY,        -- "edit #N" in skips, provenance and the CLI
            kind VARCHAR NOT NULL,         -- exclude | include | add_tags | remove_tags | replace_tag | move | keep_duplicate | crop
            target VARCHAR NOT NULL,       -- a picture name (or its kohya file name, or hash); a folder for replace_tag
            payload JSON NOT NULL,         -- per kind: tags, old/new, folder, keep box
            reason VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            undone_at TIMESTAMPTZ          -- NULL: active
        );
        """,
    ),
]


class EditTables(CatalogCore):
    """The edits the next run applies: add, list, undo."""

    def add_edit(self, kind: str, target: str, payload: dict[str, Any], reason: str,
                 created_at: datetime | None = None, undone_at: datetime | None = None) -> int:
        """A new edit; returns its id (one more than the highest so far)."""
        edit_id = self.con.execute("SELECT coalesce(max(id), 0) + 1 FROM edits").fetchone()[0]
        self.con.execute("INSERT INTO edits VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [edit_id, kind, target, jsonable(payload), reason, created_at or now(), undone_at])
        return edit_id

    def edits(self, include_undone: bool = False) -> list[dict[str, Any]]:
        where = "" if include_undone else "WHERE undone_at IS NULL"
        rows = self.rows(f"SELECT * FROM edits {where} ORDER BY id")
        return [{**r, "payload": json.loads(r["payload"])} for r in rows]

    def undo_edit(self, edit_id: int, when: datetime | None = None) -> bool:
        """Mark an active edit undone; False when there is no such active edit."""
        found = self.con.execute("SELECT count(*) FROM edits WHERE id = ? AND undone_at IS NULL", [edit_id]).fetchone()[0]
        if found:
            self.con.execute("UPDATE edits SET undone_at = ? WHERE id = ?", [when or now(), edit_id])
        return bool(found)
