"""Which pictures the validation loss is measured on (issue 14 item 6).

Held out: `per_group` pictures of every concept group (folder) of at least `min_group`
pictures, and at most `max_share` of the group: they are never trained on. When no group
is that big, holding pictures out would starve training, so the loss is measured on
`per_group` training pictures of each group instead, and labelled as such.

The choice is stable: pictures in the order of the sha256 of their content hash, so
adding a picture to a group does not reshuffle which others are held out. A picture in
two groups (duplicate_split) held out of one is held out of both.
Pure: no Prefect, no catalog, no torch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HoldOutSettings:
    enabled: bool = True
    per_group: int = 1
    min_group: int = 8
    max_share: float = 0.125


@dataclass(frozen=True)
class HoldOut:
    chosen: dict[str, list[str]]  # folder -> picture names the validation loss uses
    held_out: bool  # True: never trained on; False: training pictures, not held out

    @property
    def names(self) -> set[str]:
        return {n for names in self.chosen.values() for n in names}


def held_out_count(n_pictures: int, s: HoldOutSettings) -> int:
    """Pictures held out of a group of `n_pictures`: `per_group`, at most `max_share` of it, none below `min_group`."""
    if not s.enabled or n_pictures < s.min_group:
        return 0
    return min(s.per_group, math.floor(n_pictures * s.max_share + 1e-9))


def _order(names: Sequence[str], hashes: Mapping[str, str]) -> list[str]:
    return sorted(names, key=lambda n: (hashlib.sha256(f"holdout:{hashes[n]}".encode()).hexdigest(), n))


def choose(members: Mapping[str, Sequence[str]], hashes: Mapping[str, str], s: HoldOutSettings) -> HoldOut:
    """The validation pictures of each group (folder -> names), held out when the groups are big enough."""
    if not s.enabled:
        return HoldOut({}, True)
    chosen: dict[str, list[str]] = {}
    taken: set[str] = set()
    for folder, names in members.items():
        k = held_out_count(len(names), s) - len(taken.intersection(names))  # already out with another group
        picked = [n for n in _order(names, hashes) if n not in taken][:max(k, 0)]
        if picked:
            chosen[folder] = picked
            taken.update(picked)
    if chosen:
        return HoldOut(chosen, True)
    return HoldOut({f: _order(names, hashes)[:s.per_group] for f, names in members.items() if names}, False)


def note(h: HoldOut) -> str:
    """One line for the log and the report: how many pictures, from which groups, held out or not."""
    if not h.chosen:
        return "validation loss off"
    n = sum(len(v) for v in h.chosen.values())
    where = ", ".join(f"{f} ({len(v)})" for f, v in h.chosen.items())
    if h.held_out:
        return f"{n} picture(s) held out for the validation loss, never trained on: {where}"
    return f"validation loss on {n} training picture(s), not held out (no group is big enough to spare one): {where}"
