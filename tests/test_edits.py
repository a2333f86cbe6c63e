"""Edits (issue 15): the rules, the API on a real catalog, and a real `bakery run` applying them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from bakery import edits as api
from bakery.craft import edits as craft
from bakery.craft.edits import Edit, EditError
from storage import Catalog
from tests.test_captions_flow import CONCEPTS  # CharaA (chara/*) and its outfit Outfit1 (chara/outfit1/*)


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
    members, unassigned = craft.apply_layout({"CharaA": ["chara/a", "chara/b"], "Outfit1": []}, ["c"], plan)
    assert members == {"CharaA": ["chara/b"], "Outfit1": ["c"]} and unassigned == []
    assert craft.exclusion_reason(plan.excluded["chara/a"]) == "excluded by edit #1: blurry"
    assert [craft.Edit.from_key(e.key()) for e in edits] == edits


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


# -- a real `bakery run` applying them ----------------------------------------------------------
PREPARE = ("alpha", "trim", "upscale", "masks", "buckets")


def _noise(path: Path, seed: int, size: tuple[int, int] = (64, 64), tags: str = "") -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize(size, Image.NEAREST).save(path)
    if tags:
        path.with_suffix(".txt").write_text(tags, encoding="utf-8")


def _edit_dataset(tmp_path: Path) -> Path:
    from PIL import Image

    images = tmp_path / "images"
    _noise(images / "chara/a.png", 1, tags="1girl, smile, circlet, looking_at_viewer")
    _noise(images / "chara/b.png", 2, tags="1girl, circlet, open_mouth")
    _noise(images / "chara/c.png", 3, tags="1girl, sitting")
    _noise(images / "chara/e.png", 4, tags="1girl, blurry")
    _noise(images / "chara/outfit1/o.png", 5, tags="1girl, standing, circlet")
    twin = Image.open(images / "chara/b.png").convert("RGB")  # b's near-duplicate: one pixel differs
    twin.putpixel((0, 0), (0, 0, 0) if twin.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
    twin.save(images / "chara/b2.png")
    (images / "chara/b2.txt").write_text("1girl, circlet, open_mouth", encoding="utf-8")
    return images


def _statuses(work: Path, run_id: str) -> dict[str, tuple[str, int]]:
    with Catalog.open(work, read_only=True) as cat:
        return {s["stage"]: (s["status"], s["n_processed"]) for s in cat.stage_table(run_id)}


def _ran(work: Path, run_id: str) -> set[str]:
    return {s for s, (status, _) in _statuses(work, run_id).items() if status == "ran"}


def _export(recipe: Path, out: Path) -> dict[tuple[str, str], str]:
    """The export-kohya output: (folder without repeats, file) -> caption."""
    from bakery.kohya_export import export_kohya
    from bakery.recipe import load_recipe

    export_kohya(load_recipe(recipe), out, force=True)
    return {(p.parent.name.split("_", 1)[1], p.stem): p.read_text(encoding="utf-8")
            for p in sorted((out / "img").glob("*/*.txt"))}


def _first_run(tmp_path: Path) -> tuple[Path, Path, dict, str]:
    """The dataset baked once: the recipe, the work dir, its export, and the near-duplicate dedupe dropped."""
    from flows.bake import bake_lora
    from tests.conftest import write_recipe

    _edit_dataset(tmp_path)
    recipe = write_recipe(tmp_path, CONCEPTS + "\n[captions]\nsynonyms = {}\n")  # circlet stays circlet
    work = tmp_path / "work"
    first = bake_lora(str(recipe))
    assert _ran(work, first) >= {"ingest", "convert", "dedupe", *PREPARE, "prune"}
    with Catalog.open(work, read_only=True) as cat:
        dropped = [s["subject"] for s in cat.skips_for(first) if s["reason"].startswith("near duplicate")]
        folders = {r["name"]: r["folder"] for r in cat.train_captions(first)}
    assert len(dropped) == 1 and dropped[0] in ("chara/b", "chara/b2")
    assert folders["chara_c"] == "CharaA" and "chara_e" in folders
    return recipe, work, _export(recipe, tmp_path / "out1"), dropped[0]


def _prune_edits(recipe: Path, work: Path, before: dict) -> tuple[dict, str]:
    """Tag edits, an exclude and a move (and one undone): prune alone runs again; the export changes as edited."""
    from flows.bake import bake_lora

    api.add_edit(work, "add_tags", "chara/a", {"tags": ["blue sky"]}, "the sky shows")
    api.add_edit(work, "remove_tags", "chara_a", {"tags": ["smile"]})  # its kohya file name
    repeats_dir = next(p.name for p in (recipe.parent / "out1/img").iterdir() if p.name.endswith("_CharaA"))
    api.add_edit(work, "replace_tag", repeats_dir, {"old": "circlet", "new": "tiara"}, "it is a tiara")
    excluded = api.add_edit(work, "exclude", "chara/e", {}, "blurry")
    api.add_edit(work, "move", "chara/c", {"folder": "Outfit1"})
    api.undo_edit(work, api.add_edit(work, "exclude", "chara/a", {}, "changed my mind").id)
    with pytest.raises(EditError, match="target: no picture 'chara/zz' in the last run"):
        api.add_edit(work, "exclude", "chara/zz")
    with pytest.raises(EditError, match="folder: no folder 'Nowhere'"):
        api.add_edit(work, "move", "chara/c", {"folder": "Nowhere"})
    second = bake_lora(str(recipe))
    assert _ran(work, second) == {"prune"}, _statuses(work, second)
    after = _export(recipe, recipe.parent / "out2")
    expected = dict(before)
    expected[("CharaA", "chara_a")] = before[("CharaA", "chara_a")].replace("smile, ", "") + ", blue_sky"
    expected[("Outfit1", "chara_c")] = "CharaA, Outfit1, " + expected.pop(("CharaA", "chara_c")).split(", ", 1)[1]
    del expected[("CharaA", "chara_e")]
    expected = {k: v.replace("circlet", "tiara") if k[0] == "CharaA" else v for k, v in expected.items()}
    assert after == expected
    assert "circlet" in after[("Outfit1", "chara_outfit1_o")]  # replace_tag stays in its folder
    with Catalog.open(work, read_only=True) as cat:
        skips = {s["subject"]: s["reason"] for s in cat.skips_for(second) if s["stage"] == "prune"}
    assert skips == {"chara/e": f"excluded by edit #{excluded.id}: blurry"}
    # The export names the excluded picture and why (issue 25 item 8).
    left = (recipe.parent / "out2/left_out.tsv").read_text(encoding="utf-8").splitlines()
    assert f"chara/e\tprune\texcluded by edit #{excluded.id}: blurry" in left
    return after, repeats_dir


@pytest.mark.usefixtures("prefect_server")
def test_a_run_applies_the_edits_and_reruns_only_the_concerned_stages(tmp_path: Path):
    import json
    import shutil

    from flows.bake import bake_lora

    recipe, work, before, dropped = _first_run(tmp_path)
    after, repeats_dir = _prune_edits(recipe, work, before)

    # A crop: buckets alone runs again (its pictures are the same, so prune comes back cached).
    api.add_edit(work, "crop", "chara_a", {"keep": [0.25, 0, 0.75, 1]}, "keep the face")
    third = bake_lora(str(recipe))
    assert _ran(work, third) == {"buckets"}, _statuses(work, third)
    assignment = json.loads((work / "reports/buckets.json").read_text(encoding="utf-8"))
    assert assignment["chara/a"]["keep_box"] == [0.25, 0.0, 0.75, 1.0] and "keep_box" not in assignment["chara/c"]

    # Keep the dropped near-duplicate: dedupe runs, and the stages after it work on that one picture only.
    api.add_edit(work, "keep_duplicate", dropped, {}, "another expression")
    table = _statuses(work, bake_lora(str(recipe)))
    assert table["ingest"][0] == table["convert"][0] == "cached" and table["dedupe"][0] == "ran"
    assert all(table[s][1] <= 1 for s in PREPARE[:-1]), table  # buckets re-places all from the catalog's sizes
    final = _export(recipe, tmp_path / "out3")
    twin, kept = dropped.replace("/", "_"), ({"chara/b", "chara/b2"} - {dropped}).pop().replace("/", "_")
    assert final[("CharaA", twin)] == final[("CharaA", kept)]
    assert set(final) - set(after) == {("CharaA", twin)}

    # Nothing new: every stage cached. Then the edits travel: export, a fresh work dir imports them on its run.
    fifth = bake_lora(str(recipe))
    assert _ran(work, fifth) == set(), _statuses(work, fifth)
    assert api.export_edits(work, api.edits_file(recipe)) == 8  # the undone one too
    shutil.rmtree(work)
    sixth = bake_lora(str(recipe))
    assert [(e.kind, e.target) for e in api.list_edits(work)] == [
        ("add_tags", "chara/a"), ("remove_tags", "chara_a"), ("replace_tag", repeats_dir), ("exclude", "chara/e"),
        ("move", "chara/c"), ("crop", "chara_a"), ("keep_duplicate", dropped)]
    assert _export(recipe, tmp_path / "out4") == final
    assert _ran(work, sixth) >= {"ingest", "prune"}


@pytest.mark.usefixtures("prefect_server")
def test_cli_edit_edits_and_provenance_show_the_edit(tmp_path: Path):
    from typer.testing import CliRunner

    from bakery.cli import app
    from flows.bake import bake_lora
    from tests.conftest import write_recipe

    _edit_dataset(tmp_path)
    recipe = write_recipe(tmp_path, CONCEPTS)
    bake_lora(str(recipe))
    cli = CliRunner()
    done = cli.invoke(app, ["edit", str(recipe), "add_tags", "chara/a", "blue sky", "--reason", "the sky"])
    assert done.exit_code == 0, done.output
    assert "added: edit #1 add_tags chara/a {\"tags\": [\"blue_sky\"]} at " in done.output
    bad = cli.invoke(app, ["edit", str(recipe), "add_tags", "chara/a", "a,b"])
    assert bad.exit_code == 1 and "bakery: tags[0]: 'a,b' has a comma" in bad.output
    bad = cli.invoke(app, ["edit", str(recipe), "crop", "chara/a", "0", "0"])
    assert bad.exit_code == 1 and "crop: give X0 Y0 X1 Y1 after the target" in bad.output
    assert cli.invoke(app, ["edit", str(recipe), "exclude", "chara/e"]).exit_code == 0
    assert cli.invoke(app, ["edits", str(recipe), "undo", "2"]).exit_code == 0
    listed = cli.invoke(app, ["edits", str(recipe), "list", "--all"]).output.splitlines()
    assert [line.split(" at ")[0] for line in listed] == ["edit #1 add_tags chara/a {\"tags\": [\"blue_sky\"]}",
                                                        "edit #2 exclude chara/e"]
    assert "(undone " in listed[1]
    out = cli.invoke(app, ["edits", str(recipe), "export"])
    assert out.exit_code == 0 and (tmp_path / "recipe.edits.toml").is_file(), out.output
    assert "imported 0 edit(s)" in cli.invoke(app, ["edits", str(recipe), "import"]).output
    second = bake_lora(str(recipe))
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        digest = next(r["image_hash"] for r in cat.train_captions(second) if r["name"] == "chara_a")
    shown = cli.invoke(app, ["provenance", str(recipe), digest[:12]])
    assert shown.exit_code == 0, shown.output
    assert "edit #1 add_tags chara/a" in shown.output and ": the sky" in shown.output
    assert "edit #2" not in shown.output  # about another picture
