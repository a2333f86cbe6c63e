"""The studio's edit forms: a posted form -> one call of the edits API (bakery/edits.py), errors as one line.

The edits API validates what an edit says (tag text, names) and stores it; this
module only checks that the form is complete and well formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from bakery.review import data
from bakery.review.views import StudioError, parse_tags

CROP_FIELDS = ("x0", "y0", "x1", "y1")


@dataclass(frozen=True)
class EditForm:
    kind: str
    target: str
    payload: dict
    reason: str


def api():
    try:
        from bakery import edits
    except ImportError:
        raise StudioError(503, "edits need the edits API (bakery/edits.py), which this install lacks") from None
    return edits


def parse(form: dict[str, str]) -> EditForm:
    kind, target = form.get("kind", ""), form.get("target", "").strip()
    if kind not in api().KINDS:
        raise StudioError(400, f"kind: unknown edit '{kind[:40]}' (one of {', '.join(api().KINDS)})")
    if not target:
        raise StudioError(400, "target: name the picture (or, for replace_tag, the folder)")
    return EditForm(kind, target, payload(kind, form), form.get("reason", "").strip())


def payload(kind: str, form: dict[str, str]) -> dict:
    if kind in ("add_tags", "remove_tags"):
        tags = parse_tags(form.get("tags", ""))
        if not tags:
            raise StudioError(400, "tags: give at least one tag")
        return {"tags": tags}
    if kind == "replace_tag":
        return {"old": form.get("old", "").strip(), "new": form.get("new", "").strip()}
    if kind == "move":
        return {"folder": form.get("folder", "").strip()}
    if kind == "crop":
        try:
            return {"keep": [float(form.get(k, "")) for k in CROP_FIELDS]}
        except ValueError:
            raise StudioError(400, "crop: x0, y0, x1, y1 must be numbers from 0 to 1") from None
    return {}


def _call(fn, *args):
    edits = api()
    with data.CATALOG_LOCK:
        try:
            return fn(*args)
        except edits.EditError as exc:  # "catalog: ... in use by a running bake" is the one not about the edit
            raise StudioError(503 if str(exc).startswith("catalog:") else 400, str(exc)) from None
        except duckdb.IOException:
            raise StudioError(503, "the catalog is busy (a `bakery run` is writing it): try again when the run ends") from None


def apply(workdir: Path, made: EditForm):
    return _call(api().add_edit, workdir, made.kind, made.target, made.payload, made.reason)


def undo(workdir: Path, edit_id: int):
    return _call(api().undo_edit, workdir, edit_id)


def listed(workdir: Path) -> list:
    if not (workdir / "catalog.duckdb").is_file():
        raise data.CatalogBusy(f"no catalog in {workdir} yet: run the recipe first (bakery run RECIPE)")
    return _call(api().list_edits, workdir, True)


def transfer(workdir: Path, recipe_path: Path, action: str) -> int:
    path = api().edits_file(recipe_path)
    if action == "import" and not path.is_file():
        raise StudioError(400, f"import: no {path.name} beside the recipe")
    fn = api().export_edits if action == "export" else api().import_edits
    return _call(fn, workdir, path)


def naming(workdir: Path, name: str, sha256: str) -> list:
    """The edits (undone ones too) that name this picture, by its name, kohya file name or content hash."""
    from bakery.craft.edits import resolve, resolver

    aliases = resolver({name: sha256})
    return [e for e in listed(workdir) if e.kind != "replace_tag" and resolve(e.target, aliases) == name]
