"""The review studio's view models: catalog rows and reports in, what a page shows out (no I/O).

A card is one picture as it will be trained: its kohya folder, the bucket crop
(fractions of the picture), its caption split into triggers, kept tags and
pruned tags, and its flags (rare tags, long caption, too small, mask QA).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from bakery.craft import edits as edits_craft
from bakery.craft.caption.tags import normalize_tag
from bakery.craft.prepare.buckets import BucketChoice, keep_crop_box

PER_PAGE = 60
FLAGS = ("rare", "long", "small", "mask", "held_out", "screen", "special", "warned")
FLAG_TITLES = {"rare": "rare tags", "long": "long caption", "small": "too small", "mask": "mask QA",
               "held_out": "held out", "screen": "screened (rules.md §3)", "special": "special tags (rules.md §10)",
               "warned": "run warnings"}
HASH = re.compile(r"^[0-9a-f]{64}$")


class StudioError(Exception):
    """A request the studio refuses, with the HTTP status and the one line the page shows."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Card:
    name: str  # the picture's stable name (edits target it)
    file: str  # its file name in the kohya folder
    folder: str  # concept or outfit folder (without repeats)
    repeats: int
    hash: str
    mask_hash: str | None
    caption: str
    triggers: list[str]
    tags: list[str]  # kept tags, caption order
    size: tuple[int, int] | None = None
    crop: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 (0-1) the bucket keeps
    bucket: tuple[int, int] | None = None
    keep: tuple[float, float, float, float] | None = None  # a crop edit's box: what the bucket crop must keep
    upscale: float | None = None
    flags: dict[str, str] = field(default_factory=dict)  # flag -> what it says
    pruned: list[str] = field(default_factory=list)  # filled for the cards of a page
    removed: list[str] = field(default_factory=list)  # source tags an edit took out (not pruned), likewise

    @property
    def kohya_folder(self) -> str:
        return f"{self.repeats}_{self.folder}"

    @property
    def crop_style(self) -> str:
        return box_style(self.crop)

    @property
    def keep_style(self) -> str:
        return box_style(self.keep)


def box_style(box: Sequence[float] | None) -> str:
    """CSS placing a box given in fractions of the picture over it."""
    if not box:
        return ""
    x0, y0, x1, y1 = box
    return f"left:{100 * x0:.2f}%;top:{100 * y0:.2f}%;width:{100 * (x1 - x0):.2f}%;height:{100 * (y1 - y0):.2f}%"


def split_caption(caption: str, triggers: Iterable[str]) -> tuple[list[str], list[str]]:
    """(leading triggers, the other tags) of a kohya caption (`|||` keep-tokens separators ignored)."""
    known = set(triggers)
    parts = [p.strip() for p in caption.replace("|||", ",").split(",")]
    parts = [p for p in parts if p]
    head = 0
    while head < len(parts) and parts[head] in known:
        head += 1
    return parts[:head], parts[head:]


def pruned_tags(source_tags: Sequence[str], kept: Sequence[str], triggers: Sequence[str],
                removed: Sequence[str] = ()) -> list[str]:
    """The picture's cleaned source tags that its caption no longer carries (absorbed by a trigger), less those
    an edit `removed`."""
    present = {normalize_tag(t) for t in [*kept, *triggers, *removed]}
    return [t for t in dict.fromkeys(source_tags) if normalize_tag(t) not in present]


def edited_sources(cards: Sequence[Card], shown: Sequence[Card], sources: Mapping[str, list[str]],
                   edits: Sequence[edits_craft.Edit]) -> dict[str, list[str]]:
    """The shown cards' source tags (card name -> tags) after the tag edits, applied as the prune stage applies
    them (`cards`: the whole set, which a folder's bulk replace names)."""
    members: dict[str, list[str]] = {}
    for c in cards:
        members.setdefault(c.folder, []).append(c.name)
    plan = edits_craft.plan_prune(edits, {c.name: c.hash for c in cards}, members)
    edited, _ = edits_craft.apply_tags({c.name: sources.get(c.hash, []) for c in shown}, members, plan.tag_edits)
    return edited


def removed_tags(source_tags: Sequence[str], edited: Sequence[str], kept: Sequence[str]) -> list[str]:
    """The source tags the picture's edits took out, that its caption no longer carries."""
    present = {normalize_tag(t) for t in [*edited, *kept]}
    return [t for t in dict.fromkeys(source_tags) if normalize_tag(t) not in present]


def fill_dropped(cards: Sequence[Card], shown: Sequence[Card], sources: Mapping[str, list[str]],
                 edits: Sequence[edits_craft.Edit]) -> None:
    """Each shown card's pruned tags and the tags its edits removed (set on the cards)."""
    edited = edited_sources(cards, shown, sources, edits)
    for c in shown:
        source = sources.get(c.hash, [])
        c.removed = removed_tags(source, edited.get(c.name, source), c.tags)
        c.pruned = pruned_tags(source, c.tags, c.triggers, c.removed)


