"""The DuckDB catalog: provenance of every image and the record of every run, one `Catalog` over every phase's tables.

The tables and their migrations live with their phase (core: connection, migrations and
the run record; gather, provenance, prepare, caption, bake, taste, edits, sweep); `Catalog`
combines them, and `MIGRATIONS` is every phase's migrations in version order.
"""

from __future__ import annotations

from storage.catalog import bake, caption, core, edits, gather, prepare, provenance, sweep, taste
from storage.catalog.bake import BakeTables
from storage.catalog.caption import CaptionTables
from storage.catalog.core import CATALOG_FILE, INTERACTIVE_WAIT_S, LOCK_WAIT_S, join_migrations, now
from storage.catalog.edits import EditTables
from storage.catalog.gather import GatherTables
from storage.catalog.prepare import PrepareTables
from storage.catalog.provenance import Provenance, ProvenanceStep, ProvenanceTables
from storage.catalog.sweep import SweepTables
from storage.catalog.taste import TasteTables

# Version 1's parts join in this order; every later version belongs to one phase.
MIGRATIONS: list[tuple[int, str]] = join_migrations(
    core.MIGRATIONS, gather.MIGRATIONS, provenance.MIGRATIONS, prepare.MIGRATIONS, caption.MIGRATIONS,
    bake.MIGRATIONS, taste.MIGRATIONS, edits.MIGRATIONS, sweep.MIGRATIONS,
)
SCHEMA_VERSION = max(v for v, _ in MIGRATIONS)


class Catalog(GatherTables, ProvenanceTables, PrepareTables, CaptionTables, BakeTables, TasteTables, EditTables,
              SweepTables):
    """The one entry point: `Catalog.open(work_dir)` migrates to `MIGRATIONS` and gives every phase's tables."""

    MIGRATIONS = MIGRATIONS


__all__ = [
    "CATALOG_FILE",
    "INTERACTIVE_WAIT_S",
    "LOCK_WAIT_S",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Catalog",
    "Provenance",
    "ProvenanceStep",
    "now",
]
