"""The judges in one call for tasting: extra renders, the recipe's tagger over every render, scores, ranking.

Renders it adds to the grid (README "Evaluate: what the judges cost"):
- effect relative to seed variation: with one seed, each grid prompt once more at weight 0 with the
  next seed (prompts renders); with two or more seeds, none.
- flexibility: epochs x weights x flexibility prompts, first seed only.
- identity and bleed: none (they tag the grid's own renders).
Without a tagger the tag judges are skipped with a note, and nothing is rendered for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bakery.craft.taste import evaluate as craft
from bakery.craft.taste import ranking as R
from bakery.craft.taste import xyz
from bakery.craft.taste.judges import character as C
from bakery.craft.taste.judges import face as F
from bakery.craft.taste.judges import tags as J

if TYPE_CHECKING:
    from bakery.recipe import EvaluateParams

SKIPPED = "SKIPPED: no tagger: set [autotag] model to a WD14 tagger folder to judge identity, bleed and flexibility"


@dataclass(frozen=True)
class TaggerSpec:
    """The recipe's `[autotag]` tagger, resolved to a folder."""

    folder: str
    general: float = 0.35
    character: float = 0.85


@dataclass
class JudgeSetup:
    """What the judges need besides the renders: the tagger and what prune recorded."""

    tagger: TaggerSpec | None = None
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> its triggers
    absorbed: dict[str, list[str]] | None = None  # group -> identity tags; None: prune recorded none
    shown: dict[str, set[str]] = field(default_factory=dict)  # character trigger -> tags its training set shows
    faces: F.FaceSpec | None = None  # the face detector ([crops]); None: the face judge is skipped
    face_training: list[np.ndarray] = field(default_factory=list)  # training images for the reference hair colour
    character: C.CharacterSpec | None = None  # the [judges] CCIP and corruption models; None: skipped
    references: dict[str, list[np.ndarray]] = field(default_factory=dict)  # trigger -> its training images


@dataclass
class Judged:
    tagger: str | None  # the tagger's folder name; None: tag judges skipped
    note: str  # why a judge was skipped ("" when all ran)
    identity: J.TagScores
    bleed: J.TagScores
    flexibility: J.TagScores
    seed_spread: float | None
    ranking: R.Ranking
    flags: list[str]
    flex_prompts: list[str]
    effect_min_ratio: float
    renders: dict[str, int]  # judge -> images it rendered
    faces: F.FaceScores = field(default_factory=F.FaceScores)  # share of renders with a face, hair colour
    character: C.CharacterScores = field(default_factory=C.CharacterScores)  # CCIP identity, corruption, F-beta

    def by_cell(self) -> dict[str, dict[tuple[int, float], float]]:
        out = {j: J.mean_by_cell(s) for j, s in
               (("identity", self.identity), ("flexibility", self.flexibility), ("bleed", self.bleed)) if s.scores}
        return out | ({"character": self.character.by_cell()} if self.character.identity else {})

    def score_rows(self, evals: Sequence[craft.EpochEval]) -> list[dict]:
        """Every score as catalog rows: epoch, weight, judge, subject (trigger or prompt), score."""
        rows = [{"epoch": e.epoch, "weight": 1.0, "judge": "effect_ratio", "subject": "", "score": e.effect_ratio}
                for e in evals if e.effect_ratio is not None]
        for name, s in (("identity", self.identity), ("bleed", self.bleed), ("flexibility", self.flexibility)):
            rows += [{"epoch": e, "weight": w, "judge": name, "subject": subj, "score": v}
                     for subj, cells in s.scores.items() for (e, w), v in cells.items()]
        rows += [{"epoch": r["epoch"], "weight": r["weight"], "judge": "rank_score", "subject": "", "score": r["score"]}
                 for r in self.ranking.rows]
        return rows + self.faces.rows() + self.character.rows()


