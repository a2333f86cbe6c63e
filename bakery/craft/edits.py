"""Edits: the review studio's corrections, checked and turned into what each stage applies.

Pure: no Prefect, no catalog. `bakery/edits.py` stores them; the dedupe, buckets and prune
stages apply them. An edit names a picture by its name (`chara/img001`), its file name in the
kohya folders (`chara_img001`) or its content hash (8+ hex digits); `replace_tag` names a folder
(`alice`, or its kohya directory `10_alice`). Edits apply in the order they were made (by id):
the latest exclude/include of a picture wins, and so does its latest move or crop.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from bakery.craft.caption import tags as tags_craft

# keep: train a picture the prune stage's screening by tags (rules.md §3) would skip.
KINDS = ("exclude", "include", "add_tags", "remove_tags", "replace_tag", "move", "keep_duplicate", "crop", "keep")
# The stage each kind concerns: its cache key holds exactly these edits.
STAGE_OF = {"keep_duplicate": "dedupe", "crop": "buckets", "keep": "prune", **{k: "prune" for k in KINDS[:6]}}
PAYLOAD_KEYS = {"exclude": set(), "include": set(), "add_tags": {"tags"}, "remove_tags": {"tags"},
                "replace_tag": {"old", "new"}, "move": {"folder"}, "keep_duplicate": set(), "crop": {"keep"},
                "keep": set()}
FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the recipe's names (concepts, outfits)
KOHYA_DIR = re.compile(r"^\d+_(.+)$")
MAX_TEXT = 300
HASH_PREFIX = 8  # hex digits that name a picture by its content


class EditError(ValueError):
    """A bad edit; the message is one line naming the bad field."""


@dataclass(frozen=True)
class Edit:
    id: int
    kind: str
    target: str
    payload: dict
    reason: str
    created_at: datetime
    undone_at: datetime | None = None

    def key(self) -> dict:
        """What a stage's parameters (its cache key, and provenance) hold of the edit."""
        return {"id": self.id, "kind": self.kind, "target": self.target, "payload": self.payload, "reason": self.reason,
                "created_at": self.created_at.isoformat(timespec="seconds")}

    @classmethod
    def from_key(cls, key: Mapping) -> "Edit":
        return cls(key["id"], key["kind"], key["target"], dict(key["payload"]), key["reason"],
                   datetime.fromisoformat(key["created_at"]))

    def label(self) -> str:
        return f"edit #{self.id}" + (f": {self.reason}" if self.reason else "")


def _text(value: object, name: str, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise EditError(f"{name}: must be text, got {type(value).__name__}")
    text = value.strip()
    if not text and not empty_ok:
        raise EditError(f"{name}: is empty")
    if len(text) > MAX_TEXT:
        raise EditError(f"{name}: longer than {MAX_TEXT} characters")
    if any(ord(c) < 32 for c in text):
        raise EditError(f"{name}: {text[:40]!r} holds a line break or control character")
    return text


def check_tag(value: object, name: str = "tag") -> str:
    """A tag as the prune code keeps it (`White Shirt` -> `white_shirt`), or EditError."""
    text = _text(value, name)
    for bad, why in ((",", "a comma (kohya's tag separator)"), ("|", "a '|' (a caption separator)")):
        if bad in text:
            raise EditError(f"{name}: {text!r} has {why}")
    ns, _ = tags_craft.split_namespace(text)
    if ns is not None:
        raise EditError(f"{name}: {text!r} has a '{ns}:' prefix; give the tag alone")
    return tags_craft.normalize_tag(text)


def check_folder(value: object, name: str = "folder") -> str:
    text = _text(value, name)
    if not FOLDER_PATTERN.match(text):
        raise EditError(f"{name}: {text!r} is not a folder name (letters, digits, '_', '.', '-')")
    return text


def _tag_list(payload: dict) -> list[str]:
    tags = payload.get("tags")
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)) or not tags:
        raise EditError("tags: give a non-empty list of tags")
    return list(dict.fromkeys(check_tag(t, f"tags[{i}]") for i, t in enumerate(tags)))


