"""The catalog's caption tables: tags, booru post counts per tag, tag statistics and the training set (train captions)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from storage.catalog.core import CatalogCore, now

# (version, statements), numbered over every phase (storage/catalog/__init__.py joins the lists).
# Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE tags (
            image_hash VARCHAR NOT NULL,
            tag VARCHAR NOT NULL,
            category VARCHAR NOT NULL,     -- general | character | copyright | artist | meta | rating
            origin VARCHAR NOT NULL,       -- booru | tagger | user
            confidence DOUBLE,
            PRIMARY KEY (image_hash, tag, origin)
        );
        CREATE TABLE tag_stats (
            run_id VARCHAR NOT NULL,
            concept VARCHAR NOT NULL,      -- concept or group name
            phase VARCHAR NOT NULL,        -- before_prune | after_prune
            tag VARCHAR NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (run_id, concept, phase, tag)
        );
        """,
    ),
    (
        4,
        """
        CREATE TABLE train_captions (      -- the training set a run's prune stage produced
            run_id VARCHAR NOT NULL,
            folder VARCHAR NOT NULL,       -- concept group, kohya folder without repeats
            name VARCHAR NOT NULL,
            image_hash VARCHAR NOT NULL,
            caption VARCHAR NOT NULL,      -- trigger first
            repeats INTEGER NOT NULL,
            mask_hash VARCHAR,
            is_reg BOOLEAN NOT NULL,
            PRIMARY KEY (run_id, folder, name, is_reg)
        );
        CREATE TABLE tag_counts (          -- booru post counts per tag (rare-tag check, rules.md §9)
            tag VARCHAR PRIMARY KEY,
            posts INTEGER NOT NULL,
            site VARCHAR,
            fetched_at TIMESTAMPTZ
        );
        """,
    ),
]


class CaptionTables(CatalogCore):
    """Tags (booru, tagger, user), tag counts, the prune stage's statistics and training set."""

    # -- tags --------------------------------------------------------------------
    def add_tags(self, rows: Iterable[dict[str, Any]]) -> int:
        """Tags of images (image_hash, tag, category, origin[, confidence]); a known triple is kept."""
        return self._insert("tags", rows)

    def replace_tags(self, origin: str, image_hashes: Sequence[str], rows: Iterable[dict[str, Any]]) -> int:
        """Set the tags of one origin for these images (rows: image_hash, tag, category[, confidence])."""
        if image_hashes:
            self.con.execute(
                "DELETE FROM tags WHERE origin = ? AND image_hash IN (SELECT unnest(?))", [origin, list(image_hashes)]
            )
        return self._insert("tags", ({**r, "origin": origin} for r in rows))

    def tags_for(self, hashes: Sequence[str]) -> list[dict[str, Any]]:
        return self.rows(
            """SELECT image_hash, tag, category, origin, confidence FROM tags
               WHERE image_hash IN (SELECT unnest(?)) ORDER BY image_hash, origin, confidence DESC NULLS LAST, tag""",
            [list(hashes)],
        )

    def add_tag_counts(self, rows: Iterable[dict[str, Any]]) -> int:
        """Booru post counts per tag ({tag, posts, site}); the newest count wins."""
        return self._insert("tag_counts", ({"fetched_at": now(), **r} for r in rows), verb="INSERT OR REPLACE")

    def tag_post_counts(self, tags: Sequence[str] | None) -> dict[str, int]:
        """Post counts of `tags` (None: of every tag known)."""
        if tags is not None and not tags:
            return {}
        # counts given by hand (tag_counts) and those the scrape stage fetched (booru_tags): the largest wins
        return dict(self.con.execute(
            """SELECT tag, max(n) FROM (
                   SELECT tag, posts AS n FROM tag_counts UNION ALL
                   SELECT tag, post_count AS n FROM booru_tags WHERE post_count IS NOT NULL)
               WHERE ? OR tag IN (SELECT unnest(?)) GROUP BY tag""", [tags is None, list(tags or [])]).fetchall())

    # -- prune: tag statistics and the training set ------------------------------
    def add_tag_stats(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM tag_stats WHERE run_id = ?", [run_id])
        return self._insert("tag_stats", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def tag_stats(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT concept, phase, tag, count FROM tag_stats WHERE run_id = ? ORDER BY concept, phase, count DESC, tag", [run_id])

    def add_train_captions(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM train_captions WHERE run_id = ?", [run_id])
        return self._insert("train_captions", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def train_captions(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM train_captions WHERE run_id = ? ORDER BY is_reg, folder, name", [run_id])

    def runs_with(self, table: str) -> list[str]:
        """Run ids that wrote rows to `table` (tag_stats, train_captions), newest first."""
        if table not in ("tag_stats", "train_captions"):
            raise ValueError(table)
        return [r for (r,) in self.con.execute(
            f"""SELECT t.run_id FROM (SELECT DISTINCT run_id FROM {table}) t JOIN runs USING (run_id)
                ORDER BY runs.started_at DESC"""
        ).fetchall()]
