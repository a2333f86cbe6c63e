"""Tasting a slider: strengths x saved steps x prompts x seeds, judged, and the save to use.

Rendering is evaluate's (bakery/craft/taste/xyz.py: each saved file loaded with diffusers' `load_lora_weights`,
its strength set in place, negative strengths included), the tagger is the judges' (judging.tag_images,
judges.recall_by_cell). The judges:

- *tags* (the recipe's `[autotag]` tagger): the recall of the positive tags must rise from the lowest to the
  highest strength, and the recall of the negative tags fall, each by more than `tag_margin`;
- *moves*: the extremes differ from strength 0 by at least `evaluate.effect_min` (mean |pixel difference|);
- *overcooked* (the guide): a save whose extremes moved less than `still_ratio` of their distance from
  strength 0 since the save before: "when the extremes stop changing, it is overcooked";
- *identity at strength 0*: the slider loaded at strength 0 draws what the base model draws (closer than
  `evaluate.effect_min`).

The pick is the earliest save whose extremes are already right by the tag judges, identity kept, not
overcooked. Without a tagger: the save just before the extremes stopped changing (the guide picked step 50
when step 100 looked the same), else the last save; it must move the picture and keep identity at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bakery.craft.taste import evaluate as E
from bakery.craft.taste import xyz
from bakery.craft.taste.judges import panel as judging
from bakery.craft.taste.judges import tags as J

SKIPPED = "SKIPPED: no tagger: set [autotag] model to a WD14 tagger folder to judge the positive and negative tags"


@dataclass
class SaveVerdict:
    step: int
    moves: float  # mean |pixel difference| of the extremes from strength 0
    change: float | None  # mean |pixel difference| of the extremes from the save before (None: the first save)
    identity: float  # mean |pixel difference| at strength 0 from the base model
    positive_rise: float | None = None  # recall at the highest strength - at the lowest (None: no tagger)
    negative_rise: float | None = None
    overcooked: bool = False
    right: bool = False  # the extremes are right (tags, else moves)
    identity_kept: bool = True


@dataclass
class SliderTasting:
    verdicts: list[SaveVerdict]
    pick: int | None  # the step of the save to use
    reasons: list[str]
    flags: list[str]
    grids: list[tuple[str, object]]  # (prompt, PIL image) per prompt: rows saves, columns strengths
    scores: list[dict] = field(default_factory=list)  # catalog evaluation_scores rows
    note: str = ""  # why a judge was skipped
    timings: xyz.Timings = field(default_factory=xyz.Timings)


def extremes(strengths: Sequence[float]) -> tuple[float, float]:
    ws = sorted(float(w) for w in strengths)
    return ws[0], ws[-1]


def mean_diff(images: Mapping[xyz.CellKey, np.ndarray], pairs: Sequence[tuple[xyz.CellKey, xyz.CellKey]]) -> float:
    return float(np.mean([E.mean_abs_diff(images[a], images[b]) for a, b in pairs])) if pairs else 0.0


def picture_judges(images: Mapping[xyz.CellKey, np.ndarray], base: Mapping[tuple[int, int], np.ndarray],
                   steps: Sequence[int], strengths: Sequence[float], n_prompts: int, seeds: Sequence[int],
                   still_ratio: float, effect_min: float) -> list[SaveVerdict]:
    """Moves, change since the save before, overcooked and identity at 0 for every save."""
    lo, hi = extremes(strengths)
    cells = [(p, s) for p in range(n_prompts) for s in seeds]
    out: list[SaveVerdict] = []
    for i, step in enumerate(steps):
        moves = mean_diff(images, [((step, w, p, s), (step, 0.0, p, s)) for w in (lo, hi) for p, s in cells])
        change = None if i == 0 else mean_diff(
            images, [((step, w, p, s), (steps[i - 1], w, p, s)) for w in (lo, hi) for p, s in cells])
        identity = float(np.mean([E.mean_abs_diff(images[(step, 0.0, p, s)], base[(p, s)]) for p, s in cells]))
        v = SaveVerdict(step, moves, change, identity, identity_kept=identity < max(effect_min, 1e-9))
        v.overcooked = change is not None and moves >= effect_min and change < still_ratio * moves
        v.right = moves >= effect_min
        out.append(v)
    return out


def tag_judges(verdicts: list[SaveVerdict], tags: Mapping[xyz.CellKey, set[str]], positive: Sequence[str],
               negative: Sequence[str], strengths: Sequence[float], n_prompts: int, margin: float) -> list[dict]:
    """Positive recall rising and negative falling with strength, per save; returns the score rows."""
    lo, hi = extremes(strengths)
    rows: list[dict] = []
    recalls = {}
    for judge, wanted in (("positive_recall", positive), ("negative_recall", negative)):
        recalls[judge] = by_cell = J.recall_by_cell(tags, range(n_prompts), list(wanted))
        rows += [{"epoch": e, "weight": w, "judge": judge, "subject": ", ".join(wanted), "score": v}
                 for (e, w), v in by_cell.items()]
    for v in verdicts:
        pos, neg = recalls["positive_recall"], recalls["negative_recall"]
        v.positive_rise = pos[(v.step, hi)] - pos[(v.step, lo)]
        v.negative_rise = neg[(v.step, hi)] - neg[(v.step, lo)]
        v.right = v.positive_rise > margin and v.negative_rise < -margin
    return rows


def pick_save(verdicts: Sequence[SaveVerdict], tagged: bool) -> tuple[int | None, list[str], list[str]]:
    """The save to use, why, and the flags.

    With the tag judges: the earliest save whose extremes are already right (tags), identity kept, not
    overcooked. Without: the save just before the first overcooked one (its extremes had already arrived;
    the guide's own example), else the last save (the extremes still change), if it moves the picture."""
    flags = [f"step {v.step}: overcooked: the extremes stopped changing since the save before "
             f"({v.change:.2f} vs {v.moves:.2f} from strength 0)" for v in verdicts if v.overcooked]
    flags += [f"step {v.step}: strength 0 differs from the base model ({v.identity:.2f})"
              for v in verdicts if not v.identity_kept]
    usable = [v for v in verdicts if v.right and v.identity_kept and not v.overcooked]
    if tagged:
        rule, chosen = "the earliest save where positive tags rise and negative tags fall with strength", usable[:1]
    else:
        cooked = next((i for i, v in enumerate(verdicts) if v.overcooked), None)
        before = verdicts[cooked - 1] if cooked else (verdicts[-1] if verdicts else None)
        rule = ("the save before the extremes stopped changing" if cooked else
                "the last save (the extremes still change: more steps may help)")
        chosen = [before] if before is not None and before in usable else []
    if not chosen:
        flags.append(f"no save passes ({rule}): more steps, a higher slider.learning_rate, or more telling "
                     "positive/negative prompts")
        return None, [f"rule: {rule}; no save passes"], flags
    return chosen[0].step, [f"step {chosen[0].step}: {rule} (changes the picture, not overcooked, "
                            "strength 0 = base)"], flags


def taste_slider(taster: xyz.Taster, files: Mapping[int, str], prompts: Sequence[str], strengths: Sequence[float],
                 params: object, slider: object, tagger: judging.TaggerSpec | None,
                 on_cells: Callable[[int], None] | None = None) -> SliderTasting:
    """Render the grid and the base model's renders, judge every save, pick one. `params`: EvaluateParams."""
    p, steps = params, sorted(files)
    ws = sorted({float(w) for w in strengths} | {0.0})
    grid = xyz.render_grid(taster, files, ws, prompts, p.seeds, p.negative_prompt, p.steps, p.cfg_scale, p.width,
                           p.height, on_cells=on_cells)
    base_imgs = taster.render(prompts, p.negative_prompt, p.seeds, p.steps, p.cfg_scale, p.width, p.height)
    cells = [(pi, s) for pi in range(len(prompts)) for s in p.seeds]
    base = dict(zip(cells, base_imgs))
    verdicts = picture_judges(grid.images, base, steps, ws, len(prompts), p.seeds, slider.still_ratio, p.effect_min)
    scores = [{"epoch": v.step, "weight": 0.0, "judge": judge, "subject": "", "score": value}
              for v in verdicts for judge, value in (("moves", v.moves), ("identity_diff", v.identity),
                                                     ("extreme_change", v.change)) if value is not None]
    note = ""
    if tagger is None:
        note = SKIPPED
    else:
        tags = judging.tag_images(tagger, grid.images)
        scores += tag_judges(verdicts, tags, slider.positive, slider.negative, ws, len(prompts), slider.tag_margin)
    pick, reasons, flags = pick_save(verdicts, tagger is not None)
    layouts = [(prompt, xyz.make_grid(grid.images, steps, ws, i, prompt, p.seeds, row_label="step",
                                            col_label="strength").image)
               for i, prompt in enumerate(prompts)]
    return SliderTasting(verdicts, pick, reasons, flags, layouts, scores, note, grid.timings)


def report_markdown(name: str, t: SliderTasting, files: Mapping[int, str]) -> str:
    """The tasting as markdown: the pick, the flags and one row per save."""
    lines = [f"# Slider {name}", "", f"**Pick:** step {t.pick} ({files[t.pick]})" if t.pick is not None
             else "**Pick:** none", ""]
    lines += [f"- {r}" for r in t.reasons] + [f"- FLAG {f}" for f in t.flags] + ([f"- {t.note}"] if t.note else [])
    lines += ["", "| step | moves | change | identity at 0 | positive rise | negative rise | right | overcooked |",
              "|---|---|---|---|---|---|---|---|"]
    for v in t.verdicts:
        fmt = [f"{x:.3f}" if x is not None else "-" for x in (v.moves, v.change, v.identity, v.positive_rise,
                                                              v.negative_rise)]
        lines.append(f"| {v.step} | " + " | ".join(fmt) + f" | {v.right} | {v.overcooked} |")
    return "\n".join(lines) + "\n"
