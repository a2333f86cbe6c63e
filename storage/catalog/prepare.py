"""The catalog's prepare tables: duplicates and perceptual hashes, masks and their QA, detections and framings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from storage.catalog.core import CatalogCore, now

# (version, statements), numbered over every phase (storage/catalog/__init__.py joins the lists).
# Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE duplicates (
            stage VARCHAR NOT NULL,
            image_hash VARCHAR NOT NULL,   -- the dropped image
            kept_hash VARCHAR NOT NULL,
            method VARCHAR NOT NULL,       -- exact | phash | dhash ...
            distance DOUBLE NOT NULL,
            run_id VARCHAR,
            PRIMARY KEY (stage, image_hash)
        );
        """,
    ),
    (
        3,
        """
        CREATE TABLE perceptual_hashes (
            image_hash VARCHAR PRIMARY KEY,
            phash UBIGINT NOT NULL,        -- imagehash pHash, 8x8 bits
            dhash UBIGINT NOT NULL,        -- imagehash dHash, 8x8 bits
            colour VARCHAR NOT NULL,       -- 4x4 box-averaged RGB thumbnail, hex
            created_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    (
        8,
        """
        CREATE TABLE mask_stats (
            mask_hash VARCHAR PRIMARY KEY, -- a greyscale mask in the store (a 'masks' derivation of its image)
            width INTEGER NOT NULL, height INTEGER NOT NULL,
            histogram JSON NOT NULL        -- 256 pixel counts: QA with any thresholds, no re-decode
        );
        CREATE TABLE mask_qa (
            run_id VARCHAR NOT NULL,
            image_hash VARCHAR NOT NULL,
            mask_hash VARCHAR,             -- NULL when no mask could be made
            accepted BOOLEAN NOT NULL,     -- false: the image trains without masked loss
            reason VARCHAR,                -- why it was rejected
            PRIMARY KEY (run_id, image_hash)
        );
        """,
    ),
    (
        9,
        """
        -- bakery/craft/prepare/trim.py edge_spread: trim leaves a picture whose spread is past its fuzz
        -- alone without decoding it. NULL: not known (hashed before this column, or transparent).
        ALTER TABLE perceptual_hashes ADD COLUMN edge_spread DOUBLE;
        """,
    ),
    (
        16,
        """
        -- What the crops stage's detectors found (bakery/craft/prepare/detect.py), per picture content and detector.
        CREATE TABLE detections (
            image_hash VARCHAR NOT NULL,
            detector VARCHAR NOT NULL,     -- role + the model file's sha256 (or 'animeface') + thresholds
            n INTEGER NOT NULL,            -- detection index; -1: looked, found nothing
            label VARCHAR,                 -- face | head | person | halfbody
            score DOUBLE,
            x0 DOUBLE, y0 DOUBLE, x1 DOUBLE, y1 DOUBLE,  -- pixels of the picture
            hair VARCHAR,                  -- JSON [r, g, b] where the detector gives a hair colour
            PRIMARY KEY (image_hash, detector, n)
        );
        -- Each picture's framing as a run's crops stage classified it (rules.md §7-§8).
        CREATE TABLE framings (
            run_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            image_hash VARCHAR NOT NULL,
            concept VARCHAR NOT NULL,      -- '' = no concept's paths take it
            framing VARCHAR NOT NULL,      -- portrait | upper_body | cowboy_shot | full_body | none
            crop_of VARCHAR,               -- the parent picture's name for a crop the stage added
            PRIMARY KEY (run_id, name)
        );
        """,
    ),
]


class PrepareTables(CatalogCore):
    """What the prepare stages found: dedupe (hashes, duplicates), trim's edge spreads, masks, crops."""

    # -- dedupe and trim ---------------------------------------------------------
    def add_perceptual_hashes(self, rows: Iterable[dict[str, Any]]) -> int:
        return self._insert("perceptual_hashes", ({"created_at": now(), **r} for r in rows))

    def perceptual_hashes(self, hashes: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        """(pHash, dHash, colour thumbnail) of the images hashed already."""
        if not hashes:
            return {}
        rows = self.con.execute(
            "SELECT image_hash, phash, dhash, colour FROM perceptual_hashes WHERE image_hash IN (SELECT unnest(?))",
            [list(hashes)],
        ).fetchall()
        return {h: (p, d, c) for h, p, d, c in rows}

    def edge_spreads(self, hashes: Sequence[str]) -> dict[str, float]:
        """Known edge spreads (bakery/craft/prepare/trim.py) of these images."""
        if not hashes:
            return {}
        rows = self.con.execute(
            "SELECT image_hash, edge_spread FROM perceptual_hashes "
            "WHERE image_hash IN (SELECT unnest(?)) AND edge_spread IS NOT NULL",
            [list(hashes)],
        ).fetchall()
        return dict(rows)

    def add_duplicates(self, rows: Iterable[dict[str, Any]], run_id: str | None) -> int:
        return self._insert("duplicates", ({"run_id": run_id, **r} for r in rows), verb="INSERT OR REPLACE")

    def clear_duplicates(self, stage: str, image_hashes: Sequence[str]) -> None:
        """Forget earlier verdicts on these images (the recipe's keep list may have changed)."""
        if image_hashes:
            self.con.execute(
                "DELETE FROM duplicates WHERE stage = ? AND image_hash IN (SELECT unnest(?))", [stage, list(image_hashes)]
            )

    def near_duplicates(self) -> list[dict[str, Any]]:
        """Every dropped duplicate with the copy that was kept (the dedupe stage's newest verdicts)."""
        return self.rows("SELECT * FROM duplicates ORDER BY kept_hash, distance, image_hash")

    # -- masks -------------------------------------------------------------------
    def add_mask_stats(self, rows: Iterable[dict[str, Any]]) -> int:
        return self._insert("mask_stats", rows)

    def mask_histograms(self, mask_hashes: Sequence[str]) -> dict[str, list[int]]:
        if not mask_hashes:
            return {}
        rows = self.con.execute(
            "SELECT mask_hash, histogram FROM mask_stats WHERE mask_hash IN (SELECT unnest(?))", [list(mask_hashes)]
        ).fetchall()
        return {h: json.loads(hist) for h, hist in rows}

    def add_mask_qa(self, rows: Iterable[dict[str, Any]], run_id: str) -> int:
        return self._insert("mask_qa", ({"run_id": run_id, **r} for r in rows), verb="INSERT OR REPLACE")

    def mask_qa_for(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT image_hash, mask_hash, accepted, reason FROM mask_qa WHERE run_id = ? ORDER BY image_hash", [run_id]
        )

    def latest_mask_qa(self) -> list[dict[str, Any]]:
        """The mask QA verdicts of the newest run that checked masks."""
        return self.rows(
            """SELECT * FROM mask_qa WHERE run_id = (SELECT q.run_id FROM (SELECT DISTINCT run_id FROM mask_qa) q
               JOIN runs USING (run_id) ORDER BY runs.started_at DESC LIMIT 1) ORDER BY image_hash""")

    # -- crops: detections and framings ------------------------------------------
    def add_detections(self, rows: Iterable[dict[str, Any]]) -> int:
        return self._insert("detections", rows)

    def detections(self, detector: str, hashes: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """image hash -> its detections by `detector` ([] = looked, found nothing); absent = not looked at."""
        found: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows("""SELECT * FROM detections WHERE detector = ? AND image_hash IN (SELECT unnest(?))
                                ORDER BY image_hash, n""", [detector, list(hashes)]):
            found.setdefault(row["image_hash"], [])
            if row["n"] >= 0:
                found[row["image_hash"]].append(row)
        return found

    def add_framings(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM framings WHERE run_id = ?", [run_id])
        return self._insert("framings", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def framings(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM framings WHERE run_id = ? ORDER BY name", [run_id])

    def crop_framings(self, hashes: Sequence[str]) -> dict[str, str]:
        """Pictures the crops stage cut out (output hash -> the framing it was cut as)."""
        return dict(self.con.execute(
            """SELECT output_hash, json_extract_string(params, '$.framing') FROM derivations
               WHERE stage = 'crops' AND output_hash IN (SELECT unnest(?))""", [list(hashes)]).fetchall())
