"""Dataset screening by deepghs's models (bakery/craft/deepghs.py; recipe [judges]), beside screen.py's by tags.

- Another character (`judges.screen_other_character`): each one-character concept's pictures are clustered by
  CCIP (imgutils' "dbscan" parameters: eps = the model's threshold, min_samples 2; hand-written here over the
  difference matrix, as scikit-learn is not a dependency); the largest cluster is the character (waifuc's
  CCIPAction keeps the cluster holding most pictures). A picture CCIP judges the same character as fewer than half
  of that cluster's pictures (waifuc's cmp_threshold 0.5) is not the character, or holds several: its decision
  records its mean difference to the cluster and the cluster's typical pictures (the three nearest its centre).
- Several characters (`judges.screen_several_characters`): in a one-character concept, a picture in which the
  framing stage's head detector (`[crops] head_model`, else `person_model`) found more than one head counts as
  several characters, as waifuc's HeadCountAction(1) drops it; with a CCIP model, the head crops are judged too
  (the same character when their difference is at most the threshold) and only more than one distinct character
  counts, so a reference sheet of the character passes. Its decision records the heads, the characters and the
  crops' differences. No detector: the check is skipped with a note naming the keys.
- Kinds (rules.md §1, §3): monochrome (monochrome_detect's `monochrome`), rough sketches (anime_completeness's
  `rough`), 3D and comic panels (anime_classification's `3d`, `comic`), each at `judges.classifier_threshold`;
  low aesthetic (anime_aesthetic: its percentile, or score / 6 without samples.npz, below `judges.aesthetic_min`).

Each finding is a decision (the catalog's `caption_decisions`, rule `judge:<kind>`) with its score: "skip" (a
recorded skip, trained again by `bakery edit RECIPE keep PICTURE`), "flag" or "off", per kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bakery.craft import deepghs
from bakery.craft.caption.screen import Finding

KINDS = ("other_character", "several_characters", "monochrome", "rough", "3d", "comic", "low_aesthetic")
SCORED = KINDS[2:]  # the classifiers' kinds
LABELS = {"monochrome": "monochrome", "rough": "rough", "3d": "3d", "comic": "comic"}  # kind -> the model's label
GUIDE = {"other_character": "rules.md §1: the concept's character",
         "several_characters": "one character per picture, as waifuc's HeadCountAction(1)",
         "monochrome": "rules.md §3: monochrome share",
         "rough": "rules.md §1: rough sketch", "3d": "rules.md §1: 3D art ranks low",
         "comic": "rules.md §1: comic panels", "low_aesthetic": "rules.md §1: quality"}
TYPICAL = 3


@dataclass(frozen=True)
class JudgeSettings:
    actions: Mapping[str, str] = field(default_factory=lambda: {k: "flag" for k in KINDS})
    classifier_threshold: float = 0.5
    aesthetic_min: float = 0.1


@dataclass
class Judgements:
    """What the models said of the pictures, by hash (the task runs the models; this module only decides)."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> kind -> score
    ccip_hashes: list[str] = field(default_factory=list)  # the rows/columns of `ccip_diff`
    ccip_diff: np.ndarray | None = None  # CCIP differences between the pictures
    ccip_threshold: float = 0.0
    notes: list[str] = field(default_factory=list)  # checks skipped, with the keys that would run them
    heads: dict[str, int] = field(default_factory=dict)  # hash -> heads the detector found (absent: not counted)
    head_diff: dict[str, np.ndarray] = field(default_factory=dict)  # hash -> CCIP differences between its heads


# recipe key ([judges] <name>_model) -> (kind, the model's label) it scores
CLASSIFIERS = {"monochrome": (("monochrome", "monochrome"),), "completeness": (("rough", "rough"),),
               "kind": (("3d", "3d"), ("comic", "comic"))}