def setup(tagger: TaggerSpec | None, captions: Sequence[tuple[str, str]], triggers: Sequence[str],
          stats: Sequence[Mapping] | None) -> JudgeSetup:
    """From the training captions ((folder, caption)) and prune's tag counts: groups, identity tags, what is shown."""
    groups = J.group_triggers(captions, triggers)
    absorbed = J.absorbed_tags(stats, triggers) if stats else None
    shown: dict[str, set[str]] = {}
    for folder, caption in captions:
        head = groups.get(folder, ())
        if head:
            shown.setdefault(head[0], set()).update(craft.caption_tags(caption), (absorbed or {}).get(folder, []))
    return JudgeSetup(tagger, groups, absorbed, shown)


def tag_images(spec: TaggerSpec, images: Mapping[tuple, np.ndarray], batch: int = 16) -> dict[tuple, set[str]]:
    """The tagger's general and character tags over each image."""
    from PIL import Image

    from bakery.craft.caption import wd14

    tagger = wd14.WD14Tagger(Path(spec.folder))
    keys = list(images)
    probs = tagger.predict([Image.fromarray(images[k]) for k in keys], batch_size=batch)
    th = wd14.Thresholds(spec.general, spec.character)
    return {k: {p.tag for p in wd14.select(row, tagger.tags, th)} for k, row in zip(keys, probs)}


def spread_of_seeds(taster: xyz.Taster, images: Mapping[xyz.CellKey, np.ndarray], prompts: Sequence[str],
                    params: EvaluateParams) -> tuple[float | None, int]:
    """The change between seeds at weight 0 (the base model), rendering one more seed when the grid has one."""
    first = min(k[0] for k in images)
    base = {(p, s): img for (e, w, p, s), img in images.items() if e == first and w == 0.0}
    added = 0
    if len(params.seeds) == 1:
        seed = int(params.seeds[0]) + 1
        taster.unload_lora()
        extra = taster.render(prompts, params.negative_prompt, [seed], params.steps, params.cfg_scale,
                              params.width, params.height)
        base.update({(i, seed): img for i, img in enumerate(extra)})
        added = len(extra)
    return J.seed_spread(base), added


def apply_effect_ratio(evals: Sequence[craft.EpochEval], spread: float | None, min_ratio: float) -> None:
    """Each epoch's effect over the seed spread; below `min_ratio` the LoRA does nothing (as below `effect_min`)."""
    for ev in evals:
        ev.effect_ratio = J.effect_ratio(ev.effect, spread)
        if ev.effect_ratio is not None:
            ev.does_nothing = ev.does_nothing or ev.effect_ratio < min_ratio


def flexibility_prompts(setup: JudgeSetup, triggers: Sequence[str], params: EvaluateParams) -> list[str]:
    """The prompts the flexibility judge asks to be rendered with the grid ([] without a tagger)."""
    if setup.tagger is None:
        return []
    characters = list(dict.fromkeys(h[0] for h in setup.groups.values())) or list(triggers[:1])
    return J.flex_prompts(params.flexibility_prompts, characters, setup.shown)


def judge(taster: xyz.Taster, grid: Mapping[xyz.CellKey, np.ndarray], flex_images: Mapping[xyz.CellKey, np.ndarray],
          prompts: Sequence[str], triggers: Sequence[str], evals: Sequence[craft.EpochEval], setup: JudgeSetup,
          params: EvaluateParams) -> Judged:
    """Effect ratio on `evals` (in place), the tag judges, the ranking and their flags.

    `flex_images`: the renders of `flexibility_prompts` (rendered with the grid, in its pipeline calls)."""
    spread, seed_renders = spread_of_seeds(taster, grid, prompts, params)
    apply_effect_ratio(evals, spread, params.effect_min_ratio)
    empty = J.TagScores()
    out = Judged(None, SKIPPED, empty, empty, empty, spread, R.Ranking(), [], [], params.effect_min_ratio,
                 {"effect": seed_renders, "flexibility": 0, "identity": 0, "bleed": 0})
    out.faces = judge_faces(setup, grid)
    out.character = C.judge(setup.character, setup.references, grid, prompts)
    if setup.tagger is not None:
        judge_tags(out, setup, grid, flex_images, prompts, triggers, params)
    spec = setup.character or C.CharacterSpec()
    if out.by_cell() or setup.tagger is not None:
        out.ranking = R.rank(evals, out.by_cell(), params.rank_tolerance, out.character.corrupt, spec.corrupt_min)
    out.character.fbeta = fbeta(out, spec)
    out.flags = judge_flags(out, evals, params.tag_margin) + F.flags(out.faces)
    return out


