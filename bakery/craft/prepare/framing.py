"""Framing: portrait / upper body / cowboy shot / full body from detections, face crops, the balance.

rules.md §7: a full-body picture downscaled to its bucket loses its face ("blurry faces: crop face
sub-images", §13); §8: about as many portraits as upper-body, mid-thigh (cowboy shot) and full-body
pictures, portraits (above the heart) to `misc`. The framing is read from how many head heights of the
figure the picture shows below the top of the face: the face's height is about one head, a figure is
about 7-8 heads tall (the chest ends near 2.5 heads, the waist near 3.5, mid-thigh near 5.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bakery.craft.prepare.buckets import bucket_resolutions, select_bucket
from bakery.craft.prepare.detect import Box, Detection
from bakery.report import FRAMINGS  # portrait, upper_body, cowboy_shot, full_body

NONE = "none"
# The caption tags that say a framing (Danbooru's); a crop's caption drops these and says its own.
FRAMING_TAGS = frozenset({"portrait", "upper_body", "cowboy_shot", "full_body", "close-up", "head_out_of_frame",
                          "lower_body", "feet_out_of_frame", "face"})
# Head heights shown below the top of the face, up to which a picture is this framing.
HEADS = {"portrait": 2.5, "upper_body": 4.0, "cowboy_shot": 6.0}
FACE_LABELS = ("face", "head")
BODY_LABELS = ("person", "halfbody")


def largest(detections: Sequence[Detection], labels: Sequence[str]) -> Detection | None:
    found = [d for d in detections if d.label in labels]
    return max(found, key=lambda d: ((d.box[2] - d.box[0]) * (d.box[3] - d.box[1]), d.score)) if found else None


def classify(detections: Sequence[Detection], size: tuple[int, int]) -> str:
    """The picture's framing: how many face heights of the figure it shows below the top of the face.

    The figure ends at the bottom of the person box that holds the face (a `person` detector), else at
    the picture's bottom edge. No face or head: `none`.
    """
    face = largest(detections, FACE_LABELS)
    if face is None:
        return NONE
    x0, y0, x1, y1 = face.box
    bottom = float(size[1])
    for body in sorted((d for d in detections if d.label == "person"), key=lambda d: -d.score):
        bx0, by0, bx1, by1 = body.box
        if bx0 <= (x0 + x1) / 2 <= bx1 and by0 <= (y0 + y1) / 2 <= by1:
            bottom = min(bottom, by1)
            break
    heads = (bottom - y0) / max(y1 - y0, 1e-6)
    return next((f for f in FRAMINGS[:-1] if heads <= HEADS[f]), "full_body")


def face_after_bucket(face: Box, size: tuple[int, int], resolution: int, min_side: int, max_side: int, step: int,
                      no_upscale: bool = False) -> float:
    """The face's height in pixels once kohya has scaled the picture to its bucket."""
    resos = bucket_resolutions(resolution, min_side, max_side, step)
    choice = select_bucket(size[0], size[1], resos, no_upscale=no_upscale, resolution=resolution, step=step)
    return (face[3] - face[1]) * choice.resized[1] / size[1]


def crop_box(face: Box, size: tuple[int, int], framing: str) -> tuple[int, int, int, int]:
    """A sub-picture around the face: `portrait` (head and shoulders, square) or `upper_body` (to the waist, 3:4).

    Its top is half a face above the face; it is clipped to the picture, sliding rather than shrinking.
    """
    fx0, fy0, fx1, fy1 = face
    fh, cx = fy1 - fy0, (fx0 + fx1) / 2
    height = fh * (HEADS[framing] + 0.5 if framing == "portrait" else HEADS[framing])
    width = height if framing == "portrait" else height * 3 / 4
    width, height = min(width, size[0]), min(height, size[1])
    left = min(max(cx - width / 2, 0.0), size[0] - width)
    top = min(max(fy0 - fh / 2, 0.0), size[1] - height)
    return round(left), round(top), round(left + width), round(top + height)


