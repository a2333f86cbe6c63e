"""Ranking (epoch, weight) on the judges' scores (rules.md §13), saying which scores decided and when none can.

score(e, w) = mean(identity, character, flexibility) - bleed: identity, flexibility and bleed are tag recalls in
0-1, character the CCIP identity (judges/character.py: the share of renders judged the character, over the
training set's self-similarity); a judge that was not measured is left out. Only cells that are usable are
ranked: the epoch changes the picture (effect over seed variation), is not over-trained, the weight is below
the one that fries, and the renders clear the corruption bar (`judges.corrupt_min`) when a corruption model judged them.
Cells within `tolerance` of the best are tied: when the tie spans several epochs, the data
cannot decide the epoch, and the guide's rules (loss, then 0.5-0.75 of the epochs) choose
among the tied ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bakery.craft.taste import evaluate as craft

Cell = tuple[int, float]
JUDGES = ("identity", "character", "flexibility", "bleed")


@dataclass
class Ranking:
    rows: list[dict] = field(default_factory=list)  # every ranked cell, best first: epoch, weight, score, judges
    tied: list[Cell] = field(default_factory=list)  # cells within tolerance of the best
    decided: bool = False  # the scores alone pick the epoch
    reasons: list[str] = field(default_factory=list)


def cell_score(parts: Mapping[str, float | None]) -> float | None:
    gains = [parts[k] for k in ("identity", "character", "flexibility") if parts.get(k) is not None]
    if not gains:
        return None
    return sum(gains) / len(gains) - (parts.get("bleed") or 0.0)


def usable(ev: craft.EpochEval, weight: float) -> bool:
    return weight > 0 and not ev.does_nothing and (ev.fries_at is None or weight < ev.fries_at)


def rank(evals: Sequence[craft.EpochEval], judges: Mapping[str, Mapping[Cell, float]], tolerance: float,
         corrupt: Mapping[Cell, float] | None = None, corrupt_min: float = 0.0) -> Ranking:
    """Every usable (epoch, weight) with a score, best first; the tie with the best; which judges decided.
    `corrupt`: cell -> 1 - mean corrupted score; cells below `corrupt_min` are not ranked."""
    ok = [e for e in evals if not e.over_trained] or list(evals)
    rows = []
    for ev in ok:
        for w in sorted(ev.stats_by_weight):
            parts = {j: judges.get(j, {}).get((ev.epoch, w)) for j in JUDGES}
            score = cell_score(parts)
            clean = (corrupt or {}).get((ev.epoch, w), 1.0) >= corrupt_min
            if usable(ev, w) and clean and score is not None:
                rows.append({"epoch": ev.epoch, "weight": w, "score": score, **parts})
    rows.sort(key=lambda r: (-r["score"], -r["epoch"], r["weight"]))
    if not rows:
        return Ranking(reasons=["ranking: no usable (epoch, weight) has a judge's score: the guide's rules decide"])
    best = rows[0]["score"]
    tied = [(r["epoch"], r["weight"]) for r in rows if r["score"] >= best - tolerance]
    out = Ranking(rows, tied, len({e for e, _ in tied}) == 1)
    out.reasons = _why(rows, tied, tolerance)
    return out


def judges_text(r: Mapping) -> str:
    """Each measured judge of a ranked cell: "identity 0.50, bleed 0.10"."""
    return ", ".join(f"{j} {r[j]:.2f}" for j in JUDGES if r.get(j) is not None)


def _why(rows: list[dict], tied: list[Cell], tolerance: float) -> list[str]:
    top = rows[0]
    head = f"ranking: epoch {top['epoch']} at weight {top['weight']:g} scores best ({top['score']:.2f}: {judges_text(top)})"
    epochs = sorted({e for e, _ in tied})
    if len(epochs) > 1:
        return [head, f"the data cannot decide between epochs {', '.join(map(str, epochs))}: their scores lie within "
                      f"{tolerance:g} of the best"]
    other = next((r for r in rows if r["epoch"] != top["epoch"]), None)
    if other is None:
        return [head, "it is the only usable epoch"]
    gaps = {j: (top[j] - other[j]) * (-1 if j == "bleed" else 1) for j in JUDGES
            if top.get(j) is not None and other.get(j) is not None}
    decider = max(gaps, key=lambda j: gaps[j]) if gaps else "score"
    return [head, f"{decider} decided: the best of epoch {other['epoch']} (weight {other['weight']:g}) scores "
                  f"{other['score']:.2f} ({judges_text(other)})"]


def ranked_recommendation(rec: craft.Recommendation, ranking: Ranking, evals: Sequence[craft.EpochEval],
                          loss: craft.LossChoice, total_epochs: int, weights: Sequence[float],
                          method: str | None, validation: craft.ValidationCurve | None = None) -> craft.Recommendation:
    """The recommendation from the ranking: its epoch when it decides, else the other rules (validation loss,
    loss, the guide's) among the tied epochs."""
    if not ranking.rows or rec.epoch is None:
        return craft.Recommendation(rec.epoch, rec.weight_min, rec.weight_max, rec.reasons + ranking.reasons, rec.flags)
    epochs = sorted({e for e, _ in ranking.tied})
    if ranking.decided:
        epoch, reasons = epochs[0], list(ranking.reasons)
    else:
        sub = craft.recommend([e for e in evals if e.epoch in epochs], loss, total_epochs, weights, method, validation)
        epoch, reasons = sub.epoch, ranking.reasons + [f"among them: {r}" for r in sub.reasons]
    ws = [w for e, w in ranking.tied if e == epoch]
    reasons.append(f"weights {min(ws):g}-{max(ws):g} of epoch {epoch} score within the tolerance of the best")
    return craft.Recommendation(epoch, min(ws), max(ws), reasons, rec.flags)
