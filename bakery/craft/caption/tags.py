"""Caption text and tag cleanup (rules.md §9). Pure functions: no Prefect, no catalog.

A tag is kept in Danbooru's canonical form internally: lower case, words joined
by `_` (`white_shirt`, `one-hour_drawing_challenge`). Captions are written as
tags joined by ", " (kohya's default separator), underscores or spaces as the
recipe asks.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Grabber (and some booru exports) prefix tags with their category.
KNOWN_NAMESPACES = frozenset(
    {
        "general", "character", "copyright", "artist", "meta", "species", "lore", "invalid",
        "medium", "rating", "source", "series", "studio", "circle", "faults", "model", "photo_set",
        "metadata", "style", "genre", "people", "unknown", "deprecated",
    }
)
_NAMESPACE = re.compile(r"^([a-z_]+):(.+)$")

# The guide's delete list (rules.md §9): memes, parody, redraw challenges, shiny skin, uncensored.
DEFAULT_DELETE = (
    "meme", "parody", "*_(meme)", "shiny_skin", "uncensored", "*_challenge", "commentary*",
    "translated", "*_request", "highres", "absurdres", "lowres", "bad_id", "bad_*_id", "md5_mismatch",
)
# Pick one of a pair the taggers emit together (rules.md §9: tiara vs circlet).
DEFAULT_SYNONYMS = {"circlet": "tiara"}

CAPTION_WARN_BYTES = 1024  # rules.md §9: a caption over 1 KB signals a tagger gone wrong
RARE_TAG_POSTS = 500  # rules.md §9: fewer posts = weakly known by the model


def normalize_tag(tag: str) -> str:
    """`White Shirt ` -> `white_shirt`; kohya-escaped parentheses unescaped."""
    tag = tag.strip().replace("\\(", "(").replace("\\)", ")")
    tag = re.sub(r"\s+", "_", tag)
    return re.sub(r"_+", "_", tag).lower()


def split_namespace(tag: str) -> tuple[str | None, str]:
    """`character:hatsune miku` -> ("character", "hatsune miku"); `:d` or `re:zero` are plain tags."""
    m = _NAMESPACE.match(tag.strip().lower())
    if m and m.group(1) in KNOWN_NAMESPACES:
        return m.group(1), tag.strip()[len(m.group(1)) + 1 :]
    return None, tag


def parse_caption(text: str, keep_namespaces: Iterable[str] = ("general", "character", "copyright")) -> list[str]:
    """Tags from a caption file: comma/newline separated, or Grabber's `|`-joined format.

    Grabber writes tags with spaces and `namespace:` prefixes joined by `|`
    (rules.md §9): `|` becomes a separator, spaces become `_`, and a prefixed tag
    survives only when its namespace is in `keep_namespaces` (prefix removed).
    """
    keep = set(keep_namespaces)
    text = text.replace("\r", "\n").strip()
    if not text:
        return []
    parts = re.split(r"[|\n]" if "|" in text and "|||" not in text else r"[,\n]", text)
    tags = []
    for part in parts:
        if "|||" in part:  # a keep-tokens separator from a kohya caption: not a tag
            part = part.replace("|||", ",")
            tags.extend(t for t in (p.strip() for p in part.split(",")) if t)
            continue
        ns, tag = split_namespace(part)
        if ns is not None and ns not in keep:
            continue
        if tag.strip():
            tags.append(tag)
    return dedupe(t for t in map(normalize_tag, tags) if t)


def dedupe(tags: Iterable[str]) -> list[str]:
    """First occurrence wins; order kept."""
    return list(dict.fromkeys(tags))


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def matches(tag: str, patterns: Iterable[str]) -> bool:
    """A tag against exact names or globs (`*_(meme)`)."""
    rx = _compiled(tuple(patterns))
    return rx is not None and rx.match(tag) is not None


def is_more_specific(specific: str, generic: str) -> bool:
    """`white_shirt` refines `shirt`; `long_hair` refines `hair`; `shirt_lift` does not refine `shirt`."""
    return specific != generic and specific.endswith("_" + generic)


@dataclass(frozen=True)
class CleanRules:
    delete: tuple[str, ...] = DEFAULT_DELETE
    synonyms: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SYNONYMS))
    split: dict[str, tuple[str, ...]] = field(default_factory=dict)
    redundancy: bool = True
    keep_generic: tuple[str, ...] = ()  # never dropped by the redundancy rule
    implies: dict[str, tuple[str, ...]] = field(default_factory=dict)  # specific -> generics it makes redundant


def clean_tags(tags: Sequence[str], rules: CleanRules) -> list[str]:
    """Normalise, delete, synonyms, split, de-duplicate, then drop redundant generics.

    The order matters: a synonym may produce a tag another rule deletes or
    refines, a split may produce parts that make a generic redundant.
    """
    out: list[str] = []
    synonyms = {normalize_tag(k): normalize_tag(v) for k, v in rules.synonyms.items()}
    splits = {normalize_tag(k): [normalize_tag(p) for p in v] for k, v in rules.split.items()}
    delete = tuple(normalize_tag(p) for p in rules.delete)
    for raw in tags:
        tag = normalize_tag(raw)
        if not tag:
            continue
        tag = synonyms.get(tag, tag)
        for t in splits.get(tag, [tag]):
            if not matches(t, delete):
                out.append(t)
    out = dedupe(out)
    if rules.redundancy:
        out = drop_redundant(out, rules.keep_generic, rules.implies)
    return out


def drop_redundant(
    tags: Sequence[str], keep_generic: Iterable[str] = (), implies: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    """Drop a generic tag when a more specific one is present (shirt + white_shirt -> white_shirt)."""
    keep = {normalize_tag(t) for t in keep_generic}
    present = set(tags)
    implied: set[str] = set()
    for specific, generics in (implies or {}).items():
        if normalize_tag(specific) in present:
            implied.update(normalize_tag(g) for g in generics)
    # Every "_"-suffix of every tag: `black_back_bow` refines `back_bow` and `bow`.
    refined = {t.split("_", i)[-1] for t in present for i in range(1, t.count("_") + 1)}
    return [t for t in tags if t in keep or not (t in implied or t in refined)]


def format_tag(tag: str, style: str = "underscore") -> str:
    """A tag as written into a caption: `white_shirt` or `white shirt` (kohya escapes no parentheses)."""
    if style == "space":
        # Emoticons like `^_^` or `>_<` keep their underscores.
        return tag if len(tag) <= 3 else tag.replace("_", " ")
    return tag


def join_caption(tags: Sequence[str], style: str = "underscore") -> str:
    return ", ".join(format_tag(t, style) for t in tags)


@dataclass(frozen=True)
class CaptionFlags:
    too_long: bool
    rare: tuple[str, ...]


def flag_caption(caption: str, tags: Sequence[str], post_counts: dict[str, int] | None = None,
                 max_bytes: int = CAPTION_WARN_BYTES, rare_below: int = RARE_TAG_POSTS) -> CaptionFlags:
    """rules.md §9 checks: caption over 1 KB; tags with fewer than 500 posts (when counts are known)."""
    counts = post_counts or {}
    rare = tuple(t for t in tags if t in counts and counts[t] < rare_below)
    return CaptionFlags(len(caption.encode()) > max_bytes, rare)


def character_tags(sidecars: Sequence[str], tag_rows: Sequence[dict]) -> set[str]:
    """Tags known to name a character: `character:` prefixes in sidecars, category `character` in the catalog."""
    out = {normalize_tag(r["tag"]) for r in tag_rows if r["category"] == "character"}
    for text in sidecars:
        for part in re.split(r"[|,\n]", text):
            ns, tag = split_namespace(part)
            if ns == "character" and tag.strip():
                out.add(normalize_tag(tag))
    return out


_CATEGORY_ORDER = {"character": 0, "copyright": 1, "artist": 2, "general": 3, "meta": 4, "rating": 5}


def source_tags(
    sidecars: Sequence[str],
    tag_rows: Sequence[dict],
    sources: Sequence[str] = ("user", "booru", "tagger"),
    merge: str = "union",
    keep_namespaces: Iterable[str] = ("general", "character", "copyright"),
) -> list[str]:
    """One image's raw tags from its caption sources, in `sources` order.

    user: the `.txt`/Grabber sidecars beside the original; booru: scraped tags
    (categories outside `keep_namespaces` dropped, rating kept only when stored);
    tagger: WD14 tags, characters first, then by confidence. `merge = "first"`
    takes the first source that has any tag.
    """
    keep = set(keep_namespaces) | {"rating"}
    by_source: dict[str, list[str]] = {
        "user": dedupe(t for text in sidecars for t in parse_caption(text, keep_namespaces)),
        "booru": [
            normalize_tag(r["tag"])
            for r in sorted((r for r in tag_rows if r["origin"] == "booru" and r["category"] in keep),
                            key=lambda r: (_CATEGORY_ORDER.get(r["category"], 9), r["tag"]))
        ],
        "tagger": [
            normalize_tag(r["tag"])
            for r in sorted((r for r in tag_rows if r["origin"] == "tagger"),
                            key=lambda r: (_CATEGORY_ORDER.get(r["category"], 9), -(r["confidence"] or 0), r["tag"]))
        ],
    }
    out: list[str] = []
    for name in sources:
        tags = by_source.get(name, [])
        if merge == "first" and tags:
            return dedupe(tags)
        out.extend(tags)
    return dedupe(out)
