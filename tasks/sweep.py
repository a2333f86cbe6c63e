"""A sweep's files in the work dir, which every worker reaches (a shared folder): heartbeats, outcomes, the report.

`WORKDIR/sweeps/<sweep id>/`: `<variant>.beat` (rewritten every `sweep.heartbeat_s` by the variant's flow run),
`<variant>.json` (what its run produced: run id, bake key, evaluation), `report.html` (bakery/craft/sweep.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bakery.craft import sweep as craft
from bakery.manifest import BakeOutput, StageResult
from storage import Catalog

SWEEPS_DIR = "sweeps"


def sweep_dir(workdir: str | Path, sweep_id: str) -> Path:
    return Path(workdir) / SWEEPS_DIR / sweep_id


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


@contextmanager
def heartbeat(workdir: str | Path, sweep_id: str, variant: str, every_s: float) -> Iterator[None]:
    """Rewrite the variant's heartbeat file every `every_s` while the block runs (a daemon thread)."""
    path = sweep_dir(workdir, sweep_id) / f"{variant}.beat"
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            count += 1
            _write_atomic(path, f"{os.getpid()} {count}\n")
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{variant}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def read_beat(workdir: str | Path, sweep_id: str, variant: str) -> str | None:
    try:
        return (sweep_dir(workdir, sweep_id) / f"{variant}.beat").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def record_variant(workdir: str | Path, sweep_id: str, variant: str, run_id: str, baked: BakeOutput | None,
                   tasted: StageResult | None) -> None:
    """What the variant's run produced, for the sweep that asked for it."""
    data = {"run_id": run_id, "bake_key": baked.bake_key if baked else None,
            "files": [baked.files[e] for e in sorted(baked.files)] if baked else [],
            "report_path": str(tasted.payload) if tasted else None}
    _write_atomic(sweep_dir(workdir, sweep_id) / f"{variant}.json", json.dumps(data))


def collect(workdir: str | Path, sweep_id: str, outcome: craft.VariantOutcome) -> list[dict]:
    """Fill `outcome` from its run's record and evaluation; returns its ranked cells."""
    path = sweep_dir(workdir, sweep_id) / f"{outcome.name}.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    outcome.variant_run_id, outcome.bake_key, outcome.report_path = data["run_id"], data["bake_key"], data["report_path"]
    outcome.files = data.get("files", [])
    if not outcome.report_path:
        outcome.message = outcome.message or "no evaluation: the run stopped before evaluate (see its stages)"
        return []
    with Catalog.open(workdir, read_only=True) as cat:
        found = cat.rows("SELECT eval_key FROM evaluations WHERE report_path = ? ORDER BY created_at DESC LIMIT 1",
                         [outcome.report_path])
        if not found:
            return []
        ev = cat.evaluation(found[0]["eval_key"])
        scores = cat.evaluation_scores(ev["eval_key"])
    outcome.eval_key = ev["eval_key"]
    if ev["recommended_epoch"] is not None:
        outcome.recommendation = f"epoch {ev['recommended_epoch']} at weight {ev['weight_min']:g}-{ev['weight_max']:g}"
    return craft.cells_from_scores(scores)


def write_report(workdir: str | Path, sweep_id: str, run_id: str, title: str,
                 outcomes: list[craft.VariantOutcome], tolerance: float) -> tuple[Path, str]:
    """The sweep report (HTML) and its catalog rows; returns its path and a markdown summary."""
    cells = {o.name: collect(workdir, sweep_id, o) for o in outcomes}
    ranking = craft.rank_variants({o.name: cells[o.name] for o in outcomes if o.status == craft.COMPLETED}, tolerance)
    path = sweep_dir(workdir, sweep_id) / "report.html"
    _write_atomic(path, craft.sweep_html(title, outcomes, ranking))
    with Catalog.open(workdir) as cat:
        cat.add_sweep_variants(run_id, [o.row() for o in outcomes])
    return path, craft.sweep_markdown(outcomes, ranking, str(path))


def publish(url: str, project: str, sweep_id: str, report: Path, outcomes: list[craft.VariantOutcome]) -> list[str]:
    """Copy the sweep report and each completed variant's LoRA files and report to `url` through fsspec
    (`<url>/<project>/<sweep id>/report.html`, `.../<variant>/<file>`); returns where they went."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    base = f"{root.rstrip('/')}/{project}/{sweep_id}"
    sources = [(report, base)] + [(Path(f), f"{base}/{o.name}") for o in outcomes if o.status == craft.COMPLETED
                                  for f in [*o.files, *([o.report_path] if o.report_path else [])]]
    sent = []
    for src, folder in sources:
        fs.makedirs(folder, exist_ok=True)
        fs.put_file(str(src), f"{folder}/{src.name}")
        sent.append(f"{folder}/{src.name}")
    return sent
