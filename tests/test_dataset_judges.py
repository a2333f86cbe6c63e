"""Dataset screening by deepghs's models (bakery/craft/caption/judged.py) in real runs: CCIP clusters a concept's
pictures and skips the other character's with its difference and the character's typical pictures; classifiers
flag monochrome and rough sketches with their scores; a keep edit trains the skipped picture. The models are
built in deepghs's formats (tests/deepghs_models.py): CCIP judges by the dominant colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bakery.craft.caption import judged as craft
from storage import Catalog
from tests.conftest import write_recipe
from tests.deepghs_models import CCIP_THRESHOLD, write_all, write_ccip

RECIPE = """
[[concepts]]
name = "CharaA"
trigger = "CharaA"
paths = ["chara/*"]

[judges]
ccip_model = "models/ccip"
monochrome_model = "models/monochrome"
completeness_model = "models/completeness"
screen_other_character = "skip"

[validation]
enabled = false
"""
RED, BLUE, PALE = (200, 40, 40), (40, 40, 200), (235, 235, 235)


def _picture(path: Path, rgb, seed: int) -> None:
    """A dominant colour under a random pattern (distinct pictures for dedupe, the same colour for the tiny CCIP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grey = rgb[0] == rgb[1] == rgb[2]
    pattern = rng.integers(-20, 21, (6, 6, 1 if grey else 3))
    pixels = np.clip(np.array(rgb) + pattern, 0, 255).astype(np.uint8)
    Image.fromarray(np.broadcast_to(pixels, (6, 6, 3)).copy()).resize((48, 48), Image.NEAREST).save(path)
    path.with_suffix(".txt").write_text("1girl, solo, red_hair", encoding="utf-8")


@pytest.mark.usefixtures("prefect_server")
def test_ccip_and_classifiers_screen_the_dataset_in_a_real_run(tmp_path: Path):
    from typer.testing import CliRunner

    from bakery.cli import app
    from bakery.review import data
    from flows.bake import bake_lora

    for i in range(5):
        _picture(tmp_path / f"images/chara/r{i}.png", RED, i)
    _picture(tmp_path / "images/chara/other.png", BLUE, 10)
    _picture(tmp_path / "images/chara/sketch.png", PALE, 11)
    write_all(tmp_path / "models")
    recipe = write_recipe(tmp_path, RECIPE)
    work = tmp_path / "work"
    first = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        skips = {s["subject"]: s["reason"] for s in cat.skips_for(first) if s["stage"] == "prune"}
        captions = {r["name"] for r in cat.train_captions(first)}
        decisions = {(d["name"], d["rule"]): d for d in cat.caption_decisions(first)}
        hashes = {d["name"]: d["image_hash"] for d in cat.caption_decisions(first)}
    assert set(skips) == {"chara/other", "chara/sketch"}
    assert skips["chara/other"].startswith("screened out: other character (difference 0.")
    assert "keep chara/other" in skips["chara/other"]
    other = decisions[("chara/other", "judge:other_character")]
    assert other["action"] == "skip" and other["tags"][0].startswith("difference 0.")
    typical = [t.removeprefix("typical:") for t in other["tags"] if t.startswith("typical:")]
    assert len(typical) == 3 and not {hashes.get("chara/other"), hashes.get("chara/sketch")} & set(typical)
    # the classifiers: the pale grey picture is monochrome and a rough sketch, each flagged with its score
    assert decisions[("chara/sketch", "judge:monochrome")]["action"] == "flag"
    assert decisions[("chara/sketch", "judge:monochrome")]["tags"][0].startswith("monochrome 0.")
    assert decisions[("chara/sketch", "judge:rough")]["tags"][0].startswith("rough 0.")
    assert not any(n.startswith("chara/r") for n, _ in decisions)  # the character's pictures pass
    assert captions == {f"chara_r{i}" for i in range(5)}
    shown = data.load_decisions(work)
    assert ("chara/other", "skip") in {(d["name"], d["action"]) for d in shown["screening"]}
    from bakery.review import views

    flagged = {"name": "x", "image_hash": "h", "rule": "judge:monochrome", "action": "flag", "reason": "flagged: m"}
    assert views.decision_flags([flagged]) == {"h": {"screen": "flagged: m"}}  # the studio's card flag

    # The decisions page shows the picture beside the character's typical pictures, with its "keep it" button
    import httpx

    from bakery.review import create_app
    from tests.review_work import Served

    with Served(create_app(recipe)) as studio:
        page = httpx.get(studio.url + "/decisions", timeout=30).text
    row = page[page.index('<tr data-name="chara/other">'):]
    row = row[:row.index("</tr>")]
    assert "judge:other_character" in row and 'value="keep"' in row
    assert all(f"/thumb/{h}/" in row for h in typical)

    # A keep edit trains it on the next run
    out = CliRunner().invoke(app, ["edit", str(recipe), "keep", "chara/other"])
    assert out.exit_code == 0, out.output
    second = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        skips = {s["subject"] for s in cat.skips_for(second) if s["stage"] == "prune"}
        kept = next(d for d in cat.caption_decisions(second) if d["name"] == "chara/other")
    assert skips == {"chara/sketch"} and kept["action"] == "keep"


def test_ccip_clusters_and_the_character():
    # four red pictures alike, two blue ones alike, one alone: the red cluster is the character
    d = np.full((7, 7), 0.6)
    d[np.ix_(range(4), range(4))] = 0.05
    d[np.ix_([4, 5], [4, 5])] = 0.05
    np.fill_diagonal(d, 0)
    assert craft.dbscan(d, 0.18) == [0, 0, 0, 0, 1, 1, -1]
    j = craft.Judgements(ccip_hashes=list("abcdefg"), ccip_diff=d, ccip_threshold=0.18)
    others = craft.other_characters(list("abcdefg"), j)
    assert sorted(others) == ["e", "f", "g"] and others["g"][0] == pytest.approx(0.6)
    assert set(others["e"][1]) <= set("abcd")
    s = craft.JudgeSettings({**craft.JudgeSettings().actions, "rough": "off"}, 0.5, 0.2)
    kinds = [(f.kind, f.tags) for f in craft.kind_findings({"monochrome": 0.9, "rough": 0.9, "low_aesthetic": 0.1}, s)]
    assert kinds == [("monochrome", ("monochrome 0.90",)), ("low_aesthetic", ("aesthetic 0.10",))]


def test_the_demo_switch_turns_the_judges_on(tmp_path: Path):
    """`bakery demo --judges` (make demo): the recipe's [judges] names built deepghs-format models that load."""
    from bakery.craft import deepghs
    from bakery.demo import write_demo
    from bakery.recipe import load_recipe
    from bakery.stage_params import character_spec, dataset_judges

    recipe = load_recipe(write_demo(tmp_path / "demo", judges=True))
    assert write_demo(tmp_path / "demo", judges=True).read_text().count("[judges]") == 1  # added once
    spec, data = character_spec(recipe), dataset_judges(recipe)
    assert spec["ccip"]["path"].endswith("models/deepghs/ccip") and spec["corrupt"]["path"].endswith("corrupt")
    assert all(data["models"].values())
    assert deepghs.CCIP(spec["ccip"]["path"], "judges.ccip_model").threshold == pytest.approx(0.1785, abs=1e-4)
    assert load_recipe(write_demo(tmp_path / "plain")).judges.ccip_model is None  # off without the switch


DUO_RECIPE = """
[[concepts]]
name = "CharaA"
trigger = "CharaA"
paths = ["chara/*"]

[crops]
head_model = "models/head.onnx"

[judges]
ccip_model = "models/ccip"

[validation]
enabled = false
"""
NAVY = (40, 40, 200)


def _heads(path: Path, seed: int, *markers) -> None:
    """A navy picture with one marker square per head (the tiny head detector finds one box per marker colour)."""
    _picture(path, NAVY, seed)
    pixels = np.array(Image.open(path).convert("RGB"))
    for i, colour in enumerate(markers):
        pixels[6 + 20 * i:18 + 20 * i, 6 + 24 * i:18 + 24 * i] = colour
    Image.fromarray(pixels).save(path)


@pytest.mark.usefixtures("prefect_server")
def test_a_picture_of_two_characters_is_skipped_by_its_heads_and_ccip_in_a_real_run(tmp_path: Path):
    """The framing stage's head detector finds two heads in `duo` (a red and a green marker: two boxes); CCIP
    judges the two head crops two characters (pure red against pure green: difference far above the threshold).
    The decision records both, the stage skips it (waifuc's HeadCountAction(1)), a keep edit trains it."""
    from typer.testing import CliRunner

    from bakery.cli import app
    from bakery.review import data
    from bakery.testmodels.tiny_detector import GREEN, RED, build_marker_detector
    from flows.bake import bake_lora

    for i in range(4):
        _heads(tmp_path / f"images/chara/n{i}.png", i, RED)
    _heads(tmp_path / "images/chara/duo.png", 9, RED, GREEN)
    write_ccip(tmp_path / "models/ccip")
    build_marker_detector(tmp_path / "models/head.onnx", "head", RED, more=(GREEN,))
    recipe = write_recipe(tmp_path, DUO_RECIPE)
    work = tmp_path / "work"
    first = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        skips = {s["subject"]: s["reason"] for s in cat.skips_for(first) if s["stage"] == "prune"}
        decisions = {(d["name"], d["rule"]): d for d in cat.caption_decisions(first)}
        recorded = cat.rows("SELECT DISTINCT detector FROM detections")
    assert set(skips) == {"chara/duo"}, skips
    assert skips["chara/duo"].startswith("screened out: several characters (heads 2, characters 2, differences 0.")
    duo = decisions[("chara/duo", "judge:several_characters")]
    assert duo["action"] == "skip" and duo["tags"][:2] == ["heads 2", "characters 2"]
    assert float(duo["tags"][2].split()[1]) > CCIP_THRESHOLD
    assert not any(n.startswith("chara/n") for n, _ in decisions)  # one head each: they pass
    assert [r["detector"].split(":")[0] for r in recorded] == ["head"]  # the framing stage's, reused
    shown = data.load_decisions(work)
    assert ("chara/duo", "judge:several_characters", "skip") in {
        (d["name"], d["rule"], d["action"]) for d in shown["screening"]}
    import httpx

    from bakery.review import create_app
    from tests.review_work import Served

    with Served(create_app(recipe)) as studio:  # the decisions page: its picture, the heads, the keep button
        page = httpx.get(studio.url + "/decisions", timeout=30).text
    row = page[page.index('<tr data-name="chara/duo">'):]
    row = row[:row.index("</tr>")]
    assert f"/thumb/{duo['image_hash']}/" in row and "heads 2, characters 2" in row and 'value="keep"' in row

    out = CliRunner().invoke(app, ["edit", str(recipe), "keep", "chara/duo"])
    assert out.exit_code == 0, out.output
    second = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        assert not [s for s in cat.skips_for(second) if s["stage"] == "prune"]
        kept = next(d for d in cat.caption_decisions(second) if d["name"] == "chara/duo")
        captions = {r["name"] for r in cat.train_captions(second)}
    assert kept["action"] == "keep" and kept["rule"] == "judge:several_characters" and "chara_duo" in captions

    # Without a head (or person) detector the check is skipped with a note naming the keys
    recipe.write_text(recipe.read_text().replace('head_model = "models/head.onnx"', ""), encoding="utf-8")
    third = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        notes = [w["message"] for w in cat.stage_warnings(third) if w["stage"] == "prune"]
    assert any("several characters: not counted: set [crops] head_model" in n for n in notes), notes


def test_several_characters_by_heads_and_ccip():
    """Two heads without CCIP: several (the count alone); with CCIP, two alike heads are one character (a reference
    sheet passes), three heads of which two alike are two characters; one head is one; "off" says nothing."""
    j = craft.Judgements(ccip_threshold=0.18, heads={"a": 2, "b": 2, "c": 3, "d": 1})
    assert craft.several_characters(j, "a", "flag").tags == ("heads 2",)
    j.head_diff = {"b": np.array([[0, 0.05], [0.05, 0]]),
                   "c": np.array([[0, 0.05, 0.6], [0.05, 0, 0.5], [0.6, 0.5, 0]])}
    assert craft.several_characters(j, "b", "skip") is None
    c = craft.several_characters(j, "c", "skip")
    assert c.tags[:2] == ("heads 3", "characters 2") and c.tags[2].startswith("differences 0.050 0.600 0.500")
    assert craft.several_characters(j, "d", "skip") is None and craft.several_characters(j, "a", "off") is None
