"""Dedupe: collapse identical pictures to one image (rules.md §2).

Exact duplicates share decoded pixels (the same picture saved as PNG and BMP,
say). Files with identical bytes never get this far: the content store keeps
them once and records every source.
"""

from __future__ import annotations

from collections.abc import Mapping

from bakery.manifest import ImageRef


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
