"""Run summaries read from the catalog, for the terminal and the dashboard."""

from __future__ import annotations

from bakery.report import markdown_summary
from storage import Catalog
from tasks.stage import RunInfo


def run_summary_markdown(run: RunInfo) -> str:
    with Catalog.open(run.catalog, read_only=False) as cat:
        record = cat.rows("SELECT * FROM runs WHERE run_id = ?", [run.run_id])[0]
        return markdown_summary(record, cat.stage_table(run.run_id), cat.skips_for(run.run_id),
                                cat.stage_warnings(run.run_id))
