"""Tag statistics per group (rules.md §10): frequency, change since the last run, Venn overlap.

Rows are the catalog's `tag_stats`: {concept (the group), phase (before_prune |
after_prune), tag, count}. A trigger learns what is pruned in its images and
kept elsewhere: `overlap` lists, per pruned tag, where it is pruned and where
it is kept, and says which trigger absorbs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def _by(rows: Sequence[dict], phase: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["phase"] == phase:
            out.setdefault(r["concept"], {})[r["tag"]] = r["count"]
    return out


def frequency(rows: Sequence[dict], group: str | None = None, top: int = 40) -> list[dict]:
    """Per group: tag, count before and after pruning, most frequent first."""
    before, after = _by(rows, "before_prune"), _by(rows, "after_prune")
    out = []
    for g in sorted(set(before) | set(after)):
        if group and g != group:
            continue
        tags = set(before.get(g, {})) | set(after.get(g, {}))
        ranked = sorted(tags, key=lambda t: (-max(before.get(g, {}).get(t, 0), after.get(g, {}).get(t, 0)), t))
        for t in ranked[:top]:
            b, a = before.get(g, {}).get(t, 0), after.get(g, {}).get(t, 0)
            out.append({"group": g, "tag": t, "before": b, "after": a, "state": "pruned" if b and not a else ""})
    return out


@dataclass
class GroupDiff:
    group: str
    gained: dict[str, int] = field(default_factory=dict)  # tag -> count now (absent before)
    lost: dict[str, int] = field(default_factory=dict)  # tag -> count before (absent now)
    changed: dict[str, tuple[int, int]] = field(default_factory=dict)


def diff(previous: Sequence[dict], current: Sequence[dict], phase: str = "after_prune") -> list[GroupDiff]:
    """Tags gained or lost per group since the previous run (final captions by default)."""
    old, new = _by(previous, phase), _by(current, phase)
    out = []
    for g in sorted(set(old) | set(new)):
        o, n = old.get(g, {}), new.get(g, {})
        d = GroupDiff(g, {t: n[t] for t in sorted(set(n) - set(o))}, {t: o[t] for t in sorted(set(o) - set(n))},
                      {t: (o[t], n[t]) for t in sorted(set(o) & set(n)) if o[t] != n[t]})
        if d.gained or d.lost or d.changed:
            out.append(d)
    return out


@dataclass(frozen=True)
class Overlap:
    tag: str
    pruned_in: tuple[str, ...]
    kept_in: tuple[str, ...]

    @property
    def absorbed_by(self) -> str:
        if not self.kept_in:
            return "every group that has it: the shared trigger absorbs it"
        return "the triggers of " + ", ".join(self.pruned_in) + " (kept in " + ", ".join(self.kept_in) + ")"


def overlap(rows: Sequence[dict]) -> list[Overlap]:
    """Each tag pruned somewhere: the groups that prune it and the groups that keep it."""
    before, after = _by(rows, "before_prune"), _by(rows, "after_prune")
    tags = sorted({t for g in before for t in before[g]})
    out = []
    for t in tags:
        pruned = tuple(g for g in sorted(before) if before[g].get(t) and not after.get(g, {}).get(t))
        kept = tuple(g for g in sorted(before) if before[g].get(t) and after.get(g, {}).get(t))
        if pruned:
            out.append(Overlap(t, pruned, kept))
    return out


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text columns for the terminal."""
    if not rows:
        return "(no tags)"
    cols = list(rows[0])
    cells = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