def crop_fractions(size: Sequence[int], bucket: Sequence[int], resized: Sequence[int]) -> tuple[float, float, float, float]:
    """The part of a picture kohya's centre crop keeps, as fractions of it (full picture when it is the bucket)."""
    if tuple(size) == tuple(bucket):
        return 0.0, 0.0, 1.0, 1.0
    rw, rh = resized
    left, top, right, bottom = BucketChoice((bucket[0], bucket[1]), (rw, rh)).crop_box
    return left / rw, top / rh, right / rw, bottom / rh


def keep_fractions(size: Sequence[int], bucket: Sequence[int], resized: Sequence[int],
                   keep: Sequence[float]) -> tuple[float, float, float, float]:
    """A keep box (fractions of the picture before bucketing) on the picture shown. When buckets wrote the picture
    already cropped to its bucket (the crop shifted to keep the box), the box is moved into that crop's coordinates."""
    if tuple(size) != tuple(bucket):
        return tuple(keep)
    rw, rh = resized
    left, top, right, bottom = keep_crop_box(BucketChoice((bucket[0], bucket[1]), (rw, rh)), tuple(keep))
    w, h = right - left, bottom - top
    # a keep box larger than the crop reaches past it: draw the part inside
    return (_clip01((keep[0] * rw - left) / w), _clip01((keep[1] * rh - top) / h),
            _clip01((keep[2] * rw - left) / w), _clip01((keep[3] * rh - top) / h))


def _clip01(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def card_flags(card: Card, post_counts: Mapping[str, int], rare_below: int, max_bytes: int,
               downscale: float | None, mask_qa: Mapping[str, object] | None) -> dict[str, str]:
    """The guide's warnings about one picture (rules.md §5, §6, §9)."""
    flags = {}
    rare = [t for t in card.tags if normalize_tag(t) in post_counts and post_counts[normalize_tag(t)] < rare_below]
    if rare:
        flags["rare"] = "rare: " + ", ".join(f"{t} ({post_counts[normalize_tag(t)]} posts)" for t in rare)
    if len(card.caption.encode()) > max_bytes:
        flags["long"] = f"caption {len(card.caption.encode())} bytes (> {max_bytes})"
    if downscale is not None and downscale < 1:
        flags["small"] = f"enlarged {1 / downscale:.2f}x by bucketing"
    elif card.upscale:
        flags["small"] = f"upscaled {card.upscale:g}x"
    if mask_qa is not None and not mask_qa.get("accepted"):
        flags["mask"] = f"mask rejected: {mask_qa.get('reason') or 'no mask'}"
    return flags


def decision_flags(decisions: Iterable[Mapping]) -> dict[str, dict[str, str]]:
    """image hash -> its `screen` flag (screened by tags or by a [judges] model and flagged, or kept by a keep edit)
    and `special` flag (§10 tags)."""
    out: dict[str, dict[str, list[str]]] = {}
    for d in decisions:
        flag = "screen" if d["rule"].startswith(("screen:", "judge:")) else "special"
        if flag == "screen" and d["action"] == "skip":
            continue
        out.setdefault(d["image_hash"], {}).setdefault(flag, []).append(d["reason"])
    return {h: {f: "; ".join(texts) for f, texts in flags.items()} for h, flags in out.items()}


def build_card(row: Mapping, name: str, triggers: Sequence[str], size: tuple[int, int] | None,
               bucket_entry: Mapping | None, upscale: float | None, mask_qa: Mapping | None,
               post_counts: Mapping[str, int], rare_below: int, max_bytes: int, held: bool = False) -> Card:
    """One `train_captions` (or held-out validation) row with what the reports say of its picture."""
    head, body = split_caption(row["caption"], triggers)
    card = Card(name, row["name"], row["folder"], row["repeats"], row["image_hash"], row["mask_hash"], row["caption"],
                head, body, size, upscale=upscale)
    entry = bucket_entry or {}
    if entry and size:
        card.bucket = tuple(entry["kohya_bucket"])
        card.crop = crop_fractions(size, entry["kohya_bucket"], entry["kohya_resized"])
        card.keep = (keep_fractions(size, entry["kohya_bucket"], entry["kohya_resized"], entry["keep_box"])
                     if entry.get("keep_box") else None)
    card.flags = card_flags(card, post_counts, rare_below, max_bytes, entry.get("downscale"), mask_qa)
    if held:
        card.flags["held_out"] = "held out for the validation loss: never trained on"
    return card


def names(message: str, name: str) -> bool:
    """Whether a warning names `name` as a whole (`chara/img1` is not named by `chara/img10` nor by `x/chara/img1`)."""
    return re.search(r"(?:^|[\s(,'\"])" + re.escape(name) + r"(?=$|[\s),:;'\"]|\.(?:\s|$))", message) is not None


def picture_warnings(warnings: Sequence[Mapping], card: Card, folder_too: bool = False) -> list[Mapping]:
    """The run's warnings that name this picture (by its name, its folder/name or its kohya file name), and with
    `folder_too` those about its whole folder (`red_dress: 5 images; an outfit needs >= 8 ...`)."""
    own = {card.name, f"{card.folder}/{card.name}", card.file, f"{card.folder}/{card.file}"}
    return [w for w in warnings
            if any(names(w["message"], n) for n in own) or (folder_too and w["message"].startswith(card.folder + ":"))]


def warning_rows(warnings: Sequence[Mapping], cards: Sequence[Card]) -> list[dict]:
    """Each warning with the pictures of the training set it names (name, hash), for links to their pages."""
    rows = []
    for w in warnings:
        named = {c.name: c.hash for c in cards if c.name in w["message"] or c.file in w["message"]}  # cheap first
        shown = [(c.name, c.hash) for c in cards if c.name in named and picture_warnings([w], c)]
        rows.append({"stage": w["stage"], "message": w["message"], "pictures": list(dict.fromkeys(shown))})
    return rows


def warned_flag(card: Card, warnings: Sequence[Mapping]) -> None:
    """The card's `warned` flag: the warnings of its run that name it."""
    if named := picture_warnings(warnings, card):
        card.flags["warned"] = "; ".join(f"{w['stage']}: {w['message']}" for w in named)


@dataclass(frozen=True)
class Filters:
    folder: str = ""
    tag: str = ""
    flag: str = ""
    page: int = 1

    def query(self, **change: object) -> str:
        values = {"folder": self.folder, "tag": self.tag, "flag": self.flag, "page": self.page, **change}
        return "?" + urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == 1)})