def fbeta(j: Judged, spec: C.CharacterSpec) -> C.FBeta:
    """cyberharem's pick over the epochs at weight 1: CCIP identity and flexibility (controllability)."""
    return C.fbeta_pick(_at_one(j.character.by_cell()), _at_one(J.mean_by_cell(j.flexibility)),
                        _at_one(j.character.corrupt), spec.fbeta, spec.corrupt_min)


def _at_one(cells: Mapping[tuple[int, float], float]) -> dict[int, float]:
    return {e: v for (e, w), v in cells.items() if w == 1.0}


def judge_tags(out: Judged, setup: JudgeSetup, grid: Mapping[xyz.CellKey, np.ndarray],
               flex_images: Mapping[xyz.CellKey, np.ndarray], prompts: Sequence[str], triggers: Sequence[str],
               params: EvaluateParams) -> None:
    """The tag judges (identity, bleed, flexibility) on `out`, from the recipe's tagger."""
    assert setup.tagger is not None
    out.flex_prompts = flexibility_prompts(setup, triggers, params)
    out.renders["flexibility"] = len(flex_images)
    tags = tag_images(setup.tagger, {**{("g", *k): v for k, v in grid.items()},
                                     **{("f", *k): v for k, v in flex_images.items()}})
    grid_tags = {k[1:]: v for k, v in tags.items() if k[0] == "g"}
    out.tagger, out.note = Path(setup.tagger.folder).name, ""
    if setup.absorbed is None:
        out.identity = out.bleed = J.TagScores(note="prune recorded no tag statistics for this training set")
    else:
        out.identity = J.identity(grid_tags, prompts, setup.groups, setup.absorbed)
        out.bleed = J.bleed(grid_tags, prompts, setup.groups, setup.absorbed)
    out.flexibility = J.flexibility({k[1:]: v for k, v in tags.items() if k[0] == "f"}, out.flex_prompts, triggers)


def judge_faces(setup: JudgeSetup, grid: Mapping[xyz.CellKey, np.ndarray]) -> F.FaceScores:
    """The face judge over the grid's renders (no extra renders), or its skip note without a detector."""
    if setup.faces is None:
        return F.FaceScores()
    model = setup.faces.load()
    reference = F.reference_hair(model, setup.face_training)
    return F.score({k: F.face_and_hair(model, img) for k, img in grid.items()}, reference,
                   setup.faces.key or setup.faces.kind)


def judge_flags(j: Judged, evals: Sequence[craft.EpochEval], margin: float) -> list[str]:
    """Bleed above weight 0 by more than `margin`; flexibility falling that far (over-fit); no identity learnt."""
    flags = []
    for name, s in (("bleed", j.bleed), ("flexibility", j.flexibility), ("identity", j.identity)):
        for subj, cells in s.scores.items():
            for ev in evals:
                base, full = cells.get((ev.epoch, 0.0)), cells.get((ev.epoch, 1.0))
                if base is None or full is None:
                    continue
                if name == "bleed" and full - base > margin:
                    flags.append(f"epoch {ev.epoch}: concept bleed: renders of {subj} show its sibling outfits' tags "
                                 f"({full:.2f} at weight 1 vs {base:.2f} at 0): " + "; ".join(J.REMEDIES_BLEED))
                elif name == "flexibility" and base - full > margin:
                    flags.append(f"epoch {ev.epoch}: over-fit: the prompt '{subj}' is obeyed less at weight 1 "
                                 f"({full:.2f}) than without the LoRA ({base:.2f}): the LoRA ignores its prompts")
                elif name == "identity" and not ev.does_nothing and full <= base:
                    flags.append(f"epoch {ev.epoch}: {subj}'s identity tags are found no more at weight 1 "
                                 f"({full:.2f}) than on the base model ({base:.2f}): the trigger has not learnt them")
    return flags
