"""The edits API: the review studio's corrections, stored in the work dir's catalog.

Every function opens the catalog, does its work and closes it (a running bake opens it
between its own steps too). The rules (what a valid edit is, how a stage applies it) are
in bakery/craft/edits.py; the stages read `active_edits` at the start of each run.

Export/import: `<recipe stem>.edits.toml` next to the recipe, so edits travel with it.
`bakery run` imports that file when it exists; an import adds the edits the catalog does
not hold yet and the undos it has not seen, and never removes or revives one, so importing
the same file again adds nothing.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from bakery.craft.edits import (HASH_PREFIX, KINDS, Edit, EditError, Known, check_edit, check_known, edit_fingerprint,
                                flat_name)
from storage import Catalog
from storage.catalog import INTERACTIVE_WAIT_S

__all__ = ["KINDS", "Edit", "EditError", "add_edit", "list_edits", "undo_edit", "export_edits", "import_edits",
           "edits_file", "active_edits", "crop_keeps", "image_edits", "describe"]

EDITS_SUFFIX = ".edits.toml"


def edits_file(recipe_path: Path) -> Path:
    """Where a recipe's edits travel: `<recipe stem>.edits.toml` next to it."""
    recipe_path = Path(recipe_path)
    return recipe_path.with_name(recipe_path.stem + EDITS_SUFFIX)


@contextmanager
def _catalog(workdir: Path, read_only: bool = False) -> Iterator[Catalog]:
    path = Path(workdir) / "catalog.duckdb"
    if read_only and not path.exists():
        raise EditError(f"catalog: no catalog in {workdir}: run the recipe first")
    try:
        with Catalog.open(path, read_only=read_only, wait_s=INTERACTIVE_WAIT_S) as cat:
            yield cat
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise EditError(f"catalog: {path} is in use by a running bake; try again when it ends") from None
        raise


def _edit(row: dict) -> Edit:
    return Edit(row["id"], row["kind"], row["target"], row["payload"], row["reason"], row["created_at"],
                row["undone_at"])


def known_from_last_run(cat: Catalog) -> Known:
    """The picture names, folders and dropped near-duplicates of the work dir's last run (None: no run yet)."""
    run = cat.last_run()
    if run is None:
        return Known()
    recipe = json.loads(run["recipe"]) if isinstance(run["recipe"], str) else run["recipe"]
    folders = set()
    for c in recipe.get("concepts", []):
        folders.add(c["name"])
        for o in c.get("outfits", []):
            folders.update([o["name"]] + ([f"{o['name']}_unpruned"] if c.get("duplicate_split") else []))
    skips = cat.skips_for(run["run_id"])
    trained = cat.runs_with("train_captions")
    rows = cat.train_captions(trained[0]) if trained else []
    names = {s["subject"] for s in skips} | {r["name"] for r in rows} | {r["image_hash"] for r in rows}
    names |= {flat_name(n) for n in names}
    dropped = {s["subject"] for s in skips if s["stage"] == "dedupe" and s["reason"].startswith("near duplicate")}
    dropped |= {r["image_hash"] for r in cat.rows("SELECT image_hash FROM duplicates WHERE stage = 'dedupe'")}
    checkable = bool(rows) or any(s["stage"] == "prune" for s in skips)
    return Known(frozenset(names) if checkable else None, frozenset(folders) if recipe.get("concepts") else None,
                 frozenset(dropped))


def add_edit(workdir: Path, kind: str, target: str, payload: dict | None = None, reason: str = "") -> Edit:
    """Check an edit (its text, and its names against the last run) and store it; EditError if bad."""
    kind, target, payload, reason = check_edit(kind, target, payload, reason)
    with _catalog(workdir) as cat:
        check_known(kind, target, payload, known_from_last_run(cat))
        edit_id = cat.add_edit(kind, target, payload, reason)
        return _edit(next(r for r in cat.edits(include_undone=True) if r["id"] == edit_id))


def list_edits(workdir: Path, include_undone: bool = False) -> list[Edit]:
    if not (Path(workdir) / "catalog.duckdb").exists():
        return []
    with _catalog(workdir) as cat:
        return [_edit(r) for r in cat.edits(include_undone)]


def active_edits(workdir: Path) -> list[Edit]:
    """The edits a run applies (not undone), in order."""
    return list_edits(workdir)


