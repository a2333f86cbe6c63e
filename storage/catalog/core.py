"""The catalog's core: the connection (open, wait, hold), the migration runner, row helpers and the run record.

One DuckDB file in the work dir. The schema is versioned: each phase's module lists
its own migrations, numbered globally, and opening a catalog applies the ones it
has not seen yet, in version order, in one transaction each. Only one process
writes at a time (DuckDB allows a single read-write process): parallel workers
return rows and the task that owns them writes them here. Flow runs of a sweep on
several workers share one catalog on a shared folder: each opening waits (up to
LOCK_WAIT_S) while another process holds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Self

import duckdb

CATALOG_FILE = "catalog.duckdb"
LOCK_WAIT_S = 120.0  # every holder opens, writes and closes within seconds
INTERACTIVE_WAIT_S = 3.0  # a person at the review studio or `bakery edit` waits this long, then is told why

# The run record's part of the schema: (version, statements). Versions are global over every
# phase (storage/catalog/__init__.py joins the lists); a new one takes the next number after
# SCHEMA_VERSION. Append new versions; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
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
]

SHARED_VERSIONS = {1}  # the first schema was one migration over every phase: each phase lists its part


def join_migrations(*parts: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """The phases' migrations as one list in version order. A shared version's parts become one migration
    (one transaction), in the order the parts are given; any other version given twice is a mistake."""
    joined: dict[int, str] = {}
    for part in parts:
        for version, sql in part:
            if version in joined and version not in SHARED_VERSIONS:
                raise ValueError(f"catalog migration {version} is listed twice")
            joined[version] = joined.get(version, "") + sql
    return sorted(joined.items())


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


def jsonable(value: Any) -> Any:
    """A value DuckDB takes: dicts and lists as JSON text, paths as text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, Path):
        return str(value)
    return value


_HELD: dict[Path, CatalogCore] = {}  # catalog file -> its catalog, while `CatalogCore.held` holds it


class CatalogCore:
    """The connection, the migrations and the run record; the phases' tables are mixins on top (`Catalog`)."""

    MIGRATIONS: ClassVar[Sequence[tuple[int, str]]] = MIGRATIONS  # `Catalog` sets every phase's

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path):
        self.con = con
        self.path = path

    # -- opening and migrations ------------------------------------------------
    @classmethod
    @contextmanager
    def open(
        cls, path: Path | str, migrations: Sequence[tuple[int, str]] | None = None, read_only: bool = False,
        wait_s: float = LOCK_WAIT_S,
    ) -> Iterator[Self]:
        """`migrations`: the class's own when None. `wait_s`: how long to wait for another process's hold;
        interactive callers (edits, review) wait briefly."""
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
                catalog.migrate(cls.MIGRATIONS if migrations is None else migrations)
            yield catalog
        finally:
            con.close()

    @classmethod
    @contextmanager
    def held(cls, path: Path | str) -> Iterator[Self]:
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

    # -- rows in and out -------------------------------------------------------
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

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
        columns = [[jsonable(r[c]) for r in rows] for c in cols]
        select = ", ".join(f"unnest(?) AS {c}" for c in cols)
        try:
            self.con.execute(f"{verb} INTO {table} ({', '.join(cols)}) SELECT {select}", columns)
        except (duckdb.ConversionException, duckdb.BinderException, duckdb.InvalidInputException):
            # a column whose values do not make one list type: row by row
            sql = f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            self.con.executemany(sql, [[jsonable(r[c]) for c in cols] for r in rows])
        return n

    def _last_per_key(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The last row of each primary key (one statement over lists keeps the first of two)."""
        found = self.con.execute(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'", [table]).fetchone()
        if not found:
            return rows
        last = {tuple(jsonable(r[c]) for c in found[0]): r for r in rows}
        return list(last.values())

    # -- the run record: runs, their stages, skips and warnings ----------------
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

    def add_stage_warnings(self, run_id: str, stage: str, messages: Iterable[str]) -> int:
        """A stage's warnings for this run; one it already holds is not added again (a stage the run ran twice,
        e.g. again because its cached output was deleted, warns once)."""
        held = {r["message"] for r in self.rows(
            "SELECT message FROM stage_warnings WHERE run_id = ? AND stage = ?", [run_id, stage])}
        fresh = [m for m in dict.fromkeys(messages) if m not in held]
        return self._insert("stage_warnings", [{"run_id": run_id, "stage": stage, "message": m} for m in fresh],
                            verb="INSERT")

    def add_skips(self, run_id: str, stage: str, skips: Iterable[tuple[str, str]]) -> int:
        return self._insert("skips", ({"run_id": run_id, "stage": stage, "subject": s, "reason": r} for s, r in skips), verb="INSERT")

    def last_run(self, recipe_path: str | None = None) -> dict[str, Any] | None:
        where, params = ("WHERE recipe_path = ?", [recipe_path]) if recipe_path else ("", [])
        rows = self.rows(f"SELECT * FROM runs {where} ORDER BY started_at DESC LIMIT 1", params)
        return rows[0] if rows else None

    def runs_of(self, recipe_path: str | None) -> list[dict[str, Any]]:
        """Runs of one recipe (every run when None), newest first."""
        return self.rows("SELECT * FROM runs WHERE ? IS NULL OR recipe_path = ? ORDER BY started_at DESC",
                         [recipe_path, recipe_path])

    def stage_table(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM stage_runs WHERE run_id = ? ORDER BY started_at", [run_id])

    def stage_warnings(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT stage, message FROM stage_warnings WHERE run_id = ? ORDER BY rowid", [run_id])

    def skips_for(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT stage, subject, reason FROM skips WHERE run_id = ? ORDER BY stage, subject", [run_id])