def _box(payload: dict) -> list[float]:
    box = payload.get("keep")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise EditError("keep: give [x0, y0, x1, y1], fractions 0..1 of the picture")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in box):
        raise EditError(f"keep: {list(box)} has a value outside 0..1")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x0 >= x1 or y0 >= y1:
        raise EditError(f"keep: {list(box)} is empty (need x0 < x1 and y0 < y1)")
    return [x0, y0, x1, y1]


def check_edit(kind: object, target: object, payload: object, reason: object = "") -> tuple[str, str, dict, str]:
    """(kind, target, payload, reason) checked and normalised; EditError naming the bad field."""
    if kind not in KINDS:
        raise EditError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    payload = {} if payload is None else payload
    if not isinstance(payload, dict):
        raise EditError(f"payload: must be a table, got {type(payload).__name__}")
    unknown = sorted(set(payload) - PAYLOAD_KEYS[kind])
    if unknown:
        raise EditError(f"payload: {kind} takes no {', '.join(map(repr, unknown))}")
    reason = _text(reason if reason is not None else "", "reason", empty_ok=True)
    target = check_folder(target, "target") if kind == "replace_tag" else _text(target, "target")
    if kind in ("add_tags", "remove_tags"):
        payload = {"tags": _tag_list(payload)}
    elif kind == "replace_tag":
        old = check_tag(payload.get("old"), "old")
        new = check_tag(payload["new"], "new") if str(payload.get("new", "")).strip() else ""
        if old == new:
            raise EditError(f"new: same as old ({old!r})")
        payload = {"old": old, "new": new}
    elif kind == "move":
        payload = {"folder": check_folder(payload.get("folder"))}
    elif kind == "crop":
        payload = {"keep": _box(payload)}
    return kind, target, payload, reason


@dataclass(frozen=True)
class Known:
    """What the last run knows, to check an edit's names against. None: cannot be checked."""

    names: frozenset[str] | None = None  # picture names, kohya file names and hashes of the last run
    folders: frozenset[str] | None = None  # the recipe's concept/outfit folders
    dropped: frozenset[str] | None = None  # names and hashes of pictures dedupe dropped as near-duplicates


def folder_key(name: str, folders: Iterable[str]) -> str:
    """A folder as the trainset names it: `10_alice` -> `alice` when `alice` is a folder."""
    folders = set(folders)
    m = KOHYA_DIR.match(name)
    return m.group(1) if name not in folders and m and m.group(1) in folders else name


def _known_name(target: str, names: frozenset[str]) -> bool:
    t = target.lower()
    return target in names or flat_name(target) in names or (len(t) >= HASH_PREFIX and any(n.startswith(t) for n in names if len(n) == 64))


def check_known(kind: str, target: str, payload: dict, known: Known) -> None:
    """EditError when the edit names a picture or folder the last run does not have."""
    if kind == "keep_duplicate" and known.dropped is not None and not _known_name(target, known.dropped):
        raise EditError(f"target: {target!r} is not a near-duplicate the last run dropped")
    elif kind == "replace_tag" and known.folders is not None and folder_key(target, known.folders) not in known.folders:
        raise EditError(f"target: no folder {target!r} (folders: {', '.join(sorted(known.folders))})")
    elif kind not in ("keep_duplicate", "replace_tag") and known.names is not None and not _known_name(target, known.names):
        raise EditError(f"target: no picture {target!r} in the last run")
    if kind == "move" and known.folders is not None and folder_key(payload["folder"], known.folders) not in known.folders:
        raise EditError(f"folder: no folder {payload['folder']!r} (folders: {', '.join(sorted(known.folders))})")


# -- applying -------------------------------------------------------------------------------
def flat_name(name: str) -> str:
    """A picture's file name in the kohya folders (bakery/craft/caption/trainset.py file_names, before collisions)."""
    return name.replace("/", "_")


