"""Edits (issue 15): the rules, the API on a real catalog, and a real `bakery run` applying them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from bakery import edits as api
from bakery.craft import edits as craft
from bakery.craft.edits import Edit, EditError
from storage import Catalog


def E(i: int, kind: str, target: str, payload: dict | None = None, reason: str = "") -> Edit:
    return Edit(i, kind, target, payload or {}, reason, datetime(2026, 1, 1, tzinfo=timezone.utc))


# -- the rules (no Prefect, no catalog) ---------------------------------------------------------
@pytest.mark.parametrize(("kind", "target", "payload", "message"), [
    ("frobnicate", "a", {}, "kind: 'frobnicate' is not one of"),
    ("add_tags", "a", {"tags": ["red, blue"]}, "tags[0]: 'red, blue' has a comma"),
    ("add_tags", "a", {"tags": "red"}, "tags: give a non-empty list"),
    ("add_tags", "a", {"tags": []}, "tags: give a non-empty list"),
    ("add_tags", "a", {"tags": ["a|b"]}, "has a '|'"),
    ("add_tags", "a", {"tags": ["artist:someone"]}, "has a 'artist:' prefix"),
    ("remove_tags", "a", {"tags": ["  "]}, "tags[0]: is empty"),
    ("add_tags", "a\nb", {"tags": ["x"]}, "target: 'a\\nb' holds a line break"),
    ("exclude", "", {}, "target: is empty"),
    ("exclude", "a", {"tags": ["x"]}, "payload: exclude takes no 'tags'"),
    ("replace_tag", "../etc", {"old": "a", "new": "b"}, "target: '../etc' is not a folder name"),
    ("replace_tag", "alice", {"old": "a", "new": "A"}, "new: same as old"),
    ("move", "a", {"folder": "bad/folder"}, "folder: 'bad/folder' is not a folder name"),
    ("crop", "a", {"keep": [0.5, 0, 0.2, 1]}, "keep: [0.5, 0, 0.2, 1] is empty"),
    ("crop", "a", {"keep": [0, 0, 1.5, 1]}, "has a value outside 0..1"),
    ("crop", "a", {"keep": [0, 0, 1]}, "keep: give [x0, y0, x1, y1]"),
])
def test_bad_edits_get_one_line_naming_the_field(kind, target, payload, message):
    with pytest.raises(EditError) as err:
        craft.check_edit(kind, target, payload, "why")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_edits_are_normalised_like_the_prune_code_keeps_tags():
    assert craft.check_edit("add_tags", " chara/a ", {"tags": ["White Shirt", "white_shirt", "\\(cosplay\\)"]}) == (
        "add_tags", "chara/a", {"tags": ["white_shirt", "(cosplay)"]}, "")
    assert craft.check_edit("replace_tag", "10_alice", {"old": "Circlet", "new": ""}, " r ")[2:] == (
        {"old": "circlet", "new": ""}, "r")
    assert craft.check_edit("crop", "a", {"keep": [0, 0.25, 1, 1]})[2] == {"keep": [0.0, 0.25, 1.0, 1.0]}


def test_names_are_checked_against_what_the_last_run_knows():
    h = "ab" * 32
    known = craft.Known(frozenset({"chara_a", "chara/b", h}), frozenset({"alice", "Outfit1"}), frozenset({"chara/b"}))
    craft.check_known("exclude", "chara/a", {}, known)  # its kohya file name is known
    craft.check_known("exclude", h[:8], {}, known)  # a hash prefix
    craft.check_known("replace_tag", "10_alice", {"old": "x", "new": ""}, known)  # the kohya directory
    craft.check_known("keep_duplicate", "chara/b", {}, known)
    for kind, target, payload, message in [
        ("exclude", "chara/zz", {}, "target: no picture 'chara/zz' in the last run"),
        ("keep_duplicate", "chara/a", {}, "target: 'chara/a' is not a near-duplicate the last run dropped"),
        ("move", "chara/a", {"folder": "bob"}, "folder: no folder 'bob' (folders: Outfit1, alice)"),
        ("replace_tag", "bob", {"old": "x", "new": ""}, "target: no folder 'bob'"),
    ]:
        with pytest.raises(EditError, match=message.replace("(", r"\(").replace(")", r"\)")):
            craft.check_known(kind, target, payload, known)
    craft.check_known("exclude", "anything", {}, craft.Known())  # no run yet: nothing to check against


def test_prune_plan_latest_exclude_or_include_wins_and_unknown_names_warn():
    pictures = {"chara/a": "aa" * 32, "chara/b": "bb" * 32, "c": "cc" * 32}
    edits = [E(1, "exclude", "chara_a", reason="blurry"), E(2, "exclude", "chara/b"), E(3, "include", "chara/b"),
             E(4, "move", "cccccccc", {"folder": "10_Outfit1"}), E(5, "exclude", "nobody"),
             E(6, "crop", "c", {"keep": [0, 0, 1, 1]}), E(7, "move", "c", {"folder": "nowhere"})]
    plan = craft.plan_prune(edits, pictures, ["CharaA", "Outfit1"])
    assert list(plan.excluded) == ["chara/a"] and plan.excluded["chara/a"].label() == "edit #1: blurry"
    assert {n: f for n, (f, _) in plan.moves.items()} == {"c": "Outfit1"}
    assert plan.warnings == ["edit #5 (exclude) left out: no picture 'nobody' here",
                             "edit #7 (move) left out: no folder 'nowhere' in the recipe"]
    members, unassigned = craft.apply_moves({"CharaA": ["chara/a", "chara/b"], "Outfit1": []}, ["c"], plan.moves)
    assert members == {"CharaA": ["chara/a", "chara/b"], "Outfit1": ["c"]} and unassigned == []


def test_tag_edits_apply_in_order_and_added_tags_survive_pruning():
    cleaned = {"a": ["1girl", "circlet", "smile"], "b": ["circlet"], "c": ["circlet"]}
    members = {"F": ["a", "b"], "G": ["c"]}
    edits = [(E(1, "add_tags", "", {"tags": ["hat", "smile"]}), "a"), (E(2, "remove_tags", "", {"tags": ["1girl"]}), "a"),
             (E(3, "replace_tag", "F", {"old": "circlet", "new": "tiara"}), "F"),
             (E(4, "replace_tag", "G", {"old": "circlet", "new": ""}), "G"),
             (E(5, "remove_tags", "", {"tags": ["hat"]}), "a")]
    tags, added = craft.apply_tags(cleaned, members, edits)
    assert tags == {"a": ["tiara", "smile"], "b": ["tiara"], "c": []}
    assert added == {"a": ["smile", "tiara"], "b": ["tiara"]}
    assert craft.keep_added(["x"], added["a"]) == ["x", "smile", "tiara"]


def test_undone_edits_concern_no_stage():
    undone = Edit(9, "keep_duplicate", "d", {}, "", datetime(2026, 1, 1, tzinfo=timezone.utc),
                  datetime(2026, 1, 2, tzinfo=timezone.utc))
    edits = [E(1, "keep_duplicate", "x"), undone, E(2, "crop", "y", {"keep": [0, 0, 0.5, 1]}), E(3, "exclude", "z")]
    assert craft.keep_list(edits) == ["x"]
    assert craft.crop_boxes(edits) == {"y": [0, 0, 0.5, 1]}
    assert [e.id for e in craft.concerning(edits, "prune")] == [3]


# -- the API on a real catalog ------------------------------------------------------------------
def test_api_add_list_undo_export_import_round_trip(tmp_path: Path):
    work = tmp_path / "work"
    first = api.add_edit(work, "exclude", "chara/a", {}, "blurry")
    assert (first.id, first.kind, first.reason, first.undone_at) == (1, "exclude", "blurry", None)
    second = api.add_edit(work, "add_tags", "chara/b", {"tags": ["Red Hat"]})
    assert second.payload == {"tags": ["red_hat"]}
    api.add_edit(work, "crop", "chara/b", {"keep": [0.1, 0, 0.9, 1]}, 'a "quoted" reason')
    undone = api.undo_edit(work, 1)
    assert undone.undone_at is not None
    with pytest.raises(EditError, match="id: no active edit #1"):
        api.undo_edit(work, 1)
    with pytest.raises(EditError, match="kind: "):
        api.add_edit(work, "delete", "chara/a")
    assert [e.id for e in api.list_edits(work)] == [2, 3]
    assert [e.id for e in api.list_edits(work, include_undone=True)] == [1, 2, 3]
    assert api.crop_keeps(work) == {"chara/b": [0.1, 0.0, 0.9, 1.0]}

    file = api.edits_file(tmp_path / "recipe.toml")
    assert file == tmp_path / "recipe.edits.toml"
    assert api.export_edits(work, file) == 3
    other = tmp_path / "other"
    assert api.import_edits(other, file) == 3
    assert api.import_edits(other, file) == 0  # idempotent
    mine = [(e.kind, e.target, e.payload, e.reason, e.undone_at is None) for e in api.list_edits(work, True)]
    theirs = [(e.kind, e.target, e.payload, e.reason, e.undone_at is None) for e in api.list_edits(other, True)]
    assert mine == theirs
    api.undo_edit(work, 2)  # an undo travels too; it never revives or removes one
    api.export_edits(work, file)
    assert api.import_edits(other, file) == 1
    assert [e.id for e in api.list_edits(other)] == [3]


def test_import_of_a_bad_file_names_the_entry(tmp_path: Path):
    file = tmp_path / "r.edits.toml"
    file.write_text('[[edit]]\nkind = "add_tags"\ntarget = "a"\npayload = { tags = ["a,b"] }\n'
                    'created_at = 2026-01-01T00:00:00Z\n', encoding="utf-8")
    with pytest.raises(EditError, match=r"edit\[0\] tags\[0\]: 'a,b' has a comma"):
        api.import_edits(tmp_path / "work", file)
    file.write_text("[[edit]\n", encoding="utf-8")
    with pytest.raises(EditError, match="r.edits.toml: "):
        api.import_edits(tmp_path / "work", file)


def test_a_locked_catalog_gives_one_clear_line(tmp_path: Path):
    import subprocess
    import sys

    work = tmp_path / "work"
    api.add_edit(work, "exclude", "a")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(30)", str(work / "catalog.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(EditError, match="catalog: .* is in use by a running bake; try again when it ends"):
            api.add_edit(work, "exclude", "b")
    finally:
        holder.kill()
        holder.wait()
    with Catalog.open(work, read_only=True) as cat:
        assert [r["target"] for r in cat.edits()] == ["a"]
