"""Is a trigger free? (rules.md §10, §13): render it on the base model before training.

"If it renders noise/varied images it is free; if it renders something consistent
it will contaminate." Each trigger is rendered alone over several seeds, and so are
a few random nonsense strings (the controls: what the base model draws for a word
it does not know). Consistency is measured with the recipe's judges only:

- the tagger: a tag the tagger finds in at least `threshold` of a trigger's renders,
  and in under half that share of the controls' renders, is a tag the base model
  draws for the trigger;
- an image embedding (when one is configured): the mean pairwise cosine of the
  trigger's renders against the controls' mean; more than `embedding_margin` above
  it is a consistent picture;
- CCIP (`[judges] ccip_model`, bakery/craft/deepghs.py): the share of the trigger's render pairs CCIP judges
  the same character; at least half, where the controls' share stays under half, means the base model already
  draws one character for it.

Pure functions: the renders, tags and embeddings come in, verdicts go out.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

FREE, CONTAMINATED = "free", "contaminated"
FIXES = ("concatenate it into one unusual word (BulmaDBZ), use an unusual spelling, or for an outfit build it "
         "as Color_Item (Color1_Item1_Color2_Item2) to borrow useful contamination (rules.md §10)")
_CONSONANTS, _VOWELS = "bcdfghjklmnpqrstvwxz", "aeiouy"


@dataclass(frozen=True)
class Verdict:
    trigger: str
    verdict: str  # FREE | CONTAMINATED
    drawn_tags: list[str]  # tags the base model draws for it (most frequent first)
    tag_shares: dict[str, float] = field(default_factory=dict)  # share of its renders each tag appears in
    similarity: float | None = None  # mean pairwise cosine of its renders (None: no embedding model)
    control_similarity: float | None = None
    ccip_same: float | None = None  # share of its render pairs CCIP judges the same character (None: no CCIP)
    control_ccip_same: float | None = None

    @property
    def note(self) -> str:
        """One line: what was found, and the guide's fixes when it is contaminated."""
        if self.verdict == FREE:
            return f"{self.trigger}: free"
        what = []
        if self.drawn_tags:
            what.append(", ".join(self.drawn_tags))
        if self.similarity is not None and self.control_similarity is not None and not self.drawn_tags:
            what.append(f"a consistent picture (similarity {self.similarity:.2f} vs controls' "
                        f"{self.control_similarity:.2f})")
        if self.one_character:
            what.append(f"one character by CCIP ({self.ccip_same:.0%} of its render pairs the same character vs "
                        f"the controls' {self.control_ccip_same:.0%})")
        return f"{self.trigger}: contaminated: the base model draws {' and '.join(what)} for it; {FIXES}"


    @property
    def one_character(self) -> bool:
        return (self.ccip_same is not None and self.control_ccip_same is not None
                and self.ccip_same >= CCIP_SHARE > self.control_ccip_same)


CCIP_SHARE = 0.5  # waifuc's cmp_threshold: half the pictures judged the same character


def same_pair_share(diff: np.ndarray, threshold: float) -> float:
    """The share of distinct pairs a CCIP difference matrix judges the same character (0.0 under two renders)."""
    n = len(diff)
    if n < 2:
        return 0.0
    return float(((diff <= threshold).sum() - n) / (n * (n - 1)))


def control_words(n: int, seed: int) -> list[str]:
    """`n` pronounceable nonsense words (e.g. "vokuzepa"), the same for the same seed."""
    rng = random.Random(seed)
    return ["".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(4)) for _ in range(n)]


def tag_shares(tag_lists: Sequence[Sequence[str]]) -> dict[str, float]:
    """Share of the renders each tag appears in (a tag counts once per render)."""
    if not tag_lists:
        return {}
    counts: dict[str, int] = {}
    for tags in tag_lists:
        for tag in set(tags):
            counts[tag] = counts.get(tag, 0) + 1
    return {t: c / len(tag_lists) for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def drawn_tags(trigger_tags: Sequence[Sequence[str]], control_tags: Sequence[Sequence[str]], threshold: float) -> list[str]:
    """Tags in >= `threshold` of the trigger's renders and in < threshold/2 of the controls' renders."""
    controls = tag_shares(control_tags)
    return [t for t, s in tag_shares(trigger_tags).items() if s >= threshold and controls.get(t, 0.0) < threshold / 2]


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over every pair of rows (1.0 for fewer than two rows)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) < 2:
        return 1.0
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = e @ e.T
    n = len(e)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def judge(
    triggers: Sequence[str],
    tags: Mapping[str, Sequence[Sequence[str]]] | None,
    embeddings: Mapping[str, np.ndarray] | None,
    controls: Sequence[str],
    threshold: float,
    embedding_margin: float,
    ccip: Mapping[str, float] | None = None,
) -> list[Verdict]:
    """A verdict per trigger from its renders' tags, embeddings and/or CCIP same-pair shares (keyed by prompt,
    controls included)."""
    control_tags = [t for c in controls for t in tags[c]] if tags else []
    control_sim = (float(np.mean([mean_pairwise_cosine(embeddings[c]) for c in controls]))
                   if embeddings and controls else None)
    out = []
    for trig in triggers:
        drawn = drawn_tags(tags[trig], control_tags, threshold) if tags else []
        sim = mean_pairwise_cosine(embeddings[trig]) if embeddings else None
        consistent = sim is not None and control_sim is not None and sim - control_sim > embedding_margin
        v = Verdict(trig, FREE, drawn, dict(tag_shares(tags[trig])) if tags else {}, sim, control_sim,
                    ccip[trig] if ccip else None, float(np.mean([ccip[c] for c in controls])) if ccip else None)
        out.append(replace(v, verdict=CONTAMINATED) if drawn or consistent or v.one_character else v)
    return out


def markdown(verdicts: Sequence[Verdict], controls: Sequence[str], seeds: Sequence[int], judges: Sequence[str]) -> str:
    """The Prefect artifact / summary section "Trigger check"."""
    lines = ["# Trigger check", "",
             f"Each trigger rendered alone on the base model over seeds {', '.join(map(str, seeds))}, against "
             f"the controls {', '.join(f'`{c}`' for c in controls)}; judged by {' and '.join(judges)}.", "",
             "| trigger | verdict | drawn tags | similarity (controls) | CCIP same pairs (controls) |",
             "|---|---|---|---|---|"]
    for v in verdicts:
        sim = f"{v.similarity:.2f} ({v.control_similarity:.2f})" if v.similarity is not None else "-"
        same = f"{v.ccip_same:.2f} ({v.control_ccip_same:.2f})" if v.ccip_same is not None else "-"
        lines.append(f"| `{v.trigger}` | {v.verdict} | {', '.join(v.drawn_tags) or '-'} | {sim} | {same} |")
    bad = [v for v in verdicts if v.verdict == CONTAMINATED]
    if bad:
        lines += ["", "Fixes: " + FIXES + "."]
    return "\n".join(lines) + "\n"
