"""The evaluation report: one self-contained HTML file (images as data URIs, no network), and its markdown summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bakery.craft.taste.evaluate import EpochEval, LossChoice, Recommendation, ValidationCurve
from bakery.craft.taste.reports import judges as judge_report  # effect vs seeds, Identity, bleed, Flexibility, Ranking
from bakery.craft.taste.reports.html import data_uri, esc, fig_png

SS_VALUE_MAX = 400  # characters of one ss_* value shown (ss_tag_frequency can be huge)


@dataclass
class ReportData:
    name: str
    base_model: str
    architecture: str
    triggers: list[str]
    recommendation: Recommendation
    evals: list[EpochEval]
    loss_means: dict[int, float]
    loss_choice: LossChoice
    grids: list[tuple[str, bytes]]  # (prompt, PNG bytes)
    likeness_method: str | None  # None: not measured
    likeness_note: str
    tag_stats: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> tag -> count
    buckets: list[tuple[tuple[int, int], int]] = field(default_factory=list)  # ((w, h), images)
    buckets_source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # ss_* / modelspec.* of the recommended file
    recommended_file: str = ""
    settings: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    validation: ValidationCurve | None = None  # the bake's validation loss per epoch
    trigger_check: list[dict] = field(default_factory=list)  # the latest trigger_checks row per trigger
    judges: object | None = None  # bakery/craft/taste/judges/panel.py Judged: Identity, Concept bleed, Flexibility, Ranking


def loss_plot(means: Mapping[int, float], chosen: int | None, title: str = "Loss per epoch",
              rule: str = "loss rule", ylabel: str = "mean loss") -> bytes | None:
    if not means:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = sorted(means)
    ax.plot(xs, [means[x] for x in xs], marker="o")
    if chosen is not None and chosen in means:
        ax.axvline(chosen, color="tab:green", linestyle="--", label=f"{rule}: epoch {chosen}")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_xticks(xs)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig_png(fig)


def bucket_plot(buckets: Sequence[tuple[tuple[int, int], int]]) -> bytes | None:
    if not buckets:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"{w}x{h}" for (w, h), _ in buckets]
    ax.bar(labels, [n for _, n in buckets], color="tab:orange")
    ax.set_ylabel("images")
    ax.set_title("Buckets")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return fig_png(fig)


def parse_bucket_info(meta: Mapping[str, str]) -> list[tuple[tuple[int, int], int]]:
    """kohya's `ss_bucket_info`: {"buckets": {"0": {"resolution": [w, h], "count": n}, ...}}."""
    raw = meta.get("ss_bucket_info")
    if not raw or raw == "None":
        return []
    try:
        info = json.loads(raw)
        rows = [((int(b["resolution"][0]), int(b["resolution"][1])), int(b["count"])) for b in info["buckets"].values()]
    except (ValueError, KeyError, TypeError, IndexError):
        return []
    return sorted(rows)


