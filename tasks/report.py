"""Run summaries read from the catalog, for the terminal and the dashboard."""

from __future__ import annotations

from bakery.report import composition_lines, framing_lines, markdown_summary, upscale_line
from storage import Catalog
from tasks.runlog import run_log_path
from tasks.stage import RunInfo


def run_summary_markdown(run: RunInfo) -> str:
    with Catalog.open(run.catalog, read_only=False) as cat:
        record = cat.rows("SELECT * FROM runs WHERE run_id = ?", [run.run_id])[0]
        stages = cat.stage_table(run.run_id)
        upscaled = upscale_line(run.workdir, stages)
        notes = (([upscaled] if upscaled else []) + framing_lines(run.workdir, stages)
                 + composition_lines(run.workdir, stages))
        return markdown_summary(record, stages, cat.skips_for(run.run_id), notes,
                                cat.stage_warnings(run.run_id), str(run_log_path(run.workdir, run.run_id)))
