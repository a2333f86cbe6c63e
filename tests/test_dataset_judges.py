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
from tests.deepghs_models import write_all

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