def parse_tag_frequency(meta: Mapping[str, str]) -> dict[str, dict[str, int]]:
    raw = meta.get("ss_tag_frequency")
    if not raw or raw == "None":
        return {}
    try:
        data = json.loads(raw)
        return {str(k): {str(t): int(n) for t, n in v.items()} for k, v in data.items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def metrics_rows(evals: Sequence[EpochEval], loss_means: Mapping[int, float]) -> list[dict[str, object]]:
    """One row per epoch x weight (what the catalog stores and the table artifact shows)."""
    rows = []
    for e in evals:
        for w in sorted(e.stats_by_weight):
            s = e.stats_by_weight[w]
            rows.append({
                "epoch": e.epoch, "weight": w, "loss": loss_means.get(e.epoch),
                "effect": round(e.effect_by_weight.get(w, 0.0), 4),
                "saturation": round(s.saturation, 4), "contrast": round(s.contrast, 4), "hf_energy": round(s.hf_energy, 4),
                "fry_score": round(e.fry_by_weight.get(w, 0.0), 4),
                "likeness": None if w not in e.likeness_by_weight else round(e.likeness_by_weight[w], 4),
            })
    return rows


CSS = (
    "body{font-family:sans-serif;margin:24px;max-width:1400px;color:#222}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}td.l,th.l{text-align:left}.flag{color:#a40000}.ok{color:#006400}"
    "img{max-width:100%}img.grid{min-width:min(100%,960px);image-rendering:pixelated}.rec{background:#eef7ee;padding:10px 16px;border-radius:6px}"
    "code{background:#f4f4f4;padding:1px 4px}"
)


def render_html(d: ReportData) -> str:
    """The self-contained report: one section after another, images inline."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Evaluation of {esc(d.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Evaluation of <code>{esc(d.name)}</code></h1>",
        f"<p>Base model <code>{esc(d.base_model)}</code> ({esc(d.architecture)}). Triggers: "
        + ", ".join(f"<code>{esc(t)}</code>" for t in d.triggers) + "</p>",
    ]
    for section in (_recommendation_html, _epochs_html, _judges_html, _grids_html, _metrics_html, _loss_html,
                    _validation_html, _dataset_html, _metadata_html, _settings_html, _trigger_check_html):
        out += section(d)
    out.append("</body></html>")
    return "\n".join(out)


def _recommendation_html(d: ReportData) -> list[str]:
    rec = d.recommendation
    out = ['<div class="rec"><h2>Recommendation</h2>']
    if rec.epoch is None:
        out.append('<p class="flag"><b>No epoch to recommend.</b></p>')
    else:
        out.append(f"<p><b>Epoch {rec.epoch}</b> at weight <b>{rec.weight_min:g}&ndash;{rec.weight_max:g}</b>"
                   + (f": <code>{esc(d.recommended_file)}</code>" if d.recommended_file else "") + "</p>")
    out.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in rec.reasons) + "</ul></div>")
    out.append("<h2>Flags</h2>")
    if rec.flags:
        out.append("<ul>" + "".join(f'<li class="flag">{esc(f)}</li>' for f in rec.flags) + "</ul>")
    else:
        out.append('<p class="ok">No epoch does nothing, none fries at weight &le; 0.5.</p>')
    return out


def _epochs_html(d: ReportData) -> list[str]:
    out = ["<h2>Epochs</h2><table><tr><th>epoch</th><th>mean loss</th><th>effect (w0 vs w1, /255)</th>"
           "<th>does nothing</th><th>fries at weight</th><th>over-trained</th>"
           f"<th>likeness at w1 ({esc(d.likeness_method or 'not measured')})</th></tr>"]
    for e in d.evals:
        out.append(
            f"<tr><td>{e.epoch}</td><td>{_fmt(d.loss_means.get(e.epoch), '.4g')}</td><td>{e.effect:.3g}</td>"
            f"<td>{'yes' if e.does_nothing else 'no'}</td><td>{_fmt(e.fries_at, 'g')}</td>"
            f"<td>{'yes' if e.over_trained else 'no'}</td><td>{_fmt(e.likeness_by_weight.get(1.0))}</td></tr>"
        )
    out.append("</table>")
    out.append(f"<p>Likeness: {esc(d.likeness_note)}</p>")
    return out


def _judges_html(d: ReportData) -> list[str]:
    return judge_report.sections(d.judges, d.evals) if d.judges is not None else []


def _grids_html(d: ReportData) -> list[str]:
    out = ["<h2>Grids</h2><p>Rows: epochs; columns: LoRA weights; seeds side by side.</p>"]
    for i, (prompt, png) in enumerate(d.grids, start=1):
        out.append(f"<h3>Prompt {i}: <code>{esc(prompt)}</code></h3>"
                   f'<img class="grid" alt="grid {i}: {esc(prompt)}" src="{data_uri(png)}">')
    return out


def _metrics_html(d: ReportData) -> list[str]:
    out = ["<h2>Metrics per epoch and weight</h2><table><tr>"]
    rows = metrics_rows(d.evals, d.loss_means)
    cols = list(rows[0]) if rows else []
    out.append("".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_fmt(r[c], 'g') if isinstance(r[c], float) or r[c] is None else esc(r[c])}</td>"
                                    for c in cols) + "</tr>")
    out.append("</table>")
    return out


def _loss_html(d: ReportData) -> list[str]:
    plot = loss_plot(d.loss_means, d.loss_choice.epoch)
    return ["<h2>Loss</h2>",
            f'<img alt="loss curve" src="{data_uri(plot)}">' if plot else "<p>No loss log for this bake.</p>",
            f"<p>{esc(d.loss_choice.reason)}</p>"]


def _validation_html(d: ReportData) -> list[str]:
    v = d.validation
    out = ["<h2>Validation loss</h2>"]
    if v is None:
        return out + ["<p>No validation loss for this bake (validation.enabled = false, or no validation "
                      "pictures).</p>"]
    what = (f"{v.n_pictures} held-out picture(s), never trained on" if v.held_out else
            f"{v.n_pictures} training picture(s), not held out: the set was too small to hold any out")
    plot = loss_plot(v.losses, v.epoch, "Validation loss per epoch", "validation minimum", "validation loss")
    out.append(f"<p>Denoising loss with fixed noise and timesteps (the same every epoch) on {esc(what)}.</p>")
    out.append(f'<img alt="validation loss curve" src="{data_uri(plot)}">' if plot else "")
    out.append("<table><tr><th>epoch</th><th>validation loss</th></tr>"
               + "".join(f"<tr><td>{e}</td><td>{l:.5g}</td></tr>" for e, l in sorted(v.losses.items())) + "</table>")
    return out + [f"<p>{esc(v.reason)}</p>"]


def _dataset_html(d: ReportData) -> list[str]:
    out = ["<h2>Dataset</h2>"]
    if d.tag_stats:
        for group, counts in d.tag_stats.items():
            top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:25]
            out.append(f"<h3>Tags of <code>{esc(group)}</code></h3><table><tr><th class='l'>tag</th><th>count</th></tr>"
                       + "".join(f"<tr><td class='l'>{esc(t)}</td><td>{n}</td></tr>" for t, n in top) + "</table>")
    else:
        out.append("<p>No tag statistics recorded for this bake.</p>")
    bplot = bucket_plot(d.buckets)
    if bplot:
        out.append(f"<h3>Buckets ({esc(d.buckets_source)})</h3><img alt='bucket histogram' src='{data_uri(bplot)}'>")
    else:
        out.append("<p>No bucket information recorded for this bake.</p>")
    return out


def _metadata_html(d: ReportData) -> list[str]:
    out = ["<h2>Metadata of the recommended file</h2>"]
    if not d.metadata:
        return out + ["<p>None.</p>"]
    out.append("<table><tr><th class='l'>key</th><th class='l'>value</th></tr>")
    for k in sorted(d.metadata):
        v = d.metadata[k]
        v = v if len(v) <= SS_VALUE_MAX else v[:SS_VALUE_MAX] + f"... ({len(v)} characters)"
        out.append(f"<tr><td class='l'><code>{esc(k)}</code></td><td class='l'>{esc(v)}</td></tr>")
    out.append("</table>")
    return out


def _settings_html(d: ReportData) -> list[str]:
    if not (d.settings or d.timings):
        return []
    out = ["<h2>Settings</h2><table>"]
    for k, v in {**d.settings, **{f"time: {k}": f"{v:.3g}" for k, v in d.timings.items()}}.items():
        out.append(f"<tr><td class='l'>{esc(k)}</td><td class='l'>{esc(v)}</td></tr>")
    out.append("</table>")
    return out


def _trigger_check_html(d: ReportData) -> list[str]:
    """Was each trigger free on the base model before training? (the trigger_check stage, rules.md §13)"""
    if not d.trigger_check:
        return []
    out = ["<h2>Trigger check</h2>", "<p>Each trigger rendered alone on the base model before the bake, "
           "against nonsense control words.</p>",
           '<table><tr><th class="l">trigger</th><th class="l">verdict</th><th class="l">drawn tags</th>'
           "<th>similarity</th><th>controls'</th></tr>"]
    for r in d.trigger_check:
        cls = "ok" if r["verdict"] == "free" else "flag"
        drawn = ", ".join(json.loads(r["drawn_tags"] or "[]")) or "-"
        out.append(f'<tr><td class="l"><code>{esc(r["trigger"])}</code></td><td class="l {cls}">{esc(r["verdict"])}</td>'
                   f'<td class="l">{esc(drawn)}</td><td>{_fmt(r["similarity"], ".2f")}</td>'
                   f'<td>{_fmt(r["control_similarity"], ".2f")}</td></tr>')
    return out + ["</table>"]


def markdown_summary(d: ReportData, report_path: str, grid_paths: Sequence[str]) -> str:
    rec = d.recommendation
    lines = [f"# Evaluation of `{d.name}`", ""]
    if rec.epoch is None:
        lines.append("**No epoch to recommend.**")
    else:
        lines.append(f"**Recommended: epoch {rec.epoch}, weight {rec.weight_min:g}–{rec.weight_max:g}** (`{d.recommended_file}`)")
    lines += ["", "Reasons:", *[f"- {r}" for r in rec.reasons], ""]
    if rec.flags:
        lines += ["Flags:", *[f"- ⚠ {f}" for f in rec.flags], ""]
    lines.append("| epoch | loss | effect | does nothing | fries at | likeness@1 |")
    lines.append("|---|---|---|---|---|---|")
    for e in d.evals:
        lines.append(f"| {e.epoch} | {_fmt(d.loss_means.get(e.epoch), '.4g')} | {e.effect:.3g} | "
                     f"{'yes' if e.does_nothing else 'no'} | {_fmt(e.fries_at, 'g')} | {_fmt(e.likeness_by_weight.get(1.0))} |")
    lines += ["", f"Report: `{report_path}`", "", "Grids:", *[f"- `{p}`" for p in grid_paths]]
    return "\n".join(lines) + "\n"
