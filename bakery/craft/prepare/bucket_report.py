"""The buckets stage's report: images per bucket, detail lost, tiny buckets, a merge plan.

Built on bakery/craft/prepare/buckets.py (kohya's bucketing). Fewer buckets train
better (rules.md §7: 8-9, or 4-5): the merge plan folds the smallest bucket into
the used bucket with the nearest aspect ratio until at most `max_buckets` are
left; with `snap`, each image is then scaled to cover its merged bucket and
centre-cropped to it, so kohya puts it there unchanged.

A picture whose aspect ratio lies outside the buckets' range (4:1 to 1:4 at
512 px, sides 256-1024, step 64) still lands in the most extreme bucket: kohya
scales it to cover that bucket and its centre crop throws the rest away (a 15:1
panorama loses 73 %). The report flags each one with that crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bakery.craft.prepare.buckets import BucketChoice, Size, bucket_resolutions, downscale_factor, select_bucket


@dataclass(frozen=True)
class Placed:
    name: str
    size: Size
    choice: BucketChoice  # kohya's own choice
    final: BucketChoice  # after merging (== choice unless merged)

    @property
    def downscale(self) -> float:
        return downscale_factor(self.size[0], self.size[1], self.final)


def crop_share(choice: BucketChoice) -> float:
    """The share of the covered picture that the centre crop to the bucket throws away."""
    (rw, rh), (bw, bh) = choice.resized, choice.bucket
    return 1 - min(bw, rw) * min(bh, rh) / (rw * rh)


def aspect_range(resos: list[Size]) -> tuple[float, float]:
    """The narrowest and the widest aspect ratio (width / height) a bucket has."""
    aspects = [w / h for w, h in resos]
    return min(aspects), max(aspects)


@dataclass
class BucketReport:
    placed: list[Placed]
    counts: dict[Size, int]  # kohya's buckets, before merging
    merge: dict[Size, Size] = field(default_factory=dict)  # bucket -> bucket it merges into
    tiny: list[Size] = field(default_factory=list)
    worst: list[Placed] = field(default_factory=list)  # most detail lost first
    aspects: tuple[float, float] = (0.0, float("inf"))  # the buckets' aspect range
    out_of_range: list[Placed] = field(default_factory=list)  # aspect outside `aspects`: kohya crops them hard

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
    # no_upscale buckets follow the picture's own size: no range to fall out of.
    lo, hi = aspect_range(resos) if not no_upscale else (0.0, float("inf"))
    return BucketReport(
        placed=placed, counts=counts, merge=merge,
        tiny=[b for b, n in counts.items() if n <= tiny_bucket],
        worst=ranked[:worst], aspects=(lo, hi),
        out_of_range=sorted((p for p in placed if not lo <= p.size[0] / p.size[1] <= hi),
                            key=lambda p: (-crop_share(p.choice), p.name)),
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
    lines += _out_of_range_lines(rep)
    lines += ["## Most detail lost (downscale factor)", "", "| image | size | bucket | factor |", "|---|---|---|---:|"]
    for p in rep.worst:
        flag = " **crop a portrait?**" if p.downscale > max_downscale else ""
        lines.append(f"| {p.name} | {fmt(p.size)} | {fmt(p.final.bucket)} | {p.downscale:.2f}{flag} |")
    return "\n".join(lines) + "\n"


def _ratio(aspect: float) -> str:
    return f"{aspect:.3g}:1" if aspect >= 1 else f"1:{1 / aspect:.3g}"


def _out_of_range_lines(rep: BucketReport) -> list[str]:
    if not rep.out_of_range:
        return []
    lo, hi = rep.aspects
    lines = [f"## Aspect ratio out of range ({len(rep.out_of_range)}): buckets go from {_ratio(lo)} to {_ratio(hi)}",
             "", "kohya scales each to cover its bucket and centre-crops it; crop these yourself (or split a "
             "panorama) to choose what is kept.", "",
             "| image | size | aspect | bucket | scaled to | cropped away | after merge |", "|---|---|---:|---|---|---:|---:|"]
    for p in rep.out_of_range:
        merged = f"{crop_share(p.final):.1%} in {p.final.bucket[0]}x{p.final.bucket[1]}" if p.final != p.choice else ""
        lines.append(f"| {p.name} | {p.size[0]}x{p.size[1]} | {_ratio(p.size[0] / p.size[1])} | "
                     f"{p.choice.bucket[0]}x{p.choice.bucket[1]} | {p.choice.resized[0]}x{p.choice.resized[1]} | "
                     f"{crop_share(p.choice):.1%} | {merged} |")
    return lines + [""]