@dataclass(frozen=True)
class Looked:
    """One picture as the crops stage saw it."""

    name: str
    concept: str  # the concept whose paths take it ("" = none)
    size: tuple[int, int]
    detections: tuple[Detection, ...]
    framing: str


@dataclass(frozen=True)
class CropPlan:
    parent: str
    framing: str  # portrait | upper_body
    box: tuple[int, int, int, int]
    face_px: float  # the parent's face height after bucketing


@dataclass(frozen=True)
class CropRules:
    min_face_px: int  # a full-body face smaller than this after bucketing gets crops
    min_crop_side: int  # crops with a shorter side go unmade (too little to train on)
    resolution: int
    min_side: int
    max_side: int
    step: int
    no_upscale: bool = False


def plan_crops(pictures: Sequence[Looked], rules: CropRules) -> list[CropPlan]:
    """Portrait and upper-body crops of the full-body pictures whose face ends up under `min_face_px`.

    Never over-fills one framing: per concept, a crop of framing F is made only while F has fewer
    pictures than a quarter of the concept's pictures (1:1:1:1), smallest faces first.
    """
    wanted: list[tuple[float, str, Looked, Box]] = []
    for p in pictures:
        face = largest(p.detections, FACE_LABELS)
        if p.framing != "full_body" or face is None:
            continue
        px = face_after_bucket(face.box, p.size, rules.resolution, rules.min_side, rules.max_side, rules.step,
                               rules.no_upscale)
        if px < rules.min_face_px:
            wanted.append((px, p.name, p, face.box))
    counts = framing_counts(pictures)
    # A quarter of each concept's own pictures, rounded up (crops do not raise it).
    quotas = {c: -(-sum(have.values()) // len(FRAMINGS)) for c, have in counts.items()}
    plans = []
    for px, name, p, face in sorted(wanted, key=lambda w: (w[0], w[1])):
        have, quota = counts[p.concept], quotas[p.concept]
        for framing in ("portrait", "upper_body"):
            box = crop_box(face, p.size, framing)
            if have.get(framing, 0) >= quota or min(box[2] - box[0], box[3] - box[1]) < rules.min_crop_side:
                continue
            have[framing] = have.get(framing, 0) + 1
            plans.append(CropPlan(name, framing, box, round(px, 1)))
    return plans


def framing_counts(pictures: Sequence[Looked]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for p in pictures:
        c = counts.setdefault(p.concept, {})
        c[p.framing] = c.get(p.framing, 0) + 1
    return counts


def crop_tags(parent_tags: Sequence[str], framing: str) -> list[str]:
    """A crop's caption tags: its parent's, less every framing tag and what lies below the crop, plus its own."""
    from bakery.craft.caption.prune import is_footwear

    lower = {"feet", "barefoot", "legs", "thighs", "knees", "toes", "socks", "thighhighs", "kneehighs", "pantyhose"}
    if framing == "portrait":
        lower |= {"skirt", "pleated_skirt", "miniskirt", "shorts", "pants", "navel", "hips", "legwear"}
    kept = [t for t in parent_tags if t not in FRAMING_TAGS and not is_footwear(t) and t not in lower
            and not (framing == "portrait" and (t.endswith("_skirt") or t.endswith("_pants")))]
    return kept + [framing]


@dataclass
class Balance:
    """Counts and shares per framing of one concept, against the guide's 1:1:1:1."""

    concept: str
    counts: dict[str, int]
    suggestions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.get(f, 0) for f in FRAMINGS)

    def share(self, framing: str) -> float:
        return self.counts.get(framing, 0) / self.total if self.total else 0.0


def balance(pictures: Sequence[Looked], crops: Sequence[CropPlan], tolerance: float = 0.5) -> list[Balance]:
    """Per concept: pictures per framing (crops included) and what to add or drop for about 1:1:1:1.

    A framing is short when it has under (1 - tolerance) of the even share, over-full above (1 + tolerance).
    """
    concept_of = {p.name: p.concept for p in pictures}
    counts = framing_counts(pictures)
    for c in crops:
        have = counts.setdefault(concept_of[c.parent], {})
        have[c.framing] = have.get(c.framing, 0) + 1
    out = []
    for concept in sorted(counts):
        b = Balance(concept or "(no concept)", counts[concept])
        even = b.total / len(FRAMINGS)
        for f in FRAMINGS:
            n = b.counts.get(f, 0)
            if b.total and n < (1 - tolerance) * even:
                b.suggestions.append(f"{f}: {n} of {b.total}, add about {round(even) - n} ({_how_to_add(f)})")
            elif b.total and n > (1 + tolerance) * even:
                b.suggestions.append(f"{f}: {n} of {b.total}, over-full: drop or lower its repeats by about "
                                     f"{n - round(even)}" + (", or send portraits to misc ([crops] "
                                                             "portraits_to_misc = true)" if f == "portrait" else ""))
        if b.counts.get(NONE):
            b.suggestions.append(f"{b.counts[NONE]} picture(s) with no face found: check them or the detector")
        out.append(b)
    return out


def _how_to_add(framing: str) -> str:
    if framing in ("portrait", "upper_body"):
        return "crop them from high-resolution full-body pictures; lower [crops] min_face_px to crop more"
    return "gather more pictures at this distance"


def balance_markdown(balances: Sequence[Balance], crops: Sequence[CropPlan], min_face_px: int, detector: str) -> str:
    lines = ["# Framing balance (rules.md §7-§8: portrait : upper body : cowboy shot : full body about 1:1:1:1)", "",
             f"Detector: {detector}. {len(crops)} crop(s) added from full-body pictures whose face would be under "
             f"{min_face_px} px after bucketing.", "",
             "| concept | " + " | ".join(FRAMINGS) + " | none | suggestions |", "|---|" + "---:|" * 5 + "---|"]
    for b in balances:
        cells = [f"{b.counts.get(f, 0)} ({100 * b.share(f):.0f}%)" for f in FRAMINGS]
        lines.append(f"| {b.concept} | " + " | ".join(cells) + f" | {b.counts.get(NONE, 0)} | "
                     + ("; ".join(b.suggestions) or "balanced") + " |")
    if crops:
        lines += ["", "## Crops", "", "| crop of | framing | box (x0, y0, x1, y1) | face after bucketing |",
                  "|---|---|---|---:|"]
        lines += [f"| {c.parent} | {c.framing} | {c.box} | {c.face_px:g} px |" for c in crops]
    return "\n".join(lines) + "\n"


def hair_colour(pixels: "object", face: Box) -> tuple[int, int, int]:
    """The hair colour above a face: the median colour of the top fifth of its box (bangs and crown).

    `pixels` is an RGB numpy array (height, width, 3).
    """
    import numpy as np

    arr = np.asarray(pixels)
    x0, y0, x1, y1 = (int(round(v)) for v in face)
    band = arr[max(y0, 0):max(y0 + max((y1 - y0) // 5, 1), 1), max(x0, 0):max(x1, 1)]
    if band.size == 0:
        return (0, 0, 0)
    med = np.median(band.reshape(-1, band.shape[-1])[:, :3], axis=0)
    return int(med[0]), int(med[1]), int(med[2])


def fractions(box: Box, size: tuple[int, int]) -> list[float]:
    """A box in pixels as fractions of the picture (the buckets stage's keep-box shape)."""
    w, h = size
    return [round(box[0] / w, 6), round(box[1] / h, 6), round(box[2] / w, 6), round(box[3] / h, 6)]


def concept_of(name: str, concepts: Mapping[str, Sequence[str]]) -> str:
    """The first concept whose path globs take the picture ("" = none), as prune assigns them."""
    from bakery.craft.caption.prune import path_matches

    return next((c for c, paths in concepts.items() if path_matches(name, tuple(paths))), "")
