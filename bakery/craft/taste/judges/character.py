"""The character judges of an evaluation: CCIP identity and corruption per render, and cyberharem's F-beta pick.

- Identity by CCIP (sdeval `CCIPMetrics.score(mode='seq')`, cyberharem `eval/eval.py`): a render's score is the
  share of the trigger's training pictures CCIP judges the same character (difference below the threshold); a
  cell's (epoch, weight) score is its renders' mean divided by the training set's own self-similarity (the share of
  its pictures the same character as their merged feature, imgutils ccip_merge), so 1.0 means "as alike to the set
  as the set is to itself". Per trigger: the renders of the prompts naming it against the pictures captioned with it
  (the evaluation's likeness references, `evaluate.likeness_references` per trigger).
- Corruption (sdeval `AICorruptMetrics`): 1 - the mean `corrupted` score of a cell's renders; a cell below
  `judges.corrupt_min` is not ranked (cyberharem filters steps so, its bar stepping from 1.0 down to 0.8).
- The F-beta pick (cyberharem `plt_metrics`), one documented choice beside ours (ranking.py): per epoch at weight
  1, CCIP identity and controllability (cyberharem's Bikini-Plus score; ours: the flexibility judge) each
  normalised over the epochs ((x - mean) / std x 0.2 + 0.6, clipped to (0, 1]), joined as
  F = (b^2 + 1) c p / (b^2 p + c) with b = `judges.fbeta` (3), among the epochs whose corruption score clears a
  bar stepped from 1.0 down to `corrupt_min` by 0.05 until 3 x `select` pass (select = epochs / 3, within 3-5);
  failing that, those clearing `corrupt_min` when 2 x select do, else the 2 x select best by corruption score (so,
  as in cyberharem, with under 6 epochs every epoch passes); the best F wins (ties: CCIP, corruption,
  controllability).

Without a CCIP model (`judges.ccip_model`) or a corruption model (`judges.corrupt_model`) the judge is skipped with
a note naming the key. One CCIP feature per picture and per render, cached by content hash (bakery/craft/deepghs.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bakery.craft import deepghs
from bakery.craft.taste.evaluate import Recommendation, caption_tags

SKIP_CCIP = ("SKIPPED: no CCIP model: set [judges] ccip_model (a deepghs/ccip_onnx model folder) to judge "
             "identity by CCIP")
SKIP_CORRUPT = ("SKIPPED: no corruption model: set [judges] corrupt_model (a deepghs/ai_image_corrupted model "
                "folder) to judge corruption")
Cell = tuple[int, float]


@dataclass(frozen=True)
class CharacterSpec:
    """The recipe's [judges] models for the renders (folders; "" = not set)."""

    ccip: str = ""
    corrupt: str = ""
    threshold: float | None = None
    corrupt_min: float = 0.8
    fbeta: float = 3.0
    pick: str = "ours"
    cache: str = ""  # the CCIP feature cache folder

    def load_ccip(self) -> deepghs.CCIP | None:
        if not self.ccip:
            return None
        return deepghs.CCIP(self.ccip, "judges.ccip_model", self.threshold, Path(self.cache) if self.cache else None)


@dataclass
class FBeta:
    epoch: int | None = None
    rows: list[dict] = field(default_factory=list)  # per epoch: ccip, controllability, aic, norms, f, passed
    note: str = ""


@dataclass
class CharacterScores:
    note: str = SKIP_CCIP
    corrupt_note: str = SKIP_CORRUPT
    model: str = ""
    threshold: float | None = None
    self_similarity: dict[str, float] = field(default_factory=dict)  # trigger -> the training set's
    identity: dict[str, dict[Cell, float]] = field(default_factory=dict)  # trigger -> cell -> normalised share
    corrupt: dict[Cell, float] = field(default_factory=dict)  # cell -> 1 - mean corrupted score
    fbeta: FBeta = field(default_factory=FBeta)
    features: int = 0  # CCIP features computed (not from the cache)

    def by_cell(self) -> dict[Cell, float]:
        """The mean over the triggers per cell (the ranking's `character` judge)."""
        cells: dict[Cell, list[float]] = {}
        for scores in self.identity.values():
            for c, v in scores.items():
                cells.setdefault(c, []).append(v)
        return {c: float(np.mean(v)) for c, v in sorted(cells.items())}

    def rows(self) -> list[dict]:
        return ([{"epoch": e, "weight": w, "judge": "character", "subject": t, "score": v}
                 for t, cells in self.identity.items() for (e, w), v in sorted(cells.items())]
                + [{"epoch": e, "weight": w, "judge": "corruption", "subject": "", "score": v}
                   for (e, w), v in sorted(self.corrupt.items())])


def self_similarity(model: deepghs.CCIP, feats: np.ndarray) -> float:
    """The share of a set's pictures CCIP judges the same character as the set's merged feature."""
    diffs = model.cross(deepghs.merge(feats)[None], feats)[0]
    return float((diffs <= model.threshold).mean())


