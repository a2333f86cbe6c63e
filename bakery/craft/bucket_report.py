"""The buckets stage's report: images per bucket, detail lost, tiny buckets, a merge plan.

Built on bakery/craft/buckets.py (kohya's bucketing). Fewer buckets train
better (rules.md §7: 8-9, or 4-5): the merge plan folds the smallest bucket into
the used bucket with the nearest aspect ratio until at most `max_buckets` are
left; with `snap`, each image is then scaled to cover its merged bucket and
centre-cropped to it, so kohya puts it there unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bakery.craft.buckets import BucketChoice, Size, bucket_resolutions, downscale_factor, select_bucket


@dataclass(frozen=True)
class Placed:
    name: str
    size: Size
    choice: BucketChoice  # kohya's own choice
    final: BucketChoice  # after merging (== choice unless merged)

    @property
    def downscale(self) -> float:
        return downscale_factor(self.size[0], self.size[1], self.final)


@dataclass
class BucketReport:
    placed: list[Placed]
    counts: dict[Size, int]  # kohya's buckets, before merging
    merge: dict[Size, Size] = field(default_factory=dict)  # bucket -> bucket it merges into
    tiny: list[Size] = field(default_factory=list)
    worst: list[Placed] = field(default_factory=list)  # most detail lost first

    @property
    def merged_counts(self) -> dict[Size, int]:
        out: dict[Size, int] = {}
        for p in self.placed:
            out[p.final.bucket] = out.get(p.final.bucket, 0) + 1
        return dict(sorted(out.items()))


def cover(width: int, height: int, bucket: Size) -> BucketChoice:
    """Scale to cover `bucket` (rounding half up, like kohya), then centre-crop."""
    scale = max(bucket[0] / width, bucket[1] / height)
    resized = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
    return BucketChoice(bucket, resized)


def _log_aspect(s: Size) -> float:
    return math.log(s[0] / s[1])


def merge_plan(counts: dict[Size, int], max_buckets: int) -> dict[Size, Size]:
    """Fold the least used bucket into the nearest-aspect one until <= max_buckets remain."""
    alive = dict(counts)
    into: dict[Size, Size] = {}
    while len(alive) > max_buckets:
        smallest = min(alive, key=lambda b: (alive[b], abs(_log_aspect(b)), b))
        target = min((b for b in alive if b != smallest),
                     key=lambda b: (abs(_log_aspect(b) - _log_aspect(smallest)), -alive[b], b))
        alive[target] += alive.pop(smallest)
        into[smallest] = target
        for k, v in into.items():
            if v == smallest:
                into[k] = target
    return into


def bucket_report(
    sizes: dict[str, Size], resolution: int, min_side: int = 256, max_side: int = 1024, step: int = 64,
    max_buckets: int = 9, no_upscale: bool = False, tiny_bucket: int = 2, worst: int = 10,
) -> BucketReport:
    resos = bucket_resolutions(resolution, min_side, max_side, step)
    choices = {n: select_bucket(w, h, resos, no_upscale=no_upscale, resolution=resolution, step=step)
               for n, (w, h) in sorted(sizes.items())}
    counts: dict[Size, int] = {}
    for c in choices.values():
        counts[c.bucket] = counts.get(c.bucket, 0) + 1
    counts = dict(sorted(counts.items()))
    merge = merge_plan(counts, max_buckets)
    placed = []
    for name, c in choices.items():
        w, h = sizes[name]
        final = cover(w, h, merge[c.bucket]) if c.bucket in merge else c
        placed.append(Placed(name, (w, h), c, final))
    ranked = sorted(placed, key=lambda p: (-p.downscale, p.name))
    return BucketReport(
        placed=placed, counts=counts, merge=merge,
        tiny=[b for b, n in counts.items() if n <= tiny_bucket],
        worst=ranked[:worst],
    )


def report_markdown(rep: BucketReport, max_downscale: float, snapped: bool) -> str:
    def fmt(s: Size) -> str:
        return f"{s[0]}x{s[1]}"

    lines = ["# Buckets", "", f"{len(rep.placed)} images in {len(rep.counts)} buckets.", "",
             "| bucket | images | aspect | tiny | merges into |", "|---|---:|---:|---|---|"]
    for b, n in rep.counts.items():
        lines.append(f"| {fmt(b)} | {n} | {b[0] / b[1]:.2f} | {'yes' if b in rep.tiny else ''} | "
                     f"{fmt(rep.merge[b]) if b in rep.merge else ''} |")
    lines += ["", f"Recommendation: {len(rep.merged_counts)} buckets after merging"
              + (" (applied: images snapped to them)." if snapped else " (set `buckets.snap = true` to apply)."), ""]
    if rep.merge:
        lines += ["| merged bucket | images |", "|---|---:|"]
        lines += [f"| {fmt(b)} | {n} |" for b, n in rep.merged_counts.items()]
        lines.append("")
    lines += ["## Most detail lost (downscale factor)", "", "| image | size | bucket | factor |", "|---|---|---|---:|"]
    for p in rep.worst:
        flag = " **crop a portrait?**" if p.downscale > max_downscale else ""
        lines.append(f"| {p.name} | {fmt(p.size)} | {fmt(p.final.bucket)} | {p.downscale:.2f}{flag} |")
    return "\n".join(lines) + "\n"
