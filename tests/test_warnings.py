"""Warnings are first-class: a real run records the guide's warnings with their run and stage, `bakery status`
lists them, the studio shows them (per picture where one names it), and a cached re-run records the same."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bakery.cli import app
from bakery.review import create_app
from storage import Catalog
from tasks.report import run_summary_markdown
from tasks.stage import RunInfo
from tests.conftest import write_recipe
from tests.images import gradient
from tests.review_work import Served
from tests.test_captions_flow import CONCEPTS

pytestmark = pytest.mark.usefixtures("prefect_server")

RECIPE = """
[dedupe]
near = false

[validation]
enabled = false
""" + CONCEPTS
# A caption a tagger gone wrong could write: well over the guide's 1 KB.
LONG = ", ".join(f"made_up_tag_number_{k:03d}_of_a_tagger_gone_wrong" for k in range(40))


def _dataset(root: Path) -> None:
    """Six pictures of the character, an outfit of three (the guide wants >= 8), one caption over 1 KB."""
    (root / "chara" / "outfit1").mkdir(parents=True)
    for i in range(6):
        gradient(64, 64, seed=i).save(root / f"chara/p{i}.png")
        (root / f"chara/p{i}.txt").write_text(LONG if i == 0 else "1girl, smile", encoding="utf-8")
    for i in range(3):
        gradient(64, 64, seed=10 + i).save(root / f"chara/outfit1/o{i}.png")
        (root / f"chara/outfit1/o{i}.txt").write_text("1girl, red_dress", encoding="utf-8")


def _warnings(work: Path, run_id: str) -> list[tuple[str, str]]:
    with Catalog.open(work, read_only=True) as cat:
        return [(w["stage"], w["message"]) for w in cat.stage_warnings(run_id)]


def _stages(work: Path, run_id: str) -> dict[str, str]:
    with Catalog.open(work, read_only=True) as cat:
        return {s["stage"]: s["status"] for s in cat.stage_table(run_id)}


def test_the_guides_warnings_are_recorded_listed_and_shown_and_a_cached_run_keeps_them(tmp_path: Path):
    from flows.bake import bake_lora, replay_cached

    assert len(LONG.encode()) > 1024
    _dataset(tmp_path / "images")
    recipe = write_recipe(tmp_path, RECIPE)
    work = tmp_path / "work"
    first = bake_lora(str(recipe))
    warned = _warnings(work, first)
    prune = [m for s, m in warned if s == "prune"]
    assert any(m.startswith("Outfit1: 3 images; an outfit needs >= 8") for m in prune), warned
    long = [m for m in prune if "caption is" in m]
    assert len(long) == 1 and long[0].startswith("CharaA/chara/p0: caption is ") and "(> 1024)" in long[0], prune
    assert ("bake", next(m for s, m in warned if s == "bake")) in warned  # no base model: said, not only logged

    # A run whose every stage is cached records the same warnings, with Prefect and replayed without it.
    again = bake_lora(str(recipe))
    assert _stages(work, again)["prune"] == "cached"
    assert _warnings(work, again) == warned
    replayed = replay_cached(str(recipe))
    assert replayed and replayed != again and _stages(work, replayed)["prune"] == "cached"
    assert _warnings(work, replayed) == warned

    out = CliRunner().invoke(app, ["status", str(recipe)])
    assert out.exit_code == 0, out.output
    head = re.search(r"^warnings \((\d+)\): (.+)$", out.output, re.M)
    assert head and int(head.group(1)) == len(warned) and f"prune {len(prune)}" in head.group(2), out.output
    assert "prune: Outfit1: 3 images; an outfit needs >= 8" in out.output and "CharaA/chara/p0: caption is" in out.output
    every = CliRunner().invoke(app, ["status", str(recipe), "--warnings"])
    assert all(m[:60] in every.output for _, m in warned), every.output
    summary = run_summary_markdown(RunInfo(replayed, str(work)))  # the run's dashboard artifact
    assert f"## Warnings ({len(warned)}: prune {len(prune)}, bake 1)" in summary
    assert "- **prune**: Outfit1: 3 images; an outfit needs >= 8" in summary

    with Served(create_app(recipe)) as served:
        decisions = httpx.get(served.url + "/decisions", timeout=30).text
        table = decisions[decisions.index('id="warnings"'):decisions.index("</table>", decisions.index('id="warnings"'))]
        assert table.count('class="warning"') == len(warned) and "Outfit1: 3 images" in table
        sha = re.search(r'<a href="/picture/([0-9a-f]{64})" data-name="chara/p0">', table).group(1)
        picture = httpx.get(f"{served.url}/picture/{sha}", timeout=30).text
        listed = picture[picture.index('id="picture-warnings"'):picture.index("</ul>", picture.index('id="picture-warnings"'))]
        assert "caption is" in listed and "Outfit1" not in listed  # its own warning, not the outfit's
        flagged = httpx.get(served.url + "/dataset?flag=warned", timeout=30).text
        assert re.findall(r'<div class="card" data-name="([^"]+)"', flagged) == ["chara/p0"]
        outfit = httpx.get(served.url + "/dataset?folder=Outfit1", timeout=30).text
        assert "Outfit1: 3 images; an outfit needs" in outfit
        runs = httpx.get(served.url + "/runs", timeout=30).text
        for run_id in (first, again, replayed):
            block = runs[runs.index(f'data-run="{run_id}"'):]
            assert f"{len(warned)} warning(s)" in block[:block.index("</details>")]


def test_a_crop_edit_whose_picture_is_gone_is_a_warning_of_the_buckets_stage(tmp_path: Path):
    from bakery.edits import add_edit
    from flows.bake import bake_lora

    _dataset(tmp_path / "images")
    recipe = write_recipe(tmp_path, RECIPE)
    work = tmp_path / "work"
    bake_lora(str(recipe))
    edit = add_edit(work, "crop", "chara/p5", {"keep": [0, 0, 0.5, 1]}, "her face")
    (tmp_path / "images/chara/p5.png").unlink()  # the picture the edit names leaves the set
    again = bake_lora(str(recipe))
    assert ("buckets", f"edit #{edit.id} (crop) left out: no picture 'chara/p5' here") in _warnings(work, again)


def test_status_lines_show_the_first_few_of_each_stage_and_say_how_many_more():
    from bakery.report import warning_counts, warning_lines

    warned = [{"stage": "prune", "message": f"w{i}"} for i in range(5)] + [{"stage": "bake", "message": "b"}]
    assert warning_counts(warned) == "prune 5, bake 1"
    assert warning_lines(warned, 3, more="all: X") == [
        "prune: w0", "prune: w1", "prune: w2", "prune: ... and 2 more (all: X)", "bake: b"]
    assert len(warning_lines(warned, None)) == 6


def test_a_warning_names_a_picture_only_as_a_whole():
    from bakery.review import views

    card = views.Card("chara/p1", "chara_p1", "CharaA", 1, "0" * 64, None, "", [], [])
    said = lambda *messages: [w["message"] for w in views.picture_warnings(  # noqa: E731
        [{"stage": "s", "message": m} for m in messages], card, folder_too=True)]
    assert said("CharaA/chara/p1: caption is 2000 bytes", "2 of 9 masks rejected: chara/p0, chara/p1 and 1 more",
                "file chara_p1.", "CharaA: 3 images") == [
        "CharaA/chara/p1: caption is 2000 bytes", "2 of 9 masks rejected: chara/p0, chara/p1 and 1 more",
        "file chara_p1.", "CharaA: 3 images"]
    assert said("chara/p10: long", "x/chara/p1: long", "Outfit1: 3 images", "chara/p1x") == []