def same_share(model: deepghs.CCIP, refs: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Per render: the share of the reference pictures judged the same character (sdeval's 'seq')."""
    return (model.cross(refs, feats) < model.threshold).mean(axis=0)


def identity(model: deepghs.CCIP, references: Mapping[str, Sequence[np.ndarray]],
             renders: Mapping[tuple, np.ndarray], prompts: Sequence[str]) -> CharacterScores:
    """Per trigger and cell (keys (epoch, weight, prompt index, seed)): the normalised CCIP identity."""
    out = CharacterScores(note="", model=Path(model.folder).name, threshold=model.threshold)
    keys = list(renders)
    feats = model.features([renders[k] for k in keys])
    for trig, pics in references.items():
        idx = [i for i, k in enumerate(keys) if trig in caption_tags(prompts[k[2]])]
        if not pics or not idx:
            continue
        refs = model.features(list(pics))
        upbound = self_similarity(model, refs)
        out.self_similarity[trig] = upbound
        share = same_share(model, refs, feats[idx])
        cells: dict[Cell, list[float]] = {}
        for i, s in zip(idx, share):
            cells.setdefault((int(keys[i][0]), float(keys[i][1])), []).append(float(s))
        out.identity[trig] = {c: float(np.mean(v)) / upbound if upbound else 0.0 for c, v in sorted(cells.items())}
    out.features = model.computed
    if not out.identity:
        out.note = "no prompt names a trigger with training pictures"
    return out


def corruption(folder: str, renders: Mapping[tuple, np.ndarray]) -> dict[Cell, float]:
    """Per cell: 1 - the mean `corrupted` score of its renders."""
    model = deepghs.Classifier(folder, "judges.corrupt_model")
    if "corrupted" not in model.labels:
        raise deepghs.ModelError(f"judges.corrupt_model = {folder!r}: meta.json has no `corrupted` label")
    keys = list(renders)
    cells: dict[Cell, list[float]] = {}
    for k, s in zip(keys, model.scores([renders[k] for k in keys])):
        cells.setdefault((int(k[0]), float(k[1])), []).append(s["corrupted"])
    return {c: 1.0 - float(np.mean(v)) for c, v in sorted(cells.items())}


def judge(spec: CharacterSpec | None, references: Mapping[str, Sequence[np.ndarray]],
          renders: Mapping[tuple, np.ndarray], prompts: Sequence[str]) -> CharacterScores:
    """CCIP identity and corruption over the grid's renders (no extra renders), or the skip notes."""
    spec = spec or CharacterSpec()
    model = spec.load_ccip()
    out = identity(model, references, renders, prompts) if model else CharacterScores()
    if spec.corrupt:
        out.corrupt, out.corrupt_note = corruption(spec.corrupt, renders), ""
    return out


def _norm(x: np.ndarray, std_min: float | None = None) -> np.ndarray:
    std = x.std() if std_min is None else max(x.std(), std_min)
    z = (x - x.mean()) / std if std > 0 else np.zeros_like(x)
    return np.clip(z * 0.2 + 0.6, 1e-6, 1.0)


def fbeta_pick(ccip: Mapping[int, float], control: Mapping[int, float], aic: Mapping[int, float], beta: float,
               min_aic: float = 0.8, interval: float = 0.05, select_n: int = 3) -> FBeta:
    """cyberharem's pick over epochs (scores at weight 1): the best F-beta among the epochs clearing the aic bar."""
    epochs = sorted(set(ccip) & set(control))
    if not epochs:
        return FBeta(note="not made: it needs CCIP identity and the flexibility judge (controllability) at weight 1")
    c = _norm(np.array([ccip[e] for e in epochs]))
    p = _norm(np.array([control[e] for e in epochs]), 0.015)
    f = (beta ** 2 + 1) * c * p / (beta ** 2 * p + c)
    a = np.array([aic.get(e, 1.0) for e in epochs])
    select = max(min(len(epochs) // 3, 5), 3)
    passed = _aic_pass(a, select, min_aic, interval, select_n)
    rows = [{"epoch": e, "ccip": ccip[e], "controllability": control[e], "aic": float(a[i]), "ccip_norm": float(c[i]),
             "control_norm": float(p[i]), "f": float(f[i]), "passed": bool(passed[i])} for i, e in enumerate(epochs)]
    best = max((r for r in rows if r["passed"]), key=lambda r: (r["f"], r["ccip"], r["aic"], r["controllability"]))
    return FBeta(best["epoch"], rows)


def _aic_pass(a: np.ndarray, select: int, min_aic: float, interval: float, select_n: int) -> np.ndarray:
    d = 1.0
    while (a >= d - 1e-9).sum() < select * select_n:
        d -= interval
        if d < min_aic - 1e-9:
            if (a >= min_aic).sum() >= select * (select_n - 1):
                return a >= min_aic
            top = np.argsort(-a, kind="stable")[:select * (select_n - 1)]
            return np.isin(np.arange(len(a)), top)
    return a >= d - 1e-9


def with_fbeta(rec: Recommendation, fb: FBeta, pick: str, beta: float) -> Recommendation:
    """The recommendation with the F-beta pick said beside it, where the two agree or not; followed when
    `judges.pick` = "fbeta" (at weight 1, where cyberharem renders)."""
    if fb.epoch is None:
        return rec
    head = f"F-beta pick (cyberharem, beta {beta:g}): epoch {fb.epoch}"
    if rec.epoch == fb.epoch:
        return Recommendation(rec.epoch, rec.weight_min, rec.weight_max, [*rec.reasons, f"{head}: the two picks agree"],
                              rec.flags)
    reason = (f"{head}; ours: epoch {rec.epoch}: the two picks disagree" if rec.epoch is not None
              else f"{head}; ours made no pick")
    if pick == "fbeta":
        return Recommendation(fb.epoch, 1.0, 1.0, [*rec.reasons, reason + " (judges.pick = fbeta: it is followed)"],
                              rec.flags)
    return Recommendation(rec.epoch, rec.weight_min, rec.weight_max, [*rec.reasons, reason], rec.flags)
