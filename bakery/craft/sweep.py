"""Sweeps: what became of each variant, when its worker counts as lost, and one ranking of (variant, epoch, weight).

Each variant is judged by its own evaluation (the same judges as a single bake: bakery/craft/taste/judges/panel.py); its
`rank_score` cells (ranking.cell_score: mean(identity, character, flexibility) - bleed, usable cells only) are ranked
here across variants. Cells within `tolerance` of the best are tied: when the tie spans several variants, the
data cannot decide between them, and the report says so.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bakery.craft.taste.ranking import JUDGES, judges_text
from bakery.craft.taste.reports.evaluation import CSS

COMPLETED, FAILED, LOST = "completed", "failed", "lost"


@dataclass
class VariantOutcome:
    """One variant of a sweep: how its flow runs went and what it produced."""

    name: str
    overrides: dict
    status: str = "pending"  # completed | failed | lost (every attempt's worker was lost)
    attempts: int = 0
    history: list[str] = field(default_factory=list)  # one line per attempt
    variant_run_id: str | None = None  # the run (catalog `runs`) that baked it
    bake_key: str | None = None
    eval_key: str | None = None
    report_path: str | None = None
    files: list[str] = field(default_factory=list)  # its LoRA files, one per saved epoch
    message: str | None = None
    recommendation: str = ""  # its own report's recommendation, one line

    def row(self) -> dict:
        return {"variant": self.name, "overrides": self.overrides, "status": self.status, "attempts": self.attempts,
                "history": self.history, "variant_run_id": self.variant_run_id, "bake_key": self.bake_key,
                "eval_key": self.eval_key, "report_path": self.report_path, "message": self.message}


@dataclass
class Liveness:
    """A flow run is alive while its heartbeat changes; unchanged for `lost_after_s` (our own clock), it is lost.

    Comparing what the heartbeat says rather than file times keeps clocks of other machines out of it."""

    lost_after_s: float
    _beat: str | None = None
    _since: float | None = None

    def lost(self, beat: str | None, now: float) -> bool:
        if self._since is None or beat != self._beat:
            self._beat, self._since = beat, now
            return False
        return now - self._since > self.lost_after_s

    def restart(self, now: float) -> None:
        self._beat, self._since = None, now


@dataclass
class WorkerWait:
    """Variants waiting for a worker while none of the sweep's runs, for `give_up_after_s` (our own clock): the
    pool has no worker for them, and waiting longer would never end. While one runs, the others wait their turn."""

    give_up_after_s: float  # 0: never
    _since: float | None = None

    def stuck(self, waiting: int, running: int, now: float) -> bool:
        if not waiting or running or not self.give_up_after_s:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        return now - self._since > self.give_up_after_s


def cells_from_scores(scores: Sequence[Mapping]) -> list[dict]:
    """An evaluation's ranked cells (its `rank_score` rows) with each judge's mean over subjects."""
    sums: dict[tuple[str, int, float], list[float]] = {}
    for r in scores:
        if r["judge"] in JUDGES:
            sums.setdefault((r["judge"], r["epoch"], r["weight"]), []).append(r["score"])
    cells = []
    for r in scores:
        if r["judge"] == "rank_score":
            parts = {j: _mean(sums.get((j, r["epoch"], r["weight"]))) for j in JUDGES}
            cells.append({"epoch": r["epoch"], "weight": r["weight"], "score": r["score"], **parts})
    return cells


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class SweepRanking:
    rows: list[dict] = field(default_factory=list)  # variant, epoch, weight, score, judges; best first
    tied: list[tuple[str, int, float]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def rank_variants(cells: Mapping[str, Sequence[Mapping]], tolerance: float) -> SweepRanking:
    """Every ranked (variant, epoch, weight), best first, the cells tied with the best, and why."""
    rows = [{"variant": v, **c} for v, cs in cells.items() for c in cs]
    rows.sort(key=lambda r: (-r["score"], r["variant"], -r["epoch"], r["weight"]))
    unranked = [f"{v}: no usable (epoch, weight) with a tag score (its own report says why)"
                for v, cs in sorted(cells.items()) if not cs]
    if not rows:
        return SweepRanking(reasons=["no variant has a ranked cell: compare their reports"] + unranked)
    best = rows[0]
    tied = [(r["variant"], r["epoch"], r["weight"]) for r in rows if r["score"] >= best["score"] - tolerance]
    head = (f"variant {best['variant']}, epoch {best['epoch']} at weight {best['weight']:g} scores best "
            f"({best['score']:.2f}: {judges_text(best)})")
    names = sorted({v for v, _, _ in tied})
    if len(names) > 1:
        why = f"the data cannot decide between variants {', '.join(names)}: their best cells lie within {tolerance:g}"
    elif (other := next((r for r in rows if r["variant"] != best["variant"]), None)) is not None:
        why = (f"the best of variant {other['variant']} (epoch {other['epoch']}, weight {other['weight']:g}) "
               f"scores {other['score']:.2f} ({judges_text(other)})")
    else:
        why = "it is the only variant with a ranked cell"
    return SweepRanking(rows, tied, [head, why] + unranked)


def _e(x: object) -> str:
    return html.escape(str(x))


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def sweep_html(title: str, outcomes: Sequence[VariantOutcome], ranking: SweepRanking, limit: int = 30) -> str:
    """The sweep's report: what happened to each variant, then the ranking across variants."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep {_e(title)}</title><style>{CSS}</style>"
           f"</head><body><h1>Sweep {_e(title)}</h1><h2>Variants</h2><table><tr><th>variant</th><th>changes</th>"
           "<th>status</th><th>attempts</th><th>what happened</th><th>recommendation</th><th>report</th></tr>"]
    for o in outcomes:
        link = f"<a href='file://{_e(o.report_path)}'>report</a>" if o.report_path else "-"
        out.append(f"<tr><td>{_e(o.name)}</td><td><code>{_e(json.dumps(o.overrides, sort_keys=True))}</code></td>"
                   f"<td>{_e(o.status)}</td><td>{o.attempts}</td><td>{'<br>'.join(map(_e, o.history))}</td>"
                   f"<td>{_e(o.recommendation or o.message or '-')}</td><td>{link}</td></tr>")
    out.append("</table><h2>Ranking across variants</h2><p>score = mean(identity, character, flexibility) "
               "&minus; bleed of each "
               "variant's usable cells, from its own evaluation. " + " ".join(_e(r) + "." for r in ranking.reasons)
               + "</p>")
    if ranking.rows:
        out.append("<table><tr><th>rank</th><th>variant</th><th>epoch</th><th>weight</th><th>score</th>"
                   + "".join(f"<th>{j}</th>" for j in JUDGES) + "</tr>")
        for i, r in enumerate(ranking.rows[:limit], start=1):
            out.append(f"<tr><td>{i}</td><td>{_e(r['variant'])}</td><td>{r['epoch']}</td><td>{r['weight']:g}</td>"
                       f"<td>{r['score']:.2f}</td>" + "".join(f"<td>{_f(r[j])}</td>" for j in JUDGES) + "</tr>")
        out.append("</table>")
    return "\n".join(out) + "</body></html>"


def sweep_markdown(outcomes: Sequence[VariantOutcome], ranking: SweepRanking, report: str) -> str:
    lines = ["| variant | status | attempts | what happened |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.attempts} | {'; '.join(o.history)} |" for o in outcomes]
    return "\n".join(["## Sweep", *lines, "", *ranking.reasons, "", f"Report: `{report}`"])
