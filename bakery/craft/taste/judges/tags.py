"""Tag judges (rules.md §13): identity, concept bleed, flexibility, effect relative to seed variation.

Pure functions over tags already read from the renders (the tagger runs in `tasting`); no
model, no Prefect, no catalog. A *group* is a training folder with its triggers (the
concept's, then the outfit's); prune records, per group, the tags its triggers absorbed.

- identity: for each trigger, the recall of its identity tags (the tags its own group
  absorbed: hair and eye colour, hairstyle, outfit garments, character tags; never people
  counts) in the renders of the prompts that name that group, per epoch x weight. Weight 0
  (the base model) is the baseline.
- concept bleed: in the renders of an outfit trigger, the recall of the OTHER outfits'
  identity tags (those the outfit itself does not have). Rising over weight 0 by more than
  `bleed_max` is bleed (guide: "two outfits alike -> concept bleed").
- flexibility: prompts asking the character for something the training set does not show;
  the recall of the asked-for tags. A LoRA that ignores them is over-fit.
- effect ratio: the LoRA's change (weight 0 vs 1, same seed) over the change between seeds
  at weight 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bakery.craft.caption.prune import is_people_count
from bakery.craft.taste.evaluate import caption_tags, mean_abs_diff

Cell = tuple[int, float]  # (epoch, weight)
Key = tuple[int, float, int, int]  # (epoch, weight, prompt index, seed): xyz.CellKey

# Documented default flexibility prompts (README): something a character set rarely shows.
# `{trigger}` is each character trigger; the first prompt whose asked-for tags the trigger's
# training captions do not hold is used (one per character trigger).
FLEX_DEFAULTS = (
    "{trigger}, sitting, outdoors",
    "{trigger}, swimsuit, beach",
    "{trigger}, from_behind, night",
    "{trigger}, kimono, indoors",
)
REMEDIES_BLEED = ("give each outfit a Color_Item trigger (e.g. red_dress_white_apron)", "train a LoCon",
                  "use the Prodigy optimizer")


# -- what prune recorded ------------------------------------------------------------------------

def absorbed_tags(stats: Iterable[Mapping], triggers: Iterable[str] = ()) -> dict[str, list[str]]:
    """Per group, the tags prune removed (present before, absent after), minus people counts and triggers."""
    skip = set(triggers)
    before: dict[str, set[str]] = {}
    after: dict[str, set[str]] = {}
    for row in stats:
        side = before if row["phase"] == "before_prune" else after
        if row["count"] > 0:
            side.setdefault(row["concept"], set()).add(row["tag"])
    return {g: sorted(t for t in tags - after.get(g, set()) if t not in skip and not is_people_count(t))
            for g, tags in sorted(before.items())}


def group_triggers(captions: Iterable[tuple[str, str]], triggers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Per group (folder), the triggers every one of its captions holds, in caption order."""
    out: dict[str, list[str]] = {}
    for folder, caption in captions:
        tags = [t for t in caption_tags(caption) if t in triggers]
        out[folder] = [t for t in out[folder] if t in tags] if folder in out else tags
    return {g: tuple(t) for g, t in sorted(out.items()) if t}


