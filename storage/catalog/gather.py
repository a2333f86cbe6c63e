"""The catalog's gather tables: the images, their sources and the booru posts and tag counts the scrape took."""

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
        CREATE TABLE images (
            hash VARCHAR PRIMARY KEY,      -- sha256 of the file bytes (store address)
            md5 VARCHAR NOT NULL,          -- booru parity
            width INTEGER, height INTEGER,
            mode VARCHAR, format VARCHAR,
            bytes BIGINT, frames INTEGER,
            pixel_hash VARCHAR,            -- sha256 of decoded pixels (exact dedupe)
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE sources (
            image_hash VARCHAR NOT NULL,
            location VARCHAR NOT NULL,     -- file path or URL
            kind VARCHAR NOT NULL,         -- folder | danbooru | gelbooru ...
            name VARCHAR NOT NULL,         -- source-relative name, without extension
            source_kind VARCHAR,           -- the guide's quality ranking
            site VARCHAR, post_id VARCHAR,
            sidecar VARCHAR,               -- raw text of a caption file found beside it
            extra JSON,
            fetched_at TIMESTAMPTZ NOT NULL,
            run_id VARCHAR,
            PRIMARY KEY (image_hash, location)
        );
        """,
    ),
    (
        2,
        """
        -- scrape: one row per booru post taken into the store (the stage's provenance)
        CREATE TABLE booru_posts (
            site VARCHAR NOT NULL,         -- the site's host[:port], e.g. danbooru.donmai.us
            post_id VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,         -- danbooru | gelbooru
            image_hash VARCHAR NOT NULL,   -- sha256 of the stored original
            md5 VARCHAR NOT NULL,
            post_url VARCHAR NOT NULL,
            file_url VARCHAR NOT NULL,
            file_ext VARCHAR,
            score INTEGER,
            rating VARCHAR,                -- g | s | q | e
            width INTEGER, height INTEGER,
            source VARCHAR,                -- the post's own source link (pixiv ...)
            fetched_at TIMESTAMPTZ NOT NULL,
            run_id VARCHAR,
            PRIMARY KEY (site, post_id)
        );
        -- post counts (and categories) of booru tags, fetched once per tag: rare tags (< 500 posts)
        CREATE TABLE booru_tags (
            site VARCHAR NOT NULL,
            tag VARCHAR NOT NULL,
            category VARCHAR NOT NULL,     -- general | character | copyright | artist | meta
            post_count INTEGER,            -- NULL: the site does not know the tag
            fetched_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (site, tag)
        );
        """,
    ),
]


class GatherTables(CatalogCore):
    """Images, their sources (folders, sidecars) and the scrape's booru posts and tags."""

    # -- images ------------------------------------------------------------------
    def add_images(self, rows: Iterable[dict[str, Any]]) -> int:
        return self._insert("images", ({"created_at": now(), **r} for r in rows))

    def set_pixel_hashes(self, pairs: Iterable[tuple[str, str]]) -> None:
        pairs = list(pairs)
        if pairs:
            self.con.execute(
                """UPDATE images SET pixel_hash = v.ph FROM (SELECT unnest(?) AS h, unnest(?) AS ph) AS v
                   WHERE images.hash = v.h AND images.pixel_hash IS DISTINCT FROM v.ph""",
                [[h for h, _ in pairs], [ph for _, ph in pairs]],
            )

    def image_rows(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not hashes:
            return {}
        rows = self.rows("SELECT * FROM images WHERE hash IN (SELECT unnest(?))", [list(hashes)])
        return {r["hash"]: r for r in rows}

    def pixel_hashes(self, hashes: Sequence[str]) -> dict[str, str | None]:
        rows = self.con.execute(
            "SELECT hash, pixel_hash FROM images WHERE hash IN (SELECT unnest(?))", [list(hashes)]
        ).fetchall()
        return dict(rows)

    def resolve_hash(self, ref: str) -> str:
        """A full image hash from a full hash, a unique prefix (>= 6 chars) or an md5."""
        ref = ref.strip().lower()
        if len(ref) < 6:
            raise LookupError(f"image reference '{ref}' is too short: give at least 6 hex digits")
        rows = self.con.execute(
            "SELECT hash FROM images WHERE hash LIKE ? OR md5 = ? ORDER BY hash", [ref + "%", ref]
        ).fetchall()
        if not rows:
            raise LookupError(f"no image in the catalog matches '{ref}'")
        if len(rows) > 1:
            raise LookupError(f"'{ref}' matches {len(rows)} images: give more digits")
        return rows[0][0]

    # -- sources -----------------------------------------------------------------
    def add_sources(self, rows: Iterable[dict[str, Any]], run_id: str | None) -> int:
        # Replace: a sidecar edited beside an unchanged image must reach the captions.
        return self._insert("sources", ({"fetched_at": now(), "run_id": run_id, **r} for r in rows), verb="INSERT OR REPLACE")

    def known_sources(self, locations: Sequence[str]) -> dict[tuple[str, str], str]:
        """(location, image_hash) pairs already ingested, mapped to the source name."""
        if not locations:
            return {}
        found = self.con.execute(
            "SELECT location, image_hash, name FROM sources WHERE location IN (SELECT unnest(?))", [list(locations)]
        ).fetchall()
        return {(loc, h): name for loc, h, name in found}

    def sidecars_for(self, hashes: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for h, text in self.con.execute(
            """SELECT image_hash, sidecar FROM sources WHERE image_hash IN (SELECT unnest(?))
               AND sidecar IS NOT NULL ORDER BY image_hash, location""", [list(hashes)]
        ).fetchall():
            found.setdefault(h, []).append(text)
        return found

    # -- scrape: booru posts and tag counts --------------------------------------
    def _delete_keys(self, table: str, key: str, site_keys: Iterable[tuple[str, str]]) -> None:
        by_site: dict[str, list[str]] = {}
        for site, value in site_keys:
            by_site.setdefault(site, []).append(value)
        for site, values in by_site.items():
            self.con.execute(f"DELETE FROM {table} WHERE site = ? AND {key} IN (SELECT unnest(?))", [site, values])

    def add_booru_posts(self, rows: Iterable[dict[str, Any]], run_id: str | None) -> int:
        """One row per post taken; a post taken again (its file was lost) replaces its row."""
        rows = list(rows)
        self._delete_keys("booru_posts", "post_id", ((r["site"], r["post_id"]) for r in rows))
        return self._insert("booru_posts", ({"fetched_at": now(), "run_id": run_id, **r} for r in rows))

    def booru_posts(self, site: str, post_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Posts of a site already taken, by post id."""
        if not post_ids:
            return {}
        rows = self.rows(
            "SELECT * FROM booru_posts WHERE site = ? AND post_id IN (SELECT unnest(?))", [site, list(post_ids)]
        )
        return {r["post_id"]: r for r in rows}

    def add_booru_tags(self, rows: Iterable[dict[str, Any]]) -> int:
        """Post counts of tags (site, tag, category, post_count); newer rows replace older ones."""
        rows = list(rows)
        self._delete_keys("booru_tags", "tag", ((r["site"], r["tag"]) for r in rows))
        return self._insert("booru_tags", ({"fetched_at": now(), **r} for r in rows))

    def booru_tag_counts(self, site: str, tags: Sequence[str] | None = None) -> dict[str, tuple[str, int | None]]:
        """tag -> (category, post count) known for a site (all of them when `tags` is None)."""
        if tags is None:
            found = self.con.execute("SELECT tag, category, post_count FROM booru_tags WHERE site = ?", [site])
        else:
            found = self.con.execute(
                "SELECT tag, category, post_count FROM booru_tags WHERE site = ? AND tag IN (SELECT unnest(?))",
                [site, list(tags)],
            )
        return {t: (c, n) for t, c, n in found.fetchall()}
