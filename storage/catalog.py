"""The DuckDB catalog: provenance of every image and the record of every run.

One file in the work dir. The schema is versioned: `MIGRATIONS` is an ordered
list, and opening a catalog applies the ones it has not seen yet, in one
transaction each. Only one process writes at a time (DuckDB allows a single
read-write process): parallel workers return rows and the task that owns them
writes them here. Flow runs of a sweep on several workers share one catalog on a
shared folder: each opening waits (up to LOCK_WAIT_S) while another process holds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

CATALOG_FILE = "catalog.duckdb"
LOCK_WAIT_S = 120.0  # every holder opens, writes and closes within seconds
INTERACTIVE_WAIT_S = 3.0  # a person at the review studio or `bakery edit` waits this long, then is told why

# (version, statements). Append new versions; never edit a released one.
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
        CREATE TABLE tags (
            image_hash VARCHAR NOT NULL,
            tag VARCHAR NOT NULL,
            category VARCHAR NOT NULL,     -- general | character | copyright | artist | meta | rating
            origin VARCHAR NOT NULL,       -- booru | tagger | user
            confidence DOUBLE,
            PRIMARY KEY (image_hash, tag, origin)
        );
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            recipe_path VARCHAR NOT NULL,
            recipe_hash VARCHAR NOT NULL,
            recipe JSON NOT NULL,
            flow_run_id VARCHAR,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            status VARCHAR NOT NULL,       -- running | completed | failed
            message VARCHAR
        );
        CREATE TABLE stage_runs (
            run_id VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            status VARCHAR NOT NULL,       -- ran | cached | failed
            n_in INTEGER, n_out INTEGER,
            n_processed INTEGER,           -- images actually worked on (not reused)
            n_skipped INTEGER,
            duration_s DOUBLE,
            started_at TIMESTAMPTZ NOT NULL,
            message VARCHAR,
            PRIMARY KEY (run_id, stage)
        );
        CREATE TABLE skips (
            run_id VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            subject VARCHAR NOT NULL,      -- path, URL or image hash
            reason VARCHAR NOT NULL
        );
        CREATE TABLE duplicates (
            stage VARCHAR NOT NULL,
            image_hash VARCHAR NOT NULL,   -- the dropped image
            kept_hash VARCHAR NOT NULL,
            method VARCHAR NOT NULL,       -- exact | phash | dhash ...
            distance DOUBLE NOT NULL,
            run_id VARCHAR,
            PRIMARY KEY (stage, image_hash)
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
    (
        6,
        """
        CREATE TABLE evaluations (
            eval_key VARCHAR PRIMARY KEY,  -- one evaluation: bake + evaluate parameters + code
            run_id VARCHAR,
            bake_key VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            recommended_epoch INTEGER,     -- NULL: nothing to recommend (no epoch changes the image)
            weight_min DOUBLE,
            weight_max DOUBLE,
            recommended_file VARCHAR,
            reasons JSON NOT NULL,         -- the rules that fired, in order
            flags JSON NOT NULL,           -- problems found, with their likely causes
            loss_shape VARCHAR,            -- none | flat | falling | falling_then_rising | rising
            likeness_method VARCHAR,       -- NULL: not measured; histogram | embedding:<model type>
            report_path VARCHAR NOT NULL,
            load_s DOUBLE,                 -- LoRA loading/weight swapping
            render_s DOUBLE,               -- image generation
            cells INTEGER,                 -- images generated
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE evaluation_epochs (
            eval_key VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            file VARCHAR NOT NULL,
            loss_mean DOUBLE,
            effect DOUBLE NOT NULL,        -- mean |pixel| difference weight 0 vs 1, 0-255
            does_nothing BOOLEAN NOT NULL,
            fries_at DOUBLE,               -- lowest weight that fries; NULL: none
            over_trained BOOLEAN NOT NULL,
            PRIMARY KEY (eval_key, epoch)
        );
        CREATE TABLE evaluation_metrics (
            eval_key VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            weight DOUBLE NOT NULL,
            effect DOUBLE NOT NULL,        -- vs weight 0, 0-255
            saturation DOUBLE NOT NULL,
            contrast DOUBLE NOT NULL,
            hf_energy DOUBLE NOT NULL,
            fry_score DOUBLE NOT NULL,
            likeness DOUBLE,
            PRIMARY KEY (eval_key, epoch, weight)
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
        9,
        """
        -- bakery/craft/prepare/trim.py edge_spread: trim leaves a picture whose spread is past its fuzz
        -- alone without decoding it. NULL: not known (hashed before this column, or transparent).
        ALTER TABLE perceptual_hashes ADD COLUMN edge_spread DOUBLE;
        """,
    ),
    (
        10,
        """
        -- The picture account of a stage (bakery/account.py): in + split = out + skipped.
        ALTER TABLE stage_runs ADD COLUMN n_split INTEGER;  -- outputs beyond the first of one input (frames)
        ALTER TABLE stage_runs ADD COLUMN n_lost INTEGER;   -- pictures the account cannot follow: fails the run
        CREATE TABLE stage_warnings (      -- about pictures that go on (e.g. one caption file for two pictures)
            run_id VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            message VARCHAR NOT NULL
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
    (
        11,
        """
        CREATE TABLE trigger_checks (      -- is each trigger free on the base model? (rules.md §10, §13)
            check_key VARCHAR NOT NULL,    -- the trigger_check stage's parameters + triggers
            run_id VARCHAR NOT NULL,
            trigger VARCHAR NOT NULL,      -- a trigger, or a nonsense control word (is_control)
            is_control BOOLEAN NOT NULL,
            verdict VARCHAR,               -- free | contaminated (NULL for controls)
            drawn_tags VARCHAR,            -- JSON list: tags the base model draws for it
            tag_shares VARCHAR,            -- JSON {tag: share of its renders}
            similarity DOUBLE,             -- mean pairwise cosine of its renders (NULL: no embedding model)
            control_similarity DOUBLE,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (check_key, trigger)
        );
        """,
    ),
    (
        14,
        """
        -- The tag judges and the ranking of an evaluation (bakery/craft/taste/judges/panel.py), one row per score.
        CREATE TABLE evaluation_scores (
            eval_key VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            weight DOUBLE NOT NULL,
            judge VARCHAR NOT NULL,        -- identity | bleed | flexibility | effect_ratio | rank_score
            subject VARCHAR NOT NULL,      -- the trigger (identity, bleed) or prompt (flexibility); '' for the others
            score DOUBLE NOT NULL,         -- recall 0-1; effect_ratio: effect / change between seeds
            PRIMARY KEY (eval_key, epoch, weight, judge, subject)
        );
        """,
    ),
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

SCHEMA_VERSION = max(v for v, _ in MIGRATIONS)


def _connect(path: Path, read_only: bool, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Connect, waiting while another process holds the file (a sweep's flow runs share it)."""
    deadline, pause = time.monotonic() + wait_s, 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def now() -> datetime:
    return datetime.now(timezone.utc)


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


_HELD: dict[Path, "Catalog"] = {}  # catalog file -> its connection, while `Catalog.held` holds it


class Catalog:
    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path):
        self.con = con
        self.path = path

    # -- opening and migrations -------------------------------------------------
    @classmethod
    @contextmanager
    def open(
        cls, path: Path | str, migrations: Sequence[tuple[int, str]] = MIGRATIONS, read_only: bool = False,
        wait_s: float = LOCK_WAIT_S,
    ) -> Iterator["Catalog"]:
        """`wait_s`: how long to wait for another process's hold; interactive callers (edits, review) wait briefly."""
        path = Path(path)
        if path.is_dir():
            path = path / CATALOG_FILE
        if (held := _HELD.get(path.resolve())) is not None:
            yield held
            return
        if read_only and not path.exists():
            raise FileNotFoundError(f"no catalog at {path}: run the recipe first")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size == 0:
            path.unlink()  # an empty file holds nothing: start a fresh catalog there
        con = _connect(path, read_only, wait_s)
        try:
            catalog = cls(con, path)
            if not read_only:
                catalog.migrate(migrations)
            yield catalog
        finally:
            con.close()

    @classmethod
    @contextmanager
    def held(cls, path: Path | str) -> Iterator["Catalog"]:
        """For the block, every `open` of this catalog in this process uses one connection: a run that writes a
        few rows per stage (a replayed cached run) opens the file once instead of once per stage (~0.1 s each).
        Other processes cannot open it meanwhile: only for short, single-threaded work."""
        with cls.open(path) as catalog:
            key = catalog.path.resolve()
            _HELD[key] = catalog
            try:
                yield catalog
            finally:
                del _HELD[key]

    def version(self) -> int:
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
        ).fetchone()[0]
        if not exists:
            return 0
        return self.con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]

    def migrate(self, migrations: Sequence[tuple[int, str]]) -> list[int]:
        self.con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
        done = {v for (v,) in self.con.execute("SELECT version FROM schema_version").fetchall()}
        applied = []
        for version, sql in sorted(migrations, key=lambda m: m[0]):
            if version in done:  # by set, not by max: versions may land out of order
                continue
            self.con.execute("BEGIN TRANSACTION")
            try:
                self.con.execute(sql)
                self.con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, now()])
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
            applied.append(version)
        return applied

    # -- writing ---------------------------------------------------------------
    def add_bake_log(self, rows: Iterable[dict[str, Any]]) -> int:
        """Loss per step; re-logging a step (a resumed bake) replaces it."""
        stamped = [{**row, "created_at": row.get("created_at") or now()} for row in rows]
        return self._insert("bake_log", stamped, verb="INSERT OR REPLACE")

    def bake_log(self, bake_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT step, epoch, loss, lr FROM bake_log WHERE bake_key = ? ORDER BY step", [bake_key])

    def add_validation_loss(self, rows: Iterable[dict[str, Any]]) -> int:
        """Validation loss per epoch (bake_key, epoch, loss, held_out, n_pictures); a resumed bake's rows replace."""
        stamped = [{**row, "created_at": row.get("created_at") or now()} for row in rows]
        return self._insert("validation_loss", stamped, verb="INSERT OR REPLACE")

    def validation_loss(self, bake_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT epoch, loss, held_out, n_pictures FROM validation_loss WHERE bake_key = ? "
                         "ORDER BY epoch", [bake_key])

    def add_validation_pictures(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM validation_pictures WHERE run_id = ?", [run_id])
        return self._insert("validation_pictures", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def validation_pictures(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM validation_pictures WHERE run_id = ? ORDER BY folder, name", [run_id])

    def _insert(self, table: str, rows: Iterable[dict[str, Any]], verb: str = "INSERT OR IGNORE") -> int:
        rows = list(rows)
        if not rows:
            return 0
        cols = list(rows[0])
        n = len(rows)
        if verb == "INSERT OR REPLACE":  # the last of two rows with one key wins, as row by row
            rows = self._last_per_key(table, rows)
        # One statement over column lists (DuckDB's executemany costs ~10 ms a row); with
        # OR IGNORE the first of two rows with one key is kept, as row by row.
        columns = [[_jsonable(r[c]) for r in rows] for c in cols]
        select = ", ".join(f"unnest(?) AS {c}" for c in cols)
        try:
            self.con.execute(f"{verb} INTO {table} ({', '.join(cols)}) SELECT {select}", columns)
        except (duckdb.ConversionException, duckdb.BinderException, duckdb.InvalidInputException):
            # a column whose values do not make one list type: row by row
            sql = f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            self.con.executemany(sql, [[_jsonable(r[c]) for c in cols] for r in rows])
        return n

    def _last_per_key(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The last row of each primary key (one statement over lists keeps the first of two)."""
        found = self.con.execute(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'", [table]).fetchone()
        if not found:
            return rows
        last = {tuple(_jsonable(r[c]) for c in found[0]): r for r in rows}
        return list(last.values())

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

    def add_sources(self, rows: Iterable[dict[str, Any]], run_id: str | None) -> int:
        # Replace: a sidecar edited beside an unchanged image must reach the captions.
        return self._insert("sources", ({"fetched_at": now(), "run_id": run_id, **r} for r in rows), verb="INSERT OR REPLACE")

    def add_derivations(self, rows: Iterable[dict[str, Any]], run_id: str | None) -> int:
        return self._insert("derivations", ({"created_at": now(), "run_id": run_id, **r} for r in rows))

    def add_duplicates(self, rows: Iterable[dict[str, Any]], run_id: str | None) -> int:
        return self._insert("duplicates", ({"run_id": run_id, **r} for r in rows), verb="INSERT OR REPLACE")

    def add_evaluation(self, row: dict[str, Any], epochs: Iterable[dict[str, Any]], metrics: Iterable[dict[str, Any]]) -> None:
        """One evaluation and its numbers; re-evaluating the same key replaces them."""
        key = row["eval_key"]
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table in ("evaluation_metrics", "evaluation_epochs", "evaluations"):
                self.con.execute(f"DELETE FROM {table} WHERE eval_key = ?", [key])
            self._insert("evaluations", [{**row, "created_at": now()}], verb="INSERT")
            self._insert("evaluation_epochs", ({**r, "eval_key": key} for r in epochs), verb="INSERT")
            self._insert("evaluation_metrics", ({**r, "eval_key": key} for r in metrics), verb="INSERT")
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise

    def add_evaluation_scores(self, eval_key: str, rows: Iterable[dict[str, Any]]) -> int:
        """The judges' scores of one evaluation; re-evaluating replaces them."""
        self.con.execute("DELETE FROM evaluation_scores WHERE eval_key = ?", [eval_key])
        return self._insert("evaluation_scores", ({**r, "eval_key": eval_key} for r in rows), verb="INSERT")

    def evaluation_scores(self, eval_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * EXCLUDE (eval_key) FROM evaluation_scores WHERE eval_key = ? "
                         "ORDER BY judge, subject, epoch, weight", [eval_key])

    def evaluation(self, eval_key: str | None = None, bake_key: str | None = None) -> dict[str, Any] | None:
        """An evaluation by key, or the latest one of a bake, with its epochs and metrics."""
        if eval_key:
            rows = self.rows("SELECT * FROM evaluations WHERE eval_key = ?", [eval_key])
        else:
            rows = self.rows("SELECT * FROM evaluations WHERE bake_key = ? ORDER BY created_at DESC LIMIT 1", [bake_key])
        if not rows:
            return None
        ev = rows[0]
        ev["reasons"], ev["flags"] = json.loads(ev["reasons"]), json.loads(ev["flags"])
        ev["epochs"] = self.rows("SELECT * EXCLUDE (eval_key) FROM evaluation_epochs WHERE eval_key = ? ORDER BY epoch", [ev["eval_key"]])
        ev["metrics"] = self.rows(
            "SELECT * EXCLUDE (eval_key) FROM evaluation_metrics WHERE eval_key = ? ORDER BY epoch, weight", [ev["eval_key"]]
        )
        return ev

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

    def add_perceptual_hashes(self, rows: Iterable[dict[str, Any]]) -> int:
        return self._insert("perceptual_hashes", ({"created_at": now(), **r} for r in rows))

    def clear_duplicates(self, stage: str, image_hashes: Sequence[str]) -> None:
        """Forget earlier verdicts on these images (the recipe's keep list may have changed)."""
        if image_hashes:
            self.con.execute(
                "DELETE FROM duplicates WHERE stage = ? AND image_hash IN (SELECT unnest(?))", [stage, list(image_hashes)]
            )

    # -- reading ---------------------------------------------------------------
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

    def tags_for(self, hashes: Sequence[str]) -> list[dict[str, Any]]:
        return self.rows(
            """SELECT image_hash, tag, category, origin, confidence FROM tags
               WHERE image_hash IN (SELECT unnest(?)) ORDER BY image_hash, origin, confidence DESC NULLS LAST, tag""",
            [list(hashes)],
        )

    def sidecars_for(self, hashes: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for h, text in self.con.execute(
            """SELECT image_hash, sidecar FROM sources WHERE image_hash IN (SELECT unnest(?))
               AND sidecar IS NOT NULL ORDER BY image_hash, location""", [list(hashes)]
        ).fetchall():
            found.setdefault(h, []).append(text)
        return found

    def forget_derivations(self, stage: str, hashes: Sequence[str], except_params_hash: str) -> None:
        """Drop a stage's records for these inputs made with other parameters (their outputs were replaced)."""
        if hashes:
            self.con.execute(
                "DELETE FROM derivations WHERE stage = ? AND params_hash <> ? AND input_hash IN (SELECT unnest(?))",
                [stage, except_params_hash, list(hashes)],
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

    def add_tag_stats(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM tag_stats WHERE run_id = ?", [run_id])
        return self._insert("tag_stats", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def add_train_captions(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        self.con.execute("DELETE FROM train_captions WHERE run_id = ?", [run_id])
        return self._insert("train_captions", ({"run_id": run_id, **r} for r in rows), verb="INSERT")

    def runs_with(self, table: str) -> list[str]:
        """Run ids that wrote rows to `table` (tag_stats, train_captions), newest first."""
        if table not in ("tag_stats", "train_captions"):
            raise ValueError(table)
        return [r for (r,) in self.con.execute(
            f"""SELECT t.run_id FROM (SELECT DISTINCT run_id FROM {table}) t JOIN runs USING (run_id)
                ORDER BY runs.started_at DESC"""
        ).fetchall()]

    def tag_stats(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT concept, phase, tag, count FROM tag_stats WHERE run_id = ? ORDER BY concept, phase, count DESC, tag", [run_id])

    def train_captions(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM train_captions WHERE run_id = ? ORDER BY is_reg, folder, name", [run_id])

    def add_skips(self, run_id: str, stage: str, skips: Iterable[tuple[str, str]]) -> int:
        return self._insert("skips", ({"run_id": run_id, "stage": stage, "subject": s, "reason": r} for s, r in skips), verb="INSERT")

    def add_trigger_checks(self, check_key: str, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        """One trigger check's rows (triggers and controls); checking the same key again replaces them."""
        self.con.execute("DELETE FROM trigger_checks WHERE check_key = ?", [check_key])
        return self._insert("trigger_checks", [{**r, "check_key": check_key, "run_id": run_id, "created_at": now()}
                                               for r in rows], verb="INSERT")

    def trigger_checks(self, check_key: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM trigger_checks WHERE check_key = ? ORDER BY is_control, trigger", [check_key])

    def latest_trigger_checks(self, triggers: Sequence[str]) -> list[dict[str, Any]]:
        """The latest verdict of each of these triggers (none for a trigger never checked)."""
        return self.rows(
            "SELECT * FROM trigger_checks WHERE NOT is_control AND list_contains(?, trigger) "
            "QUALIFY row_number() OVER (PARTITION BY trigger ORDER BY created_at DESC) = 1 ORDER BY trigger",
            [list(triggers)])

    def add_sweep_variants(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        """What became of each variant of the sweep run `run_id` (history: a list of lines)."""
        return self._insert("sweep_variants", [{**r, "run_id": run_id, "overrides": json.dumps(r["overrides"], sort_keys=True),
                                                "history": json.dumps(r["history"])} for r in rows], verb="INSERT OR REPLACE")

    def sweep_variants(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.rows("SELECT * EXCLUDE (run_id) FROM sweep_variants WHERE run_id = ? ORDER BY variant", [run_id])
        for r in rows:
            r["overrides"], r["history"] = json.loads(r["overrides"]), json.loads(r["history"])
        return rows

    def add_stage_warnings(self, run_id: str, stage: str, messages: Iterable[str]) -> int:
        return self._insert("stage_warnings", [{"run_id": run_id, "stage": stage, "message": m} for m in messages],
                            verb="INSERT")

    def stage_warnings(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT stage, message FROM stage_warnings WHERE run_id = ? ORDER BY rowid", [run_id])

    def start_run(self, run_id: str, recipe_path: str, recipe_hash: str, recipe_json: str, flow_run_id: str | None) -> None:
        self._insert(
            "runs",
            [
                {
                    "run_id": run_id,
                    "recipe_path": recipe_path,
                    "recipe_hash": recipe_hash,
                    "recipe": recipe_json,
                    "flow_run_id": flow_run_id,
                    "started_at": now(),
                    "status": "running",
                }
            ],
        )

    def finish_run(self, run_id: str, status: str, message: str | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET status = ?, message = ?, finished_at = ? WHERE run_id = ?", [status, message, now(), run_id]
        )

    def forget_run(self, run_id: str) -> None:
        """Delete every row of this run, in every table with a run_id column."""
        tables = self.con.execute(
            """SELECT DISTINCT c.table_name FROM information_schema.columns c JOIN information_schema.tables t
               USING (table_schema, table_name) WHERE c.column_name = 'run_id' AND t.table_type = 'BASE TABLE'"""
        ).fetchall()
        for (table,) in tables:
            self.con.execute(f'DELETE FROM "{table}" WHERE run_id = ?', [run_id])

    def record_stage(self, run_id: str, stage: str, **fields: Any) -> None:
        self._insert("stage_runs", [{"run_id": run_id, "stage": stage, "started_at": now(), **fields}], verb="INSERT OR REPLACE")

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

    def add_booru_tags(self, rows: Iterable[dict[str, Any]]) -> int:
        """Post counts of tags (site, tag, category, post_count); newer rows replace older ones."""
        rows = list(rows)
        self._delete_keys("booru_tags", "tag", ((r["site"], r["tag"]) for r in rows))
        return self._insert("booru_tags", ({"fetched_at": now(), **r} for r in rows))

    # -- reading ---------------------------------------------------------------
    def booru_posts(self, site: str, post_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Posts of a site already taken, by post id."""
        if not post_ids:
            return {}
        rows = self.rows(
            "SELECT * FROM booru_posts WHERE site = ? AND post_id IN (SELECT unnest(?))", [site, list(post_ids)]
        )
        return {r["post_id"]: r for r in rows}

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

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def known_sources(self, locations: Sequence[str]) -> dict[tuple[str, str], str]:
        """(location, image_hash) pairs already ingested, mapped to the source name."""
        if not locations:
            return {}
        found = self.con.execute(
            "SELECT location, image_hash, name FROM sources WHERE location IN (SELECT unnest(?))", [list(locations)]
        ).fetchall()
        return {(loc, h): name for loc, h, name in found}

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

    def last_run(self, recipe_path: str | None = None) -> dict[str, Any] | None:
        where, params = ("WHERE recipe_path = ?", [recipe_path]) if recipe_path else ("", [])
        rows = self.rows(f"SELECT * FROM runs {where} ORDER BY started_at DESC LIMIT 1", params)
        return rows[0] if rows else None

    def stage_table(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM stage_runs WHERE run_id = ? ORDER BY started_at", [run_id])

    # -- edits (bakery/edits.py) ---------------------------------------------------
    def add_edit(self, kind: str, target: str, payload: dict[str, Any], reason: str,
                 created_at: datetime | None = None, undone_at: datetime | None = None) -> int:
        """A new edit; returns its id (one more than the highest so far)."""
        edit_id = self.con.execute("SELECT coalesce(max(id), 0) + 1 FROM edits").fetchone()[0]
        self.con.execute("INSERT INTO edits VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [edit_id, kind, target, _jsonable(payload), reason, created_at or now(), undone_at])
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

    # -- captions ------------------------------------------------------------
    def skips_for(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT stage, subject, reason FROM skips WHERE run_id = ? ORDER BY stage, subject", [run_id])

    # -- review studio (bakery/review): read-only look-ups ---------------------------
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

    def runs_of(self, recipe_path: str | None) -> list[dict[str, Any]]:
        """Runs of one recipe (every run when None), newest first."""
        return self.rows("SELECT * FROM runs WHERE ? IS NULL OR recipe_path = ? ORDER BY started_at DESC",
                         [recipe_path, recipe_path])

    def latest_mask_qa(self) -> list[dict[str, Any]]:
        """The mask QA verdicts of the newest run that checked masks."""
        return self.rows(
            """SELECT * FROM mask_qa WHERE run_id = (SELECT q.run_id FROM (SELECT DISTINCT run_id FROM mask_qa) q
               JOIN runs USING (run_id) ORDER BY runs.started_at DESC LIMIT 1) ORDER BY image_hash""")

    def near_duplicates(self) -> list[dict[str, Any]]:
        """Every dropped duplicate with the copy that was kept (the dedupe stage's newest verdicts)."""
        return self.rows("SELECT * FROM duplicates ORDER BY kept_hash, distance, image_hash")

    def evaluation_reports(self) -> list[dict[str, Any]]:
        return self.rows("SELECT eval_key, run_id, name, report_path, created_at FROM evaluations ORDER BY created_at DESC")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, Path):
        return str(value)
    return value
