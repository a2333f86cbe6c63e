"""The report's judge sections: effect relative to seed variation, Identity, Concept bleed, Flexibility, Ranking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bakery.craft.taste.evaluate import EpochEval
from bakery.craft.taste.judges.panel import Judged
from bakery.craft.taste.judges.tags import TagScores
from bakery.craft.taste.ranking import JUDGES
from bakery.craft.taste.reports.html import data_uri, esc, fig_png

Cell = tuple[int, float]


def sections(j: Judged, evals: Sequence[EpochEval]) -> list[str]:
    return (_effect_html(j, evals) + _tag_html("Identity", j, j.identity, IDENTITY_TEXT)
            + _tag_html("Concept bleed", j, j.bleed, BLEED_TEXT) + _tag_html("Flexibility", j, j.flexibility, FLEX_TEXT)
            + _ranking_html(j) + _faces_html(j) + _character_html(j) + _corruption_html(j) + _fbeta_html(j))


CHARACTER_TEXT = ("CCIP identity: per trigger and cell, the share of the trigger's training pictures CCIP judges the "
                  "same character as each render (difference below the threshold), averaged over the cell's renders "
                  "and divided by the training set's own self-similarity (cyberharem's normalisation); weight 0 (the "
                  "base model) is the baseline.")
CORRUPTION_TEXT = ("1 - the mean `corrupted` score of each cell's renders (sdeval's AI-corrupt score); cells below "
                   "judges.corrupt_min are not ranked.")


def _skipped(title: str, note: str) -> list[str]:
    return [f"<h2>{esc(title)}</h2>", f'<p class="flag">{esc(note)}</p>']


def _character_html(j: Judged) -> list[str]:
    c = j.character
    if not c.identity:
        return _skipped("Character (CCIP)", c.note)
    out = ["<h2>Character (CCIP)</h2>"]
    sims = ", ".join(f"<code>{esc(t)}</code> {v:.2f}" for t, v in c.self_similarity.items())
    out.append(f"<p>{esc(CHARACTER_TEXT)} Model <code>{esc(c.model)}</code>, threshold {c.threshold:.4g}; "
               f"self-similarity {sims}.</p>")
    for trig, cells in c.identity.items():
        out += [f"<h3><code>{esc(trig)}</code></h3>", *_cell_table(cells)]
    return out


def _corruption_html(j: Judged) -> list[str]:
    c = j.character
    if not c.corrupt:
        return _skipped("Corruption", c.corrupt_note)
    return ["<h2>Corruption</h2>", f"<p>{esc(CORRUPTION_TEXT)}</p>", *_cell_table(c.corrupt)]


def _fbeta_html(j: Judged) -> list[str]:
    fb, ours = j.character.fbeta, (j.ranking.rows[0]["epoch"] if j.ranking.rows else None)
    out = ["<h2>F-beta pick (cyberharem)</h2>"]
    if fb.epoch is None:
        return out + [f"<p>{esc(fb.note or 'not made')}.</p>"]
    verdict = ("the two picks agree" if ours == fb.epoch else
               f"the two picks disagree: our ranking's best is epoch {ours}" if ours is not None else
               "our ranking made no pick")
    out.append(f"<p>Per epoch at weight 1: CCIP identity and controllability (the flexibility judge) normalised over "
               f"the epochs and joined as an F-beta score, among the epochs clearing the corruption bar. Epoch "
               f"<b>{fb.epoch}</b>: {esc(verdict)}.</p><table><tr><th>epoch</th><th>CCIP</th><th>controllability</th>"
               "<th>corruption score</th><th>F</th><th>clears the bar</th></tr>")
    for r in fb.rows:
        out.append(f"<tr><td>{r['epoch']}</td><td>{r['ccip']:.2f}</td><td>{r['controllability']:.2f}</td>"
                   f"<td>{r['aic']:.2f}</td><td>{r['f']:.3f}</td><td>{'yes' if r['passed'] else 'no'}</td></tr>")
    return out + ["</table>"]


FACES_TEXT = ("Share of each cell's renders in which the face detector finds a face, and the mean distance (RGB, "
              "0-441) of the hair colour above it from the training set's median hair colour")


def _faces_html(j: Judged) -> list[str]:
    f = j.faces
    if not f.share:
        return _skipped("Faces", f.note)
    out = ["<h2>Faces</h2>"]
    ref = "none found" if f.reference_hair is None else "rgb" + str(tuple(f.reference_hair))
    out.append(f"<p>{esc(FACES_TEXT)} ({esc(ref)}). Detector <code>{esc(f.detector)}</code>."
               + (f" {esc(f.note)}." if f.note else "") + "</p><h3>share of renders with a face</h3>")
    out += _cell_table(f.share)
    if f.hair_distance:
        out += ["<h3>hair colour distance to the training set</h3>", *_cell_table(f.hair_distance)]
    return out


IDENTITY_TEXT = ("Recall of each trigger's identity tags (the tags its group absorbed in pruning) among the tagger's "
                 "tags of its renders; weight 0 (the base model) is the baseline.")
BLEED_TEXT = ("Recall of the OTHER outfits' identity tags in the renders of each outfit trigger: it should stay at "
              "its weight-0 level.")
FLEX_TEXT = ("Recall of the asked-for tags in prompts for something the training set does not show (first seed "
             "only). A LoRA that ignores them is over-fit, however high its identity.")


def _effect_html(j: Judged, evals: Sequence[EpochEval]) -> list[str]:
    out = ["<h2>Effect relative to seed variation</h2>"]
    if j.seed_spread is None:
        return out + ["<p>Not measured: the change between seeds needs images of two seeds.</p>"]
    out.append(f"<p>Change between seeds at weight 0: {j.seed_spread:.3g}/255"
               + (f" ({j.renders['effect']} extra base renders, next seed)" if j.renders.get("effect") else "")
               + f". An epoch whose effect is below {j.effect_min_ratio:g} of it does nothing.</p>")
    out.append("<table><tr><th>epoch</th><th>effect (w0 vs w1, /255)</th><th>effect / seed change</th>"
               "<th>does nothing</th></tr>")
    for e in evals:
        ratio = "-" if e.effect_ratio is None else f"{e.effect_ratio:.3g}"
        out.append(f"<tr><td>{e.epoch}</td><td>{e.effect:.3g}</td><td>{ratio}</td>"
                   f"<td>{'yes' if e.does_nothing else 'no'}</td></tr>")
    return out + ["</table>"]


def _tag_html(title: str, j: Judged, s: TagScores, text: str) -> list[str]:
    out = [f"<h2>{esc(title)}</h2>"]
    if j.tagger is None:
        return out + [f'<p class="flag">{esc(j.note)}</p>']
    if not s.scores:
        return out + [f"<p>Not measured: {esc(s.note)}.</p>"]
    out.append(f"<p>{esc(text)} Tagger <code>{esc(j.tagger)}</code>.</p>")
    plot = score_plot(title, s.scores)
    if plot:
        out.append(f'<img alt="{esc(title)} against epoch and weight" src="{data_uri(plot)}">')
    for subj, cells in s.scores.items():
        out.append(f"<h3><code>{esc(subj)}</code>: {', '.join(f'<code>{esc(t)}</code>' for t in s.wanted[subj])}</h3>")
        out += _cell_table(cells)
    return out


def _cell_table(cells: Mapping[Cell, float]) -> list[str]:
    epochs, weights = sorted({e for e, _ in cells}), sorted({w for _, w in cells})
    out = ["<table><tr><th>epoch \\ weight</th>" + "".join(f"<th>{w:g}</th>" for w in weights) + "</tr>"]
    for e in epochs:
        out.append(f"<tr><td>{e}</td>" + "".join(f"<td>{cells[(e, w)]:.2f}</td>" if (e, w) in cells else "<td>-</td>"
                                                 for w in weights) + "</tr>")
    return out + ["</table>"]


def _ranking_html(j: Judged) -> list[str]:
    out = ["<h2>Ranking</h2>"]
    if not j.ranking.rows:
        return out + [f"<p>{esc(r)}</p>" for r in j.ranking.reasons] + ([f"<p>{esc(j.note)}</p>"] if j.note else [])
    out.append("<p>score = mean(identity, character, flexibility) &minus; bleed, over usable cells (the epoch changes "
               "the picture, is not over-trained, the weight does not fry, the renders are not corrupted); each "
               "column is the judge that said it. " + " ".join(esc(r) for r in j.ranking.reasons)
               + "</p><table><tr><th>rank</th><th>epoch</th><th>weight</th><th>score</th>"
               + "".join(f"<th>{k}</th>" for k in JUDGES) + "</tr>")
    for i, r in enumerate(j.ranking.rows[:20], start=1):
        vals = "".join("<td>-</td>" if r[k] is None else f"<td>{r[k]:.2f}</td>" for k in JUDGES)
        out.append(f"<tr><td>{i}</td><td>{r['epoch']}</td><td>{r['weight']:g}</td><td>{r['score']:.2f}</td>{vals}</tr>")
    return out + ["</table>"]


def score_plot(title: str, scores: Mapping[str, Mapping[Cell, float]]) -> bytes | None:
    """One panel per subject: score against weight, one line per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = list(scores)[:4]
    fig, axes = plt.subplots(1, len(subjects), figsize=(4 * len(subjects), 3), squeeze=False)
    for ax, subj in zip(axes[0], subjects):
        cells = scores[subj]
        for e in sorted({e for e, _ in cells}):
            ws = sorted(w for ee, w in cells if ee == e)
            ax.plot(ws, [cells[(e, w)] for w in ws], marker="o", label=f"epoch {e}")
        ax.set_title(subj[:40], fontsize=9)
        ax.set_xlabel("LoRA weight")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{title} (recall)")
    axes[0][-1].legend(fontsize=8)
    return fig_png(fig)