def undo_edit(workdir: Path, edit_id: int) -> Edit:
    with _catalog(workdir) as cat:
        if not cat.undo_edit(int(edit_id)):
            raise EditError(f"id: no active edit #{edit_id} (see `bakery edits RECIPE list`)")
        return _edit(next(r for r in cat.edits(include_undone=True) if r["id"] == int(edit_id)))


def crop_keeps(workdir: Path) -> dict[str, list[float]]:
    """Picture (as the edit names it) -> [x0, y0, x1, y1], the part its bucket crop must keep (latest crop wins)."""
    from bakery.craft.edits import crop_boxes

    return crop_boxes(active_edits(workdir))


def image_edits(cat: Catalog, hashes: list[str]) -> list[Edit]:
    """Every edit (undone ones too) naming a picture whose chain holds `hashes` (its provenance)."""
    if not hashes:
        return []
    names = {r["name"] for r in cat.rows("SELECT name FROM sources WHERE image_hash IN (SELECT unnest(?))", [hashes])}
    names |= {r["name"] for r in cat.rows("SELECT DISTINCT name FROM train_captions "
                                          "WHERE image_hash IN (SELECT unnest(?))", [hashes])}
    names |= {flat_name(n) for n in names}
    out = []
    for e in (_edit(r) for r in cat.edits(include_undone=True)):
        t = e.target.lower()
        if e.target in names or (len(t) >= HASH_PREFIX and any(h.startswith(t) for h in hashes)):
            out.append(e)
    return out


def describe(e: Edit) -> str:
    """One line: `edit #3 exclude chara/a {} at 2026-11-25 23:50:00 (undone ...): reason`."""
    undone = f" (undone {e.undone_at:%Y-%m-%d %H:%M:%S})" if e.undone_at else ""
    payload = f" {json.dumps(e.payload, ensure_ascii=False)}" if e.payload else ""
    return (f"edit #{e.id} {e.kind} {e.target}{payload} at {e.created_at:%Y-%m-%d %H:%M:%S}{undone}"
            + (f": {e.reason}" if e.reason else ""))


# -- export / import ------------------------------------------------------------------------
def _toml_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in sorted(value.items())) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def export_edits(workdir: Path, path: Path) -> int:
    """Write every edit (undone ones with their undone_at) to a TOML file; returns how many."""
    edits = list_edits(workdir, include_undone=True)
    lines = ["# LoRA Bakery edits: `bakery run` imports this file (importing twice adds nothing).", ""]
    for e in edits:
        lines += ["[[edit]]", f"id = {e.id}", f"kind = {_toml_value(e.kind)}", f"target = {_toml_value(e.target)}",
                  f"payload = {_toml_value(e.payload)}", f"reason = {_toml_value(e.reason)}",
                  f"created_at = {_toml_value(e.created_at)}"]
        lines += [f"undone_at = {_toml_value(e.undone_at)}"] if e.undone_at else []
        lines.append("")
    Path(path).write_text("\n".join(lines), encoding="utf-8")
    return len(edits)


def _read_file(path: Path) -> list[tuple[str, str, dict, str, datetime, datetime | None]]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EditError(f"{path}: {exc}") from None
    out = []
    for i, entry in enumerate(data.get("edit", [])):
        try:
            kind, target, payload, reason = check_edit(entry.get("kind"), entry.get("target"), entry.get("payload"),
                                                       entry.get("reason", ""))
        except EditError as exc:
            raise EditError(f"{path}: edit[{i}] {exc}") from None
        created, undone = entry.get("created_at"), entry.get("undone_at")
        if not isinstance(created, datetime) or (undone is not None and not isinstance(undone, datetime)):
            raise EditError(f"{path}: edit[{i}] created_at/undone_at: give a date and time")
        utc = (lambda d: d if d is None or d.tzinfo else d.replace(tzinfo=timezone.utc))
        out.append((kind, target, payload, reason, utc(created), utc(undone)))
    return out


def import_edits(workdir: Path, path: Path) -> int:
    """Add the file's edits the catalog lacks and its undos; returns how many edits were added or undone."""
    entries = _read_file(path)
    changed = 0
    with _catalog(workdir) as cat:
        held = {edit_fingerprint(r["kind"], r["target"], r["payload"], r["created_at"]): r
                for r in cat.edits(include_undone=True)}
        for kind, target, payload, reason, created, undone in entries:
            row = held.get(edit_fingerprint(kind, target, payload, created))
            if row is None:
                cat.add_edit(kind, target, payload, reason, created, undone)
                changed += 1
            elif undone is not None and row["undone_at"] is None:
                cat.undo_edit(row["id"], undone)
                changed += 1
    return changed