def resolver(pictures: Mapping[str, str]) -> dict[str, str]:
    """name -> hash of the pictures a stage sees, as {alias: name}: name, kohya file name, full hash."""
    out: dict[str, str] = {}
    for name, digest in sorted(pictures.items()):
        out.setdefault(flat_name(name), name)
        out.setdefault(digest, name)
    out.update({name: name for name in pictures})
    return out


def resolve(target: str, aliases: Mapping[str, str]) -> str | None:
    """The picture an edit names, or None (not among these pictures, or a hash prefix naming several)."""
    if target in aliases:
        return aliases[target]
    t = target.lower()
    if len(t) >= HASH_PREFIX and re.fullmatch(r"[0-9a-f]+", t):
        found = {n for a, n in aliases.items() if len(a) == 64 and a.startswith(t)}
        return found.pop() if len(found) == 1 else None
    return None


def concerning(edits: Sequence[Edit], stage: str) -> list[Edit]:
    """The active edits a stage applies, in order: what its cache key holds."""
    return sorted((e for e in edits if e.undone_at is None and STAGE_OF[e.kind] == stage), key=lambda e: e.id)


def keep_list(edits: Sequence[Edit]) -> list[str]:
    """The dedupe stage's extra `keep` entries (names or hashes of near-duplicates to keep too)."""
    return list(dict.fromkeys(e.target for e in concerning(edits, "dedupe")))


def crop_boxes(edits: Sequence[Edit]) -> dict[str, list[float]]:
    """target -> the keep box of its latest crop edit."""
    return {e.target: list(e.payload["keep"]) for e in concerning(edits, "buckets")}


def left_out(edits: Sequence[Edit], stage: str, pictures: Mapping[str, str]) -> list[str]:
    """A stage's edits that name no picture it sees (name -> hash), as warnings (the prune stage's wording)."""
    aliases = resolver(pictures)
    return [f"edit #{e.id} ({e.kind}) left out: no picture {e.target!r} here"
            for e in concerning(edits, stage) if resolve(e.target, aliases) is None]


def resolve_boxes(boxes: Mapping[str, list[float]], pictures: Mapping[str, str]) -> dict[str, list[float]]:
    """The crop edits' boxes by the picture names a stage sees (name -> hash); boxes naming nothing are left out."""
    aliases = resolver(pictures)
    out = {}
    for target, box in boxes.items():
        if (name := resolve(target, aliases)) is not None:
            out[name] = list(box)
    return out


@dataclass
class PruneEdits:
    """The prune stage's edits, resolved to the picture names it sees."""

    excluded: dict[str, Edit] = field(default_factory=dict)  # name -> the exclude edit that holds
    kept: dict[str, Edit] = field(default_factory=dict)  # name -> the keep edit the screening yields to
    moves: dict[str, tuple[str, Edit]] = field(default_factory=dict)  # name -> (folder, edit)
    tag_edits: list[tuple[Edit, str]] = field(default_factory=list)  # (edit, picture name or folder), in order
    warnings: list[str] = field(default_factory=list)  # edits that name nothing here


def plan_prune(edits: Sequence[Edit], pictures: Mapping[str, str], folders: Iterable[str]) -> PruneEdits:
    """Resolve the prune stage's edits against its pictures (name -> hash) and the recipe's folders."""
    folders, aliases, plan = set(folders), resolver(pictures), PruneEdits()
    for e in concerning(edits, "prune"):
        if e.kind == "replace_tag":
            folder = folder_key(e.target, folders)
            if folder in folders:
                plan.tag_edits.append((e, folder))
            else:
                plan.warnings.append(f"edit #{e.id} (replace_tag) left out: no folder {e.target!r} in the recipe")
            continue
        name = resolve(e.target, aliases)
        if name is None:
            plan.warnings.append(f"edit #{e.id} ({e.kind}) left out: no picture {e.target!r} here")
        elif e.kind == "exclude":
            plan.excluded[name] = e
        elif e.kind == "include":
            plan.excluded.pop(name, None)
        elif e.kind == "keep":
            plan.kept[name] = e
        elif e.kind == "move":
            folder = folder_key(e.payload["folder"], folders)
            if folder in folders:
                plan.moves[name] = (folder, e)
            else:
                plan.warnings.append(f"edit #{e.id} (move) left out: no folder {e.payload['folder']!r} in the recipe")
        else:
            plan.tag_edits.append((e, name))
    return plan