def judge_pictures(models: Mapping[str, str | None], hashes: Sequence[str], pictures: Sequence[deepghs.Picture],
                   ccip_threshold: float | None, cache: Path | None) -> Judgements:
    """Run the set models over the pictures (`models`: ccip, monochrome, completeness, kind, aesthetic -> folder)."""
    out = Judgements(scores={h: {} for h in hashes})
    if models.get("ccip"):
        ccip = deepghs.CCIP(models["ccip"], "judges.ccip_model", ccip_threshold, cache)
        out.ccip_hashes, out.ccip_threshold = list(hashes), ccip.threshold
        out.ccip_diff = ccip.differences(ccip.features(pictures))
    for name, kinds in CLASSIFIERS.items():
        if models.get(name):
            rows = deepghs.Classifier(models[name], f"judges.{name}_model").scores(pictures)
            for h, row in zip(hashes, rows):
                out.scores[h].update({kind: row[label] for kind, label in kinds if label in row})
    if models.get("aesthetic"):
        rows = deepghs.Classifier(models["aesthetic"], "judges.aesthetic_model").scores(pictures)
        percentile = deepghs.aesthetic_percentile(Path(models["aesthetic"])) or (lambda s: s / 6)
        for h, row in zip(hashes, rows):
            out.scores[h]["low_aesthetic"] = percentile(deepghs.aesthetic_score(row))
    return out


def judge_heads(out: Judgements, heads: Mapping[str, tuple[int, Sequence[deepghs.Picture]]], ccip: str | None,
                ccip_threshold: float | None, cache: Path | None) -> None:
    """Record each picture's head count and, with a CCIP model, the differences between its head crops."""
    out.heads = {h: n for h, (n, _) in heads.items()}
    if not ccip:
        return
    model = deepghs.CCIP(ccip, "judges.ccip_model", ccip_threshold, cache)
    out.ccip_threshold = model.threshold
    for h, (_, crops) in heads.items():
        if len(crops) > 1:
            out.head_diff[h] = model.differences(model.features(crops))


def dbscan(diff: np.ndarray, eps: float, min_samples: int = 2) -> list[int]:
    """Cluster labels over a difference matrix (-1: noise), as scikit-learn's DBSCAN (metric precomputed)."""
    n = len(diff)
    near = [np.flatnonzero(diff[i] <= eps) for i in range(n)]  # includes the picture itself, as sklearn counts
    core = [len(nb) >= min_samples for nb in near]
    labels, current = [-1] * n, -1
    for i in range(n):
        if labels[i] != -1 or not core[i]:
            continue
        current += 1
        labels[i], todo = current, [i]
        while todo:
            j = todo.pop()
            if not core[j]:
                continue
            for k in near[j]:
                if labels[k] == -1:
                    labels[k] = current
                    todo.append(int(k))
    return labels


def character_cluster(diff: np.ndarray, threshold: float) -> list[int]:
    """The indices of the largest CCIP cluster ([] when none forms)."""
    labels = dbscan(diff, threshold, 2)
    counts = {lab: labels.count(lab) for lab in set(labels) if lab != -1}
    if not counts:
        return []
    best = max(counts, key=lambda lab: (counts[lab], -labels.index(lab)))
    return [i for i, lab in enumerate(labels) if lab == best]


def other_characters(hashes: Sequence[str], j: Judgements) -> dict[str, tuple[float, list[str]]]:
    """Of one concept's pictures: hash -> (mean difference to the character's cluster, its typical pictures) for
    each picture CCIP judges not the character."""
    pos = {h: i for i, h in enumerate(j.ccip_hashes)}
    hs = [h for h in dict.fromkeys(hashes) if h in pos]
    if len(hs) < 2 or j.ccip_diff is None:
        return {}
    sub = j.ccip_diff[np.ix_([pos[h] for h in hs], [pos[h] for h in hs])]
    cluster = character_cluster(sub, j.ccip_threshold)
    if not cluster:
        return {}
    centre = sub[np.ix_(cluster, cluster)].mean(axis=1)
    typical = [hs[cluster[i]] for i in np.argsort(centre, kind="stable")[:TYPICAL]]
    out = {}
    for i, h in enumerate(hs):
        others = [c for c in cluster if c != i]
        if not others:
            continue
        same = float((sub[i, others] <= j.ccip_threshold).mean())
        if same < 0.5:
            out[h] = (float(sub[i, others].mean()), typical)
    return out