def filter_cards(cards: Sequence[Card], f: Filters) -> list[Card]:
    out = [c for c in cards if not f.folder or c.folder == f.folder]
    if f.tag:
        out = [c for c in out if f.tag in c.tags or f.tag in c.triggers]
    if f.flag:
        out = [c for c in out if f.flag in c.flags]
    return out


def tag_counts(cards: Sequence[Card]) -> list[tuple[str, int]]:
    """Tags of the final captions (triggers left out) with how many pictures carry each, most used first."""
    counts = Counter(t for c in cards for t in dict.fromkeys(c.tags))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def folder_counts(cards: Sequence[Card]) -> list[tuple[str, str, int]]:
    """(folder, kohya folder, pictures) of every folder."""
    seen: dict[str, list] = {}
    for c in cards:
        seen.setdefault(c.folder, [c.kohya_folder, 0])[1] += 1
    return [(f, k, n) for f, (k, n) in sorted(seen.items())]


def flag_counts(cards: Sequence[Card]) -> list[tuple[str, str, int]]:
    counts = Counter(f for c in cards for f in c.flags)
    return [(f, FLAG_TITLES[f], counts[f]) for f in FLAGS if counts[f]]


@dataclass(frozen=True)
class Page:
    items: list
    number: int
    pages: int
    total: int


def paginate(items: Sequence, number: int, per_page: int = PER_PAGE) -> Page:
    pages = max(1, math.ceil(len(items) / per_page))
    number = min(max(1, number), pages)
    return Page(list(items[(number - 1) * per_page: number * per_page]), number, pages, len(items))


@dataclass
class DuplicateGroup:
    kept: tuple[str, str]  # (hash, name)
    dropped: list[dict]  # {hash, name, method, distance}


def duplicate_groups(rows: Sequence[Mapping], names: Mapping[str, str]) -> list[DuplicateGroup]:
    """The dedupe stage's verdicts as groups: each kept copy with the copies dropped for it."""
    groups: dict[str, DuplicateGroup] = {}
    for r in rows:
        g = groups.setdefault(r["kept_hash"], DuplicateGroup((r["kept_hash"], names.get(r["kept_hash"], "")), []))
        g.dropped.append({"hash": r["image_hash"], "name": names.get(r["image_hash"], ""), "method": r["method"],
                          "distance": r["distance"]})
    return sorted(groups.values(), key=lambda g: g.kept[1])


def prefect_ui(env: Mapping[str, str]) -> str | None:
    """The Prefect dashboard's address: PREFECT_UI_URL, else PREFECT_API_URL without its /api."""
    if env.get("PREFECT_UI_URL"):
        return env["PREFECT_UI_URL"].rstrip("/")
    api = env.get("PREFECT_API_URL", "").rstrip("/")
    return api[: -len("/api")] if api.endswith("/api") else (api or None)


def parse_tags(text: str) -> list[str]:
    """A form's tag field: tags separated by commas or new lines, blanks dropped."""
    return [t.strip() for t in re.split(r"[,\n]", text) if t.strip()]
