"""Dedupe: collapse identical pictures to one image (rules.md §2).

Exact duplicates share decoded pixels (the same picture saved as PNG and BMP,
say). Files with identical bytes never get this far: the content store keeps
them once and records every source.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bakery.manifest import ImageRef

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


def exact_duplicates(
    images: list[ImageRef], pixel_hashes: Mapping[str, str | None]
) -> tuple[list[ImageRef], list[tuple[ImageRef, ImageRef]]]:
    """(kept, [(dropped, kept_instead)]). The first image by name in each group is kept."""
    first_by_pixels: dict[str, ImageRef] = {}
    kept: list[ImageRef] = []
    dropped: list[tuple[ImageRef, ImageRef]] = []
    for ref in sorted(images):
        key = pixel_hashes.get(ref.hash)
        if key is None:  # unknown pixels: never merged
            kept.append(ref)
        elif key in first_by_pixels:
            dropped.append((ref, first_by_pixels[key]))
        else:
            first_by_pixels[key] = ref
            kept.append(ref)
    return kept, dropped


# -- near-duplicates (perceptual hashes) ------------------------------------------
#
# Two pictures are near-duplicates when their 64-bit pHash differ in at most
# `phash_threshold` bits AND their 64-bit dHash in at most `dhash_threshold`
# bits. The search is multi-index hashing (Norouzi et al.): split the pHash into
# m bands; if two hashes differ in <= t bits, one band differs in <= t // m bits
# (pigeonhole). Each band indexes a table of 2**width counters, and every hash
# probes its band values xor every mask of <= t // m bits: candidate pairs come
# out of numpy gathers, never a Python loop over pairs.

HASH_BITS = 64
MAX_BAND_BITS = 22  # a band's lookup table: 2**22 int32 counters (16 MB)


@dataclass(frozen=True)
class PerceptualHash:
    phash: int  # 64-bit, unsigned
    dhash: int  # 64-bit
    colour: str  # 4x4 box-averaged RGB thumbnail, 48 bytes as hex


def perceptual_hash(image: "Image.Image") -> PerceptualHash:
    """imagehash's pHash and dHash (8x8 = 64 bits each) and a 4x4 colour thumbnail of a picture.

    Transparent images are hashed as the alpha stage will make them (on white).
    pHash and dHash see only grey levels; the colour thumbnail tells a red dress
    from the same drawing in a blue one (the guide: a changed garment is not a
    duplicate).
    """
    import imagehash
    from PIL import Image

    def as_int(h: "imagehash.ImageHash") -> int:
        return int("".join("1" if b else "0" for b in h.hash.flatten()), 2)

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # RGB already: no copy (nothing changes it)
    # The hashes look at <= 32x32 pixels: a box-filtered copy of ~128-256 px gives
    # the same bits (within rounding) for a fraction of the work.
    factor = min(rgb.width, rgb.height) // 128
    if factor > 1:
        rgb = rgb.reduce(factor)
    grey = rgb.convert("L")
    thumb = rgb.resize((4, 4), Image.Resampling.BOX).tobytes().hex()
    return PerceptualHash(as_int(imagehash.phash(grey)), as_int(imagehash.dhash(grey)), thumb)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def colour_distance(a: str, b: str) -> int:
    """Largest channel difference (0-255) between two 4x4 colour thumbnails; 0 when one is unknown."""
    if not a or not b:
        return 0
    return max(abs(x - y) for x, y in zip(bytes.fromhex(a), bytes.fromhex(b)))


def _band_plan(n: int, t: int) -> tuple[list[int], int]:
    """Band widths and probe radius minimising probes + expected random candidates."""
    best: tuple[float, list[int], int] | None = None
    for m in range(max(1, -(-HASH_BITS // MAX_BAND_BITS)), HASH_BITS + 1):
        widths = [HASH_BITS // m + (1 if i < HASH_BITS % m else 0) for i in range(m)]
        if max(widths) > MAX_BAND_BITS:
            continue
        r = t // m
        w = min(widths)
        masks = sum(math.comb(w, k) for k in range(r + 1))
        cost = m * n * masks * (1 + n / 2**w)
        if best is None or cost < best[0]:
            best = (cost, widths, r)
        if m > t + 1:  # radius 0 already; more bands only add candidates
            break
    assert best is not None
    return best[1], best[2]


def near_pairs(phashes: "np.ndarray", t: int) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """All pairs (i < j) whose 64-bit hashes differ in <= t bits: (i, j, distance) arrays."""
    import numpy as np

    h = np.asarray(phashes, dtype=np.uint64)
    n = len(h)
    empty = np.empty(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty
    widths, radius = _band_plan(n, t)
    found_i, found_j = [], []
    offset = 0
    for width in widths:
        vals = ((h >> np.uint64(offset)) & np.uint64((1 << width) - 1)).astype(np.int64)
        offset += width
        counts = np.bincount(vals, minlength=1 << width)
        order = np.argsort(vals, kind="stable")
        starts = np.cumsum(counts) - counts
        for k in range(radius + 1):
            for bits in itertools.combinations(range(width), k):
                mask = sum(1 << b for b in bits)
                q = vals ^ mask
                c = counts[q]
                hit = np.flatnonzero(c)
                if not len(hit):
                    continue
                reps = c[hit]
                ii = np.repeat(hit, reps)
                first = np.repeat(starts[q[hit]], reps)
                within = np.arange(len(ii)) - np.repeat(np.cumsum(reps) - reps, reps)
                jj = order[first + within]
                keep = ii < jj
                ii, jj = ii[keep], jj[keep]
                close = np.bitwise_count(h[ii] ^ h[jj]) <= t
                found_i.append(ii[close])
                found_j.append(jj[close])
    if not found_i:
        return empty, empty, empty
    pairs = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    i, j = pairs // n, pairs % n
    return i, j, np.bitwise_count(h[i] ^ h[j]).astype(np.int64)


@dataclass(frozen=True)
class Candidate:
    """One image as the near-duplicate search sees it."""

    ref: ImageRef
    width: int
    height: int
    phash: int
    dhash: int
    colour: str = ""
    source_rank: int = 99  # rules.md §1 ranking, 0 = best; unknown sorts last
    added: str = ""  # ISO time the original entered the catalog (older sorts first)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def order_key(self) -> tuple[int, int, str, str]:
        """Which copy of a group is kept: most pixels, then better source, then oldest, then name."""
        return (-self.pixels, self.source_rank, self.added, self.ref.name)


@dataclass(frozen=True)
class NearDuplicate:
    dropped: Candidate
    kept: Candidate
    phash_distance: int
    dhash_distance: int
    colour_distance: int = 0


@dataclass(frozen=True)
class NearGroup:
    kept: list[Candidate]  # the best copy, plus any the recipe's `keep` list protects
    dropped: list[NearDuplicate]


def matches_keep(ref: ImageRef, keep: list[str]) -> bool:
    """A recipe `keep` entry names an image by its name or a hash prefix (>= 6 hex digits)."""
    for entry in keep:
        e = entry.strip()
        if e == ref.name or (len(e) >= 6 and ref.hash.startswith(e.lower())):
            return True
    return False


def near_duplicates(
    candidates: list[Candidate], phash_threshold: int, dhash_threshold: int, keep: list[str] = (),
    colour_threshold: int = 255,
) -> list[NearGroup]:
    """Group near-duplicates and pick the copy to keep in each group.

    Pairs within every threshold link images into clusters; in each cluster the
    best copy (`Candidate.order_key`) is kept and only the images within the
    thresholds of THAT copy are dropped; the rest are grouped again the same way
    (a chain a~b~c never drops c for a when c is far from a).
    """
    import numpy as np

    cands = sorted(candidates, key=lambda c: c.ref)
    ph = np.array([c.phash for c in cands], dtype=np.uint64)
    dh = np.array([c.dhash for c in cands], dtype=np.uint64)
    i, j, _ = near_pairs(ph, phash_threshold)
    close = np.bitwise_count(dh[i] ^ dh[j]) <= dhash_threshold
    i, j = i[close], j[close]
    parent = list(range(len(cands)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        if colour_distance(cands[a].colour, cands[b].colour) > colour_threshold:
            continue
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[Candidate]] = {}
    for index, cand in enumerate(cands):
        members.setdefault(root(index), []).append(cand)

    def near(a: Candidate, b: Candidate) -> bool:
        return (hamming(a.phash, b.phash) <= phash_threshold and hamming(a.dhash, b.dhash) <= dhash_threshold
                and colour_distance(a.colour, b.colour) <= colour_threshold)

    groups = []
    for cluster in members.values():
        rest = sorted(cluster, key=Candidate.order_key)
        while len(rest) > 1:
            best, others = rest[0], rest[1:]
            group = [best] + [c for c in others if near(best, c)]
            rest = [c for c in others if c not in group]
            if len(group) < 2:
                continue
            protected = [c for c in group[1:] if matches_keep(c.ref, list(keep))]
            kept = [best] + protected  # `keep` adds, never replaces
            dropped = [
                NearDuplicate(c, best, hamming(c.phash, best.phash), hamming(c.dhash, best.dhash),
                              colour_distance(c.colour, best.colour))
                for c in group
                if c not in kept
            ]
            groups.append(NearGroup(kept, dropped))
    return sorted(groups, key=lambda g: g.kept[0].ref)