def distinct_characters(diff: np.ndarray, threshold: float) -> int:
    """How many characters CCIP sees among a picture's head crops: groups linked by differences within the
    threshold (one character's heads are alike, pairwise or through another)."""
    labels = list(range(len(diff)))
    for a in range(len(diff)):
        for b in range(a + 1, len(diff)):
            if diff[a, b] <= threshold and labels[a] != labels[b]:
                old, new = labels[b], labels[a]
                labels = [new if lab == old else lab for lab in labels]
    return len(set(labels))


def several_characters(j: Judgements, h: str, action: str) -> Finding | None:
    """The finding of a picture holding several characters (None: one, not counted, or the check off)."""
    heads = j.heads.get(h, 0)
    if action == "off" or heads < 2:
        return None
    tags = [f"heads {heads}"]
    diff = j.head_diff.get(h)
    if diff is not None:
        characters = distinct_characters(diff, j.ccip_threshold)
        if characters < 2:
            return None  # the same character several times (a reference sheet)
        pairs = [f"{diff[a, b]:.3f}" for a in range(len(diff)) for b in range(a + 1, len(diff))]
        tags += [f"characters {characters}", f"differences {' '.join(pairs)} (threshold {j.ccip_threshold:.3f})"]
    return Finding("several_characters", action, tuple(tags))


def kind_findings(scores: Mapping[str, float], settings: JudgeSettings) -> list[Finding]:
    """The classifier kinds one picture's scores call for (action not off)."""
    out = []
    for kind in SCORED:
        action = settings.actions.get(kind, "off")
        if action == "off" or kind not in scores:
            continue
        s = scores[kind]
        hit = s < settings.aesthetic_min if kind == "low_aesthetic" else s >= settings.classifier_threshold
        if hit:
            out.append(Finding(kind, action, (f"{'aesthetic' if kind == 'low_aesthetic' else kind} {s:.2f}",)))
    return out


def findings(folders: Mapping[str, Sequence[tuple[str, str]]], one_character: Mapping[str, bool], j: Judgements,
             settings: JudgeSettings) -> dict[str, list[Finding]]:
    """Picture name -> what the models say of it. `folders`: folder -> its (name, hash) pictures;
    `one_character`: whether a folder is one character's (the CCIP and head checks run only there)."""
    out: dict[str, list[Finding]] = {}
    names_of: dict[str, str] = {}
    for folder, pics in folders.items():
        for name, h in pics:
            names_of[name] = h
        if not one_character.get(folder):
            continue
        for name, h in pics:
            if f := several_characters(j, h, settings.actions.get("several_characters", "off")):
                out.setdefault(name, []).append(f)
        by_hash, action = {h: n for n, h in pics}, settings.actions.get("other_character", "off")
        if action == "off":
            continue
        for h, (d, typical) in other_characters([h for _, h in pics], j).items():
            tags = (f"difference {d:.3f} (threshold {j.ccip_threshold:.3f})", *(f"typical:{t}" for t in typical))
            out.setdefault(by_hash[h], []).append(Finding("other_character", action, tags))
    for name, h in sorted(names_of.items()):
        out.setdefault(name, []).extend(kind_findings(j.scores.get(h, {}), settings))
    return {n: f for n, f in out.items() if f}


def reason(f: Finding) -> str:
    shown = ", ".join(t for t in f.tags if not t.startswith("typical:"))
    return f"screened out: {f.kind.replace('_', ' ')} ({shown}; {GUIDE[f.kind]})"
