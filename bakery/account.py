"""Nothing vanishes: every picture a stage takes in comes out, or is a recorded skip.

The check follows identities, not only counts: each input picture (named as the
stage's skips name it) must be the origin of an output or the subject of a skip.
A picture may become several (the frames of a GIF, a crop beside its parent):
those extra outputs are counted as `split`, so that
in + split = out + skipped holds for a stage that loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bakery.craft.gather.names import collisions
from bakery.manifest import StageResult
from bakery.report import name_list


@dataclass(frozen=True)
class Account:
    n_in: int
    n_out: int
    n_skipped: int  # input pictures that did not go on, each with its reason
    n_split: int  # outputs beyond the first of one input (frames, crops, copies)
    lost: list[str] = field(default_factory=list)  # input pictures neither out nor skipped
    named_twice: list[str] = field(default_factory=list)  # output names two pictures share
    unknown: list[str] = field(default_factory=list)  # outputs that name no input as their origin

    @property
    def n_broken(self) -> int:
        """Pictures the account cannot follow: lost, sharing a name, or of unknown origin."""
        return len(self.lost) + len(self.named_twice) + len(self.unknown)

    @property
    def ok(self) -> bool:
        return self.n_broken == 0

    def problem(self, stage: str, shown: int = 5) -> str:
        """One line: what broke and a few names."""
        parts = []
        for what, names in (("lost", self.lost), ("named twice", self.named_twice),
                            ("of unknown origin", self.unknown)):
            if names:
                parts.append(f"{len(names)} picture(s) {what}: {name_list(names, shown)}")
        return (f"{stage} broke the picture account (in {self.n_in} + split {self.n_split} "
                f"!= out {self.n_out} + skipped {self.n_skipped}): " + "; ".join(parts))


def account(subjects: Sequence[str], result: StageResult) -> Account:
    """The account of one stage: `subjects` names its input pictures, `result` is what it returned."""
    inputs = set(subjects)
    origins = [result.origins.get(ref.name, ref.name) for ref in result.images]
    skipped = {s.subject for s in result.skips} & inputs
    out_of = set(origins)
    unknown = sorted(ref.name for ref, o in zip(result.images, origins) if o not in inputs)
    went_on = out_of & inputs
    return Account(
        n_in=len(inputs),
        n_out=len(result.images),
        n_skipped=len(skipped - went_on),
        n_split=len(origins) - len(out_of),
        lost=sorted(inputs - went_on - skipped),
        named_twice=collisions([ref.name for ref in result.images]),
        unknown=unknown,
    )
