"""What a picture's caption is made from, read as the prune stage reads it (no Prefect: the studio reads it too).

Sidecars and tag rows are found on the picture and on the originals it came from; the recipe's caption settings
become the craft's CaptionSettings.
"""

from __future__ import annotations

from bakery.craft.caption import screen as screen_craft
from bakery.craft.caption import tags as tags_craft
from bakery.craft.caption import trainset as craft
from bakery.manifest import ImageRef
from bakery.recipe import CaptionParams
from storage import Catalog


def gather_sources(cat: Catalog, images: list[ImageRef]) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """Sidecars and tag rows of each image, found on it and on the originals it came from."""
    chains = cat.ancestors(sorted({r.hash for r in images}))
    everyone = sorted({h for chain in chains.values() for h in chain})
    sidecars = cat.sidecars_for(everyone)
    rows_by: dict[str, list[dict]] = {}
    for row in cat.tags_for(everyone):
        rows_by.setdefault(row["image_hash"], []).append(row)
    side, rows = {}, {}
    for h, chain in chains.items():
        side[h] = [text for a in chain for text in sidecars.get(a, [])]
        tagger = next((rows_by[a] for a in chain if any(r["origin"] == "tagger" for r in rows_by.get(a, []))), [])
        rows[h] = [r for a in chain for r in rows_by.get(a, []) if r["origin"] != "tagger"] + [
            r for r in tagger if r["origin"] == "tagger"
        ]
    return side, rows


def crop_framings(cat: Catalog, images: list[ImageRef]) -> dict[str, str]:
    """image hash -> the framing the crops stage cut it out as (its own or an ancestor's); "" for the rest."""
    chains = cat.ancestors(sorted({r.hash for r in images}))
    cut = cat.crop_framings(sorted({h for chain in chains.values() for h in chain}))
    return {h: next((cut[a] for a in chain if a in cut), "") for h, chain in chains.items()}


def caption_settings(data: dict) -> craft.CaptionSettings:
    cap = CaptionParams.model_validate(data)
    clean = tags_craft.CleanRules(
        delete=tuple(cap.delete), synonyms=dict(cap.synonyms), split={k: tuple(v) for k, v in cap.split.items()},
        redundancy=cap.redundancy, keep_generic=tuple(cap.keep_generic), implies={k: tuple(v) for k, v in cap.implies.items()},
    )
    screening = screen_craft.ScreenSettings(
        {k: getattr(cap, f"screen_{k}") for k in screen_craft.KINDS},
        {k: tuple(tags_craft.normalize_tag(t) for t in v) for k, v in cap.screen_tags.items()}, cap.screen_crowd_people,
    )
    return craft.CaptionSettings(
        clean, tuple(cap.sources), cap.merge, tuple(cap.keep_namespaces), cap.tag_style, cap.keep_tokens_separator,
        cap.warn_caption_bytes, cap.rare_tag_posts, tuple(cap.prefix_tags), screening, cap.special_tags,
    )
