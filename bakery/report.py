"""Text and markdown views of a run's record (formatting; `upscale_line` also reads the upscale stage's list)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

UPSCALE_REPORT = "reports/upscale.md"
UPSCALE_LISTING = "reports/upscale.json"
FRAMING_REPORT = "reports/framing.md"
FRAMING_LISTING = "reports/framing.json"  # the crops stage's framing balance per concept and its crops
COMPOSITION_REPORT = "reports/composition.md"
COMPOSITION_LISTING = "reports/composition.json"  # the prune stage's composition per concept and the plan's notes
FRAMINGS = ("portrait", "upper_body", "cowboy_shot", "full_body")  # the upscale stage's list: every upscaled picture with its factor

# The picture account (bakery/account.py) reads across: in + split = out + skipped.
STAGE_COLUMNS = ("stage", "status", "n_in", "n_split", "n_out", "n_skipped", "n_lost", "n_processed", "duration_s")
HEADERS = ("stage", "status", "in", "+split", "out", "skipped", "account", "processed", "time")


SHORT = 300  # characters: one terminal line for an error, a note or a skip reason


def short_error(text: str, limit: int = SHORT) -> str:
    """`text` as one line of at most `limit` characters: whitespace runs (newlines too) become one space.

    A cut ends in "…": the caller says where the full text is (the run's log file).
    """
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: max(limit - 1, 0)].rstrip() + "…"


def name_list(names: Sequence[str], shown: int = 5, noun: str = "") -> str:
    """A count and the first `shown` names: name_list(pics, noun="picture") -> "12 pictures: a, b, c, d, e and 7 more"."""
    head = ", ".join(str(n) for n in names[:shown])
    rest = f" and {len(names) - shown} more" if len(names) > shown else ""
    if not noun:
        return head + rest
    count = f"{len(names)} {noun if len(names) == 1 else noun + 's'}"
    return f"{count}: {head}{rest}" if names else count


def _cell(col: str, value: Any) -> str:
    if value is None:
        return "-"
    if col == "duration_s":
        return f"{value:.2f}s"
    if col == "n_lost":
        return "ok" if value == 0 else f"{value} LOST"
    return str(value)


def stage_rows(stages: list[dict[str, Any]]) -> list[list[str]]:
    return [[_cell(c, s.get(c)) for c in STAGE_COLUMNS] for s in stages]


def text_table(stages: list[dict[str, Any]]) -> str:
    rows = [list(HEADERS), *stage_rows(stages)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _all_in(log: str | None) -> str:
    return f" (all in {log})" if log else ""


def skip_summary(skips: list[dict[str, Any]], limit: int = 20, log: str | None = None) -> list[str]:
    """One short line per skipped file (first `limit`), then how many more and where they all are (`log`)."""
    lines = [short_error(f"{s['stage']}: {s['subject']}: {s['reason']}") for s in skips[:limit]]
    if len(skips) > limit:
        lines.append(f"... and {len(skips) - limit} more{_all_in(log)}")
    return lines


def upscale_line(workdir: str | Path, stages: list[dict[str, Any]], names: int = 3) -> str | None:
    """How many pictures the run's upscale stage enlarged, the few enlarged most, and where the rest are."""
    path = Path(workdir) / UPSCALE_LISTING
    if not any(s["stage"] == "upscale" and s["status"] in ("ran", "cached") for s in stages) or not path.is_file():
        return None
    ups = json.loads(path.read_text(encoding="utf-8"))["upscaled"]
    ups.sort(key=lambda u: (-(u["factor"] or 0), u["name"]))
    if not ups:
        return None
    few = ", ".join(f"{u['name']} {u['factor'] or 0:.1f}x" for u in ups[:names])
    more = f", {len(ups) - names} more" if len(ups) > names else ""
    return f"upscaled {len(ups)} picture(s) ({few}{more}); each with its factor in {Path(workdir) / UPSCALE_REPORT}"


def framing_lines(workdir: str | Path, stages: list[dict[str, Any]]) -> list[str]:
    """The crops stage's framing balance, one line per concept: counts and shares, then its suggestions."""
    path = Path(workdir) / FRAMING_LISTING
    if not any(s["stage"] == "crops" and s["status"] in ("ran", "cached") for s in stages) or not path.is_file():
        return []
    listing = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for b in listing["balance"]:
        total = sum(b["counts"].get(f, 0) for f in FRAMINGS) or 1
        shares = ", ".join(f"{f} {b['counts'].get(f, 0)} ({100 * b['counts'].get(f, 0) / total:.0f}%)" for f in FRAMINGS)
        advice = "; ".join(b["suggestions"]) or "balanced (about 1:1:1:1)"
        lines.append(f"framing {b['concept']}: {shares}: {advice}")
    if listing["crops"]:
        lines.append(f"crops: {len(listing['crops'])} face crop(s) added; see {Path(workdir) / FRAMING_REPORT}")
    return lines


def warnings_by_stage(warnings: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """A run's warnings grouped by stage, stages in the order they first warned (the chain's)."""
    out: dict[str, list[str]] = {}
    for w in warnings:
        out.setdefault(w["stage"], []).append(w["message"])
    return out


def warning_counts(warnings: Sequence[dict[str, Any]]) -> str:
    """`prune 5, buckets 1`: how many warnings each stage gave."""
    return ", ".join(f"{stage} {len(msgs)}" for stage, msgs in warnings_by_stage(warnings).items())


def warning_lines(warnings: Sequence[dict[str, Any]], per_stage: int | None = 3, more: str = "") -> list[str]:
    """One short line per warning, the first `per_stage` of each stage (None: all), then how many more and
    where they all are (`more`)."""
    lines = []
    for stage, messages in warnings_by_stage(warnings).items():
        shown = messages if per_stage is None else messages[:per_stage]
        lines += [short_error(f"{stage}: {m}") for m in shown]
        if len(messages) > len(shown):
            lines.append(f"{stage}: ... and {len(messages) - len(shown)} more{f' ({more})' if more else ''}")
    return lines


def composition_lines(workdir: str | Path, stages: list[dict[str, Any]]) -> list[str]:
    """The prune stage's composition, one line per concept (and the run when several): source kinds in the
    guide's order, monochrome and retro shares; then what follows and the plan's notes."""
    path = Path(workdir) / COMPOSITION_LISTING
    if not any(s["stage"] == "prune" and s["status"] in ("ran", "cached") for s in stages) or not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for c in [*data["concepts"], data["total"]] if len(data["concepts"]) > 1 else data["concepts"]:
        total = c["pictures"] or 1
        kinds = ", ".join(f"{k} {n} ({100 * n / total:.0f}%)" for k, n in c["kinds"].items())
        lines.append(f"composition {c['concept']}: {kinds}; monochrome {c['monochrome_share']:.0%}, "
                     f"retro {c['retro_share']:.0%}")
    lines += list(data["notes"]) + [f"plan: {n}" for n in data.get("plan", [])]
    return lines + [f"see {Path(workdir) / COMPOSITION_REPORT}"]


def stage_notes(stages: list[dict[str, Any]]) -> list[str]:
    """Why a stage failed or was skipped (its catalog message), one short line each."""
    return [f"{s['stage']} {s['status']}: {short_error(s['message'])}" for s in stages if s.get("message")]


def markdown_summary(
    run: dict[str, Any], stages: list[dict[str, Any]], skips: list[dict[str, Any]], notes: list[str] = (),
    warnings: list[dict[str, Any]] = (), log: str | None = None, reasons: int = 20,
) -> str:
    """The run's stage table, its notes, its skips counted by reason (the `reasons` most common), its warnings."""
    out = [f"# Run `{run['run_id']}`: {run['status']}", "", f"Recipe: `{run['recipe_path']}`", ""]
    out.append("| " + " | ".join(HEADERS) + " |")
    out.append("|" + "---|" * len(HEADERS))
    out += ["| " + " | ".join(r) + " |" for r in stage_rows(stages)]
    if notes := [*stage_notes(stages), *notes]:
        out += ["", *(f"- {n}" for n in notes)]
    if skips:
        out += ["", f"## Skipped ({len(skips)})", ""]
        counted = Counter((s["stage"], short_error(s["reason"])) for s in skips).most_common()
        out += [f"- **{stage}** ×{n}: {reason}" for (stage, reason), n in counted[:reasons]]
        if len(counted) > reasons:
            out.append(f"- ... and {len(counted) - reasons} more reasons{_all_in(log)}")
    if warnings:
        out += ["", f"## Warnings ({len(warnings)}: {warning_counts(warnings)})", ""]
        for stage, messages in warnings_by_stage(warnings).items():
            out += [f"- **{stage}**: {short_error(m)}" for m in messages[:reasons]]
            if len(messages) > reasons:
                out.append(f"- **{stage}**: ... and {len(messages) - reasons} more (`bakery status RECIPE --warnings`)")
    return "\n".join(out) + "\n"
