"""What a training set is made of (rules.md §1, §3): source kinds, monochrome share, retro share.

Per concept and for the whole run. What follows from it, as the guide says:
- more than half the pictures monochrome/greyscale: `monochrome, greyscale` go into the negative prompt of the
  evaluation renders (else every render comes out grey);
- more than half of a concept's pictures in a retro style (`retro_artstyle`, `1980s_(style)`, `1990s_(style)`):
  the concept trains ~3x faster, so its folders' steps are cut to 1/3 (the same x1/3 as §8's old anime;
  `repeats.retro_cut = false` turns it off).
Pure: the prune task hands it each picture's source kinds and cleaned tags and writes the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bakery.recipe.gather import SOURCE_KINDS

MONOCHROME_TAGS = frozenset({"monochrome", "greyscale"})
RETRO_TAGS = frozenset({"retro_artstyle", "1980s_(style)", "1990s_(style)"})
MONOCHROME_NEGATIVES = ("monochrome", "greyscale")  # rules.md §3: over ~50 % monochrome
MAJORITY = 0.5  # "over ~50 %"
RETRO_CUT = 1 / 3  # retro pictures train ~3x faster (rules.md §3, §8's x1/3)


@dataclass(frozen=True)
class Pic:
    """One picture as the composition sees it."""

    name: str
    kinds: tuple[str, ...]  # its originals' source kinds
    tags: tuple[str, ...]  # its cleaned tags (before pruning)

    @property
    def kind(self) -> str:
        """Its best source kind in the guide's quality order (a picture found twice counts once, as its best)."""
        known = [k for k in self.kinds if k in SOURCE_KINDS]
        return min(known, key=SOURCE_KINDS.index) if known else "unknown"


@dataclass
class Share:
    """One concept's (or the run's) composition."""

    concept: str
    pictures: int
    kinds: dict[str, int]  # source kind -> pictures, in the guide's quality order
    monochrome: list[str]
    retro: list[str]

    @property
    def monochrome_share(self) -> float:
        return len(self.monochrome) / self.pictures if self.pictures else 0.0

    @property
    def retro_share(self) -> float:
        return len(self.retro) / self.pictures if self.pictures else 0.0

    def as_dict(self) -> dict:
        return {"concept": self.concept, "pictures": self.pictures, "kinds": self.kinds,
                "monochrome": len(self.monochrome), "monochrome_share": round(self.monochrome_share, 4),
                "retro": len(self.retro), "retro_share": round(self.retro_share, 4),
                "monochrome_pictures": self.monochrome, "retro_pictures": self.retro}


@dataclass
class Composition:
    concepts: list[Share]
    total: Share
    retro_cut: bool = True  # repeats.retro_cut: the x1/3 is applied to retro concepts
    negatives: list[str] = field(default_factory=list)  # added to the evaluation renders' negative prompt
    step_factors: dict[str, float] = field(default_factory=dict)  # concept -> step factor applied (retro)
    notes: list[str] = field(default_factory=list)  # what follows, said once each

    def as_dict(self) -> dict:
        return {"concepts": [s.as_dict() for s in self.concepts], "total": self.total.as_dict(),
                "negatives": self.negatives, "step_factors": self.step_factors, "retro_cut": self.retro_cut,
                "notes": self.notes}


def share(concept: str, pics: Sequence[Pic]) -> Share:
    counts = {k: 0 for k in SOURCE_KINDS}
    for p in pics:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    return Share(concept, len(pics), {k: n for k, n in counts.items() if n},
                 sorted(p.name for p in pics if MONOCHROME_TAGS & set(p.tags)),
                 sorted(p.name for p in pics if RETRO_TAGS & set(p.tags)))


def compose(by_concept: Mapping[str, Sequence[Pic]], retro_cut: bool = True) -> Composition:
    """Each concept's composition and the run's (a picture counted once), and what follows from them."""
    everyone = {p.name: p for pics in by_concept.values() for p in pics}
    comp = Composition([share(c, pics) for c, pics in by_concept.items()],
                       share("(all)", [everyone[n] for n in sorted(everyone)]), retro_cut)
    if comp.total.monochrome_share > MAJORITY:
        comp.negatives = list(MONOCHROME_NEGATIVES)
        comp.notes.append(f"{comp.total.monochrome_share:.0%} of the pictures are monochrome/greyscale (> 50%): "
                          f"'{', '.join(MONOCHROME_NEGATIVES)}' added to the evaluation renders' negative prompt")
    for s in comp.concepts:
        if s.retro_share <= MAJORITY:
            continue
        if retro_cut:
            comp.step_factors[s.concept] = RETRO_CUT
            comp.notes.append(f"{s.concept}: {s.retro_share:.0%} retro-style pictures (> 50%): they train ~3x "
                              "faster, steps cut to 1/3 (repeats.retro_cut = false keeps them)")
        else:
            comp.notes.append(f"{s.concept}: {s.retro_share:.0%} retro-style pictures (> 50%): the guide cuts their "
                              "steps to 1/3; kept as they are (repeats.retro_cut = false)")
    return comp


def markdown(comp: Composition) -> str:
    """reports/composition.md: one table of source kinds (the guide's quality order), the shares, what follows."""
    kinds = [k for k in SOURCE_KINDS if comp.total.kinds.get(k)]
    rows = comp.concepts + [comp.total]
    lines = ["# Composition", "",
             "Source kinds in the guide's quality order (best first, rules.md §1); monochrome and retro shares "
             "(rules.md §3).", "",
             "| concept | pictures | " + " | ".join(kinds) + " | monochrome | retro |",
             "|---|---:|" + "---:|" * len(kinds) + "---:|---:|"]
    for s in rows:
        cells = [str(s.kinds.get(k, 0)) for k in kinds]
        lines.append(f"| {s.concept} | {s.pictures} | " + " | ".join(cells)
                     + f" | {len(s.monochrome)} ({s.monochrome_share:.0%}) | {len(s.retro)} ({s.retro_share:.0%}) |")
    lines += ["", "## What follows", ""]
    lines += [f"- {n}" for n in comp.notes] or ["- nothing: under half monochrome, under half retro in every concept"]
    return "\n".join(lines) + "\n"
