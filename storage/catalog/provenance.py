"""The catalog's derivations: which stage made each image from which, and the walks back to the originals."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.catalog.core import CatalogCore, now

# (version, statements), numbered over every phase (storage/catalog/__init__.py joins the lists).
# Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE derivations (
            input_hash VARCHAR NOT NULL,
            output_hash VARCHAR NOT NULL,
            output_suffix VARCHAR NOT NULL, -- appended to the input's name ("0001" for GIF frames)
            stage VARCHAR NOT NULL,
            params JSON NOT NULL,
            params_hash VARCHAR NOT NULL,
            code_version VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            run_id VARCHAR,
            PRIMARY KEY (stage, input_hash, params_hash, code_version, output_hash)
        );
        """,
    ),
]


@dataclass(frozen=True)
class ProvenanceStep:
    stage: str
    input_hash: str
    output_hash: str
    output_suffix: str
    params: dict[str, Any]
    code_version: str
    created_at: datetime


@dataclass(frozen=True)
class Provenance:
    image_hash: str
    steps: list[ProvenanceStep]  # from the original to the image
    origin_hash: str
    sources: list[dict[str, Any]]


class ProvenanceTables(CatalogCore):
    """Derivations (every stage records its outputs) and what they tell: provenance, origins, names."""

    # -- derivations -------------------------------------------------------------
    def add_derivations(self, rows: Iterable[dict[str, Any]], run_id: str | None) -> int:
        return self._insert("derivations", ({"created_at": now(), "run_id": run_id, **r} for r in rows))

    def find_derivations(
        self, stage: str, params_hash: str, code_version: str, input_hashes: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        """Earlier outputs (hash, name suffix) of this stage for these inputs, same parameters and code."""
        found: dict[str, list[tuple[str, str]]] = {}
        if not input_hashes:
            return found
        rows = self.con.execute(
            """SELECT input_hash, output_hash, output_suffix FROM derivations
               WHERE stage = ? AND params_hash = ? AND code_version = ?
                 AND input_hash IN (SELECT unnest(?)) ORDER BY input_hash, output_suffix""",
            [stage, params_hash, code_version, list(input_hashes)],
        ).fetchall()
        for inp, out, name in rows:
            found.setdefault(inp, []).append((out, name))
        return found

    def derived_by_params(self, stage: str, code_version: str, input_hashes: Sequence[str]) -> dict[tuple[str, str], str]:
        """(input hash, params hash) -> output hash of a stage whose parameters differ per image (regularisation)."""
        rows = self.con.execute(
            """SELECT input_hash, params_hash, output_hash FROM derivations
               WHERE stage = ? AND code_version = ? AND input_hash IN (SELECT unnest(?)) ORDER BY created_at""",
            [stage, code_version, list(input_hashes)],
        ).fetchall()
        return {(inp, p_hash): out for inp, p_hash, out in rows}

    def forget_derivations(self, stage: str, hashes: Sequence[str], except_params_hash: str) -> None:
        """Drop a stage's records for these inputs made with other parameters (their outputs were replaced)."""
        if hashes:
            self.con.execute(
                "DELETE FROM derivations WHERE stage = ? AND params_hash <> ? AND input_hash IN (SELECT unnest(?))",
                [stage, except_params_hash, list(hashes)],
            )

    # -- walks back to the originals ---------------------------------------------
    def provenance(self, image_hash: str) -> Provenance:
        """The chain of derivations from an original (an image with sources) to `image_hash`."""
        steps: list[ProvenanceStep] = []
        current, seen = image_hash, {image_hash}
        while True:
            sources = self.rows("SELECT * FROM sources WHERE image_hash = ? ORDER BY location", [current])
            if sources:
                return Provenance(image_hash, list(reversed(steps)), current, sources)
            rows = self.rows(
                """SELECT * FROM derivations WHERE output_hash = ? AND input_hash <> output_hash
                   ORDER BY created_at LIMIT 1""",
                [current],
            )
            if not rows:
                raise LookupError(f"image {image_hash[:12]} has no recorded source (chain stops at {current[:12]})")
            row = rows[0]
            steps.append(
                ProvenanceStep(
                    stage=row["stage"],
                    input_hash=row["input_hash"],
                    output_hash=row["output_hash"],
                    output_suffix=row["output_suffix"],
                    params=json.loads(row["params"]),
                    code_version=row["code_version"],
                    created_at=row["created_at"],
                )
            )
            current = row["input_hash"]
            if current in seen:
                raise LookupError(f"derivation cycle at {current[:12]}")
            seen.add(current)

    def ancestors(self, hashes: Sequence[str]) -> dict[str, list[str]]:
        """Each image with the images it was derived from, nearest first (itself included)."""
        chains = {h: [h] for h in hashes}
        frontier = {h: {h} for h in hashes}  # image -> hashes reached at the last step
        for _ in range(64):  # chains are short; the bound guards against cycles
            wanted = sorted({x for xs in frontier.values() for x in xs})
            if not wanted:
                break
            parents: dict[str, set[str]] = {}
            for out, inp in self.con.execute(
                """SELECT output_hash, input_hash FROM derivations
                   WHERE output_hash IN (SELECT unnest(?)) AND input_hash <> output_hash""", [wanted]
            ).fetchall():
                parents.setdefault(out, set()).add(inp)
            nxt = {}
            for h, xs in frontier.items():
                found = sorted({p for x in xs for p in parents.get(x, ())} - set(chains[h]))
                chains[h].extend(found)
                if found:
                    nxt[h] = set(found)
            frontier = nxt
        return chains

    def origins(self, hashes: Sequence[str]) -> dict[str, tuple[list[str], str]]:
        """For each image, the source kinds of its originals and when the first was fetched (ISO)."""
        if not hashes:
            return {}
        rows = self.con.execute(
            """WITH RECURSIVE up(image_hash, current, depth) AS (
                   SELECT h, h, 0 FROM (SELECT unnest(?) AS h)
                   UNION ALL
                   SELECT up.image_hash, d.input_hash, up.depth + 1 FROM up
                   JOIN derivations d ON d.output_hash = up.current AND d.input_hash <> d.output_hash
                   WHERE up.depth < 32
               )
               SELECT up.image_hash, list(DISTINCT coalesce(s.source_kind, 'unknown')), min(s.fetched_at)
               FROM up JOIN sources s ON s.image_hash = up.current GROUP BY up.image_hash""",
            [list(hashes)],
        ).fetchall()
        return {h: (sorted(kinds), first.isoformat() if first else "") for h, kinds, first in rows}

    def picture_names(self, hashes: Sequence[str]) -> dict[str, str]:
        """Each image's picture name: its first source's name plus the suffixes (frames) of the derivations since."""
        if not hashes:
            return {}
        return dict(self.con.execute(
            """WITH RECURSIVE up(image_hash, current, suffix, depth) AS (
                   SELECT h, h, '', 0 FROM (SELECT unnest(?) AS h)
                   UNION ALL
                   SELECT up.image_hash, d.input_hash, d.output_suffix || up.suffix, up.depth + 1 FROM up
                   JOIN derivations d ON d.output_hash = up.current AND d.input_hash <> d.output_hash
                   WHERE up.depth < 32
               )
               SELECT up.image_hash, arg_min(s.name || up.suffix, s.location)
               FROM up JOIN sources s ON s.image_hash = up.current GROUP BY up.image_hash""",
            [list(hashes)],
        ).fetchall())