def own_groups(groups: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Each trigger's own group: the one with the fewest triggers whose last trigger it is (a concept trigger
    whose pictures all sit in outfit groups has none: its outfits' triggers are judged)."""
    out: dict[str, str] = {}
    for g, head in sorted(groups.items(), key=lambda kv: (len(kv[1]), kv[0])):
        if head and head[-1] not in out:
            out[head[-1]] = g
    return out


def shared_identity(groups: Mapping[str, tuple[str, ...]], absorbed: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """A trigger without a group of its own (a character whose pictures all sit in outfit groups): the tags
    absorbed in every group holding it (hair, eyes: what the character trigger stands for in each outfit)."""
    own = own_groups(groups)
    out = {}
    for trig in sorted({t for h in groups.values() for t in h} - set(own)):
        held = [set(absorbed.get(g, [])) for g, h in groups.items() if trig in h]
        out[trig] = sorted(set.intersection(*held)) if held else []
    return out


def prompt_group(prompt: str, groups: Mapping[str, tuple[str, ...]]) -> str | None:
    """The most specific group whose triggers the prompt all names, else whose own (last) trigger it names
    (an outfit trigger prompted alone); None: none."""
    tags = set(caption_tags(prompt))
    named = [(len(h), g) for g, h in groups.items() if h and set(h) <= tags]
    named = named or [(len(h), g) for g, h in groups.items() if h and h[-1] in tags]
    return max(named)[1] if named else None


def outfit_groups(groups: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Groups with more than one trigger whose first trigger has other such groups: outfits of one character."""
    by_char: dict[str, list[str]] = {}
    for g, head in groups.items():
        if len(head) > 1:
            by_char.setdefault(head[0], []).append(g)
    return {c: sorted(gs) for c, gs in by_char.items() if len(gs) > 1}


# -- scores ---------------------------------------------------------------------------------

def recall(found: set[str], wanted: Sequence[str]) -> float:
    return sum(t in found for t in wanted) / len(wanted) if wanted else 0.0


def recall_by_cell(tags: Mapping[Key, set[str]], prompts: Iterable[int], wanted: Sequence[str]) -> dict[Cell, float]:
    """Mean recall of `wanted` over the renders of these prompts (all seeds), per (epoch, weight)."""
    chosen = set(prompts)
    acc: dict[Cell, list[float]] = {}
    for (e, w, p, _), found in tags.items():
        if p in chosen:
            acc.setdefault((e, w), []).append(recall(found, wanted))
    return {c: float(np.mean(v)) for c, v in sorted(acc.items())}


@dataclass
class TagScores:
    """One judge's scores: per subject (trigger or prompt), the tags looked for and the recall per cell."""

    wanted: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, dict[Cell, float]] = field(default_factory=dict)
    note: str = ""


def identity(tags: Mapping[Key, set[str]], prompts: Sequence[str], groups: Mapping[str, tuple[str, ...]],
             absorbed: Mapping[str, list[str]]) -> TagScores:
    """Per trigger: recall of its own group's absorbed tags in the renders of the prompts naming that group."""
    out = TagScores()
    by_prompt = {i: prompt_group(p, groups) for i, p in enumerate(prompts)}
    for trig, g in own_groups(groups).items():
        wanted, idx = absorbed.get(g, []), [i for i, pg in by_prompt.items() if pg == g]
        if wanted and idx:
            out.wanted[trig], out.scores[trig] = list(wanted), recall_by_cell(tags, idx, wanted)
    for trig, wanted in shared_identity(groups, absorbed).items():
        idx = [i for i, pg in by_prompt.items() if pg is None and trig in caption_tags(prompts[i])]
        if wanted and idx:
            out.wanted[trig], out.scores[trig] = wanted, recall_by_cell(tags, idx, wanted)
    if not out.scores:
        out.note = "no prompt names a group whose pruning absorbed tags"
    return out


def bleed(tags: Mapping[Key, set[str]], prompts: Sequence[str], groups: Mapping[str, tuple[str, ...]],
          absorbed: Mapping[str, list[str]]) -> TagScores:
    """Per outfit trigger: recall of its sibling outfits' identity tags (those it lacks) in its renders."""
    out = TagScores()
    by_prompt = {i: prompt_group(p, groups) for i, p in enumerate(prompts)}
    for siblings in outfit_groups(groups).values():
        for g in siblings:
            own = set(absorbed.get(g, []))
            foreign = sorted({t for o in siblings if o != g for t in absorbed.get(o, [])} - own)
            idx = [i for i, pg in by_prompt.items() if pg == g]
            if foreign and idx:
                trig = groups[g][-1]
                out.wanted[trig], out.scores[trig] = foreign, recall_by_cell(tags, idx, foreign)
    if not out.scores:
        out.note = "needs two or more outfits of one character, each with its own absorbed tags, in the prompts"
    return out


def flex_prompts(explicit: Sequence[str] | None, characters: Sequence[str],
                 shown: Mapping[str, set[str]]) -> list[str]:
    """The flexibility prompts: the recipe's (`{trigger}` expanded per character trigger), else one default each."""
    if explicit is not None:
        return list(dict.fromkeys(p.replace("{trigger}", c) for p in explicit for c in (characters if "{trigger}" in p else [""])))
    out = []
    for c in characters:
        for p in FLEX_DEFAULTS:
            if not set(asked_tags(p, ["{trigger}"])) & shown.get(c, set()):
                out.append(p.replace("{trigger}", c))
                break
    return out


def asked_tags(prompt: str, triggers: Iterable[str]) -> list[str]:
    skip = set(triggers)
    return [t for t in caption_tags(prompt) if t not in skip]


def flexibility(tags: Mapping[Key, set[str]], prompts: Sequence[str], triggers: Sequence[str]) -> TagScores:
    """Per flexibility prompt: recall of the tags it asks for."""
    out = TagScores()
    for i, p in enumerate(prompts):
        wanted = asked_tags(p, triggers)
        if wanted:
            out.wanted[p], out.scores[p] = wanted, recall_by_cell(tags, [i], wanted)
    if not out.scores:
        out.note = "no flexibility prompt (evaluate.flexibility_prompts = [])"
    return out


def mean_by_cell(judge: TagScores) -> dict[Cell, float]:
    cells = sorted({c for s in judge.scores.values() for c in s})
    return {c: float(np.mean([s[c] for s in judge.scores.values() if c in s])) for c in cells}


# -- effect relative to seed variation ------------------------------------------------------------

def seed_spread(base: Mapping[tuple[int, int], np.ndarray]) -> float | None:
    """Mean |pixel| difference between seeds of one prompt at weight 0 ((prompt, seed) -> image); None: one seed."""
    by_prompt: dict[int, list[np.ndarray]] = {}
    for (p, _), img in sorted(base.items()):
        by_prompt.setdefault(p, []).append(img)
    diffs = [mean_abs_diff(a, b) for imgs in by_prompt.values() for a, b in itertools.combinations(imgs, 2)]
    return float(np.mean(diffs)) if diffs else None


def effect_ratio(effect: float, spread: float | None) -> float | None:
    """None where seeds do not change the picture (nothing to compare with: the absolute rule alone decides)."""
    return effect / spread if spread is not None and spread > 1e-9 else None