def apply_layout(members: Mapping[str, list[str]], unassigned: list[str],
                 plan: PruneEdits) -> tuple[dict[str, list[str]], list[str]]:
    """The layout without the excluded pictures, each moved one taken out of every folder and put in its edit's."""
    gone = set(plan.excluded) | set(plan.moves)
    out = {f: [n for n in names if n not in gone] for f, names in members.items()}
    for name, (folder, _) in sorted(plan.moves.items()):
        if name not in plan.excluded:
            out[folder] = sorted([*out[folder], name])
    return out, [n for n in unassigned if n not in gone]


def exclusion_reason(edit: Edit) -> str:
    """The skip reason of a picture an edit excludes (the picture account holds)."""
    return f"excluded by {edit.label()}"


def apply_tags(cleaned: Mapping[str, list[str]], members: Mapping[str, list[str]],
               tag_edits: Sequence[tuple[Edit, str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each picture's cleaned tags with the tag edits applied in order; the tags edits added, per picture."""
    tags = {n: list(t) for n, t in cleaned.items()}
    added: dict[str, list[str]] = {}

    def put(name: str, tag: str) -> None:
        if tag not in tags[name]:
            tags[name].append(tag)
        added.setdefault(name, []).append(tag)

    for e, subject in tag_edits:
        names = [n for n in members.get(subject, []) if n in tags] if e.kind == "replace_tag" else [subject]
        for name in (n for n in names if n in tags):
            if e.kind == "add_tags":
                for t in e.payload["tags"]:
                    put(name, t)
            elif e.kind == "remove_tags":
                tags[name] = [t for t in tags[name] if t not in e.payload["tags"]]
                added[name] = [t for t in added.get(name, []) if t not in e.payload["tags"]]
            elif e.payload["old"] in tags[name]:
                old, new = e.payload["old"], e.payload["new"]
                replaced = [new if t == old else t for t in tags[name]] if new else [t for t in tags[name] if t != old]
                tags[name] = list(dict.fromkeys(replaced))
                added[name] = [t for t in added.get(name, []) if t != old] + ([new] if new else [])
    return tags, {n: list(dict.fromkeys(a)) for n, a in added.items() if a}


def keep_added(kept: Sequence[str], added: Sequence[str]) -> list[str]:
    """A picture's tags after pruning, with the tags an edit gave it back (an edit's tag is never pruned)."""
    return [*kept, *(t for t in added if t not in kept)]


def edit_fingerprint(kind: str, target: str, payload: dict, created_at: datetime) -> tuple:
    """What makes an imported edit the same as one the catalog holds (importing twice adds nothing)."""
    return kind, target, json.dumps(payload, sort_keys=True), created_at.isoformat(timespec="seconds")


def payload_from_args(kind: str, values: Sequence[str]) -> dict:
    """The payload of `bakery edit RECIPE KIND TARGET VALUES...` (checked later by check_edit)."""
    values = list(values)
    usage = {"add_tags": "TAG...", "remove_tags": "TAG...", "replace_tag": "OLD [NEW]", "move": "FOLDER",
             "crop": "X0 Y0 X1 Y1"}
    if kind in ("add_tags", "remove_tags") and values:
        return {"tags": values}
    if kind == "replace_tag" and len(values) in (1, 2):
        return {"old": values[0], "new": values[1] if len(values) == 2 else ""}
    if kind == "move" and len(values) == 1:
        return {"folder": values[0]}
    if kind == "crop" and len(values) == 4:
        try:
            return {"keep": [float(v) for v in values]}
        except ValueError:
            raise EditError(f"keep: {' '.join(values)} are not four numbers 0..1") from None
    if kind not in usage and kind in KINDS and not values:
        return {}
    if kind not in KINDS:
        raise EditError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    raise EditError(f"{kind}: give {usage.get(kind, 'no values')} after the target")
