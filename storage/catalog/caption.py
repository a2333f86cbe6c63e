"""The catalog's caption tables: tags, post counts per tag (booru, tagger), tag statistics, the training set (train
captions) and the prune stage's caption decisions (screening, special tags)."""

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
    (
        20,
        """
        CREATE TABLE caption_decisions (   -- the prune stage's screening by tags (rules.md §3), special tags (§10)
            run_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,         -- the picture
            image_hash VARCHAR NOT NULL,
            rule VARCHAR NOT NULL,         -- screen:<kind> | special:<rule>
            action VARCHAR NOT NULL,       -- skip | flag | keep (a keep edit overrode a skip) | add (tags changed)
            tags VARCHAR[] NOT NULL,       -- the tags that decided it, or those added (-tag: taken out)
            reason VARCHAR NOT NULL
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
        # counts given by hand (tag_counts) and those the scrape stage fetched (booru_tags): the largest wins; a
        # tagger's counts (site 'tagger:...') only where neither knows the tag
        return dict(self.con.execute(
            """SELECT tag, coalesce(max(n) FILTER (WHERE NOT tagger), max(n)) FROM (
                   SELECT tag, posts AS n, coalesce(site, '') LIKE 'tagger:%' AS tagger FROM tag_counts UNION ALL
                   SELECT tag, post_count AS n, false FROM booru_tags WHERE post_count IS NOT NULL)
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

    def add_caption_decisions(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM caption_decisions WHERE run_id = ?", [run_id])
        return self._insert("caption_decisions", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def caption_decisions(self, run_id: str | None = None, hashes: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """A run's screening and special-tag decisions (None: the latest run that made any), or those of `hashes`.
        A catalog opened read-only before its migration to the table has none."""
        if not self.con.execute("SELECT count(*) FROM information_schema.tables "
                                "WHERE table_name = 'caption_decisions'").fetchone()[0]:
            return []
        if run_id is None:
            latest = self.con.execute("""SELECT d.run_id FROM caption_decisions d JOIN runs USING (run_id)
                                         ORDER BY runs.started_at DESC LIMIT 1""").fetchone()
            if latest is None:
                return []
            run_id = latest[0]
        return self.rows(
            """SELECT name, image_hash, rule, action, tags, reason FROM caption_decisions
               WHERE run_id = ? AND (? OR image_hash IN (SELECT unnest(?))) ORDER BY name, rule""",
            [run_id, hashes is None, list(hashes or [])])

    def add_tagger_counts(self, site: str, counts: dict[str, int]) -> None:
        """A tagger's post counts per tag (WD14 selected_tags.csv `count`): the rare-tag check's fallback where no
        booru count is known; a count given by hand or by a booru is never replaced."""
        self.con.execute(
            """INSERT OR REPLACE INTO tag_counts
               SELECT t, n, ?, now() FROM (SELECT unnest(?) AS t, unnest(?) AS n)
               WHERE t NOT IN (SELECT tag FROM tag_counts WHERE NOT coalesce(site, '') LIKE 'tagger:%')""",
            [site, list(counts), list(counts.values())])

    def runs_with(self, table: str) -> list[str]:
        """Run ids that wrote rows to `table` (tag_stats, train_captions), newest first."""
        if table not in ("tag_stats", "train_captions"):
            raise ValueError(table)
        return [r for (r,) in self.con.execute(
            f"""SELECT t.run_id FROM (SELECT DISTINCT run_id FROM {table}) t JOIN runs USING (run_id)
                ORDER BY runs.started_at DESC"""
        ).fetchall()]
