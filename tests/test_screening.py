"""Screening by tags (rules.md §3), special tags (§10) and rare tags from the tagger's counts (§9), in real runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bakery.craft.caption import screen as craft
from storage import Catalog
from tests.conftest import write_recipe
from tests.wd14_model import write_tiny_wd14

SIDECARS = {
    "chara/a": "1girl, smile, red_hair",
    "chara/b": "1girl, chibi, red_hair",  # skipped: chibi
    "chara/c": "3girls, multiple_girls, red_hair",  # skipped: a group shot in a one-character concept
    "chara/d": "1girl, signature, red_hair",  # flagged: text
    "chara/h": "1girl, bad_hands, red_hair",  # skipped: deformed
    "chara/l": "1girl, lower_body, red_hair, speech_bubble, heart",  # head_out_of_frame, spoken_heart
    "chara/f": "1girl, 1boy, solo_focus, blurry_background, red_hair",  # the blurred boy: faceless_male
}
RECIPE = """
[[sources]]
kind = "folder"
path = "shop"
source_kind = "shop_photo"

[[concepts]]
name = "CharaA"
trigger = "CharaA"
paths = ["chara/*", "s"]

[autotag]
model = "tagger"

[validation]
enabled = false
"""


def _noise(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((48, 48), Image.NEAREST).save(path)


def _dataset(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    for i, (name, tags) in enumerate(SIDECARS.items()):
        _noise(images / f"{name}.png", i + 1)
        (images / f"{name}.txt").write_text(tags, encoding="utf-8")
    Image.new("RGB", (48, 48), (255, 0, 0)).save(images / "chara/t.png")  # no sidecar: the tagger says red_theme
    _noise(tmp_path / "shop/s.png", 99)
    (tmp_path / "shop/s.txt").write_text("1girl, solo, red_hair, maid_dress", encoding="utf-8")
    # red_theme is rare by the tagger's count (< 500): folder pictures have no booru count
    write_tiny_wd14(tmp_path / "tagger", counts={"red_theme": 120})
    return write_recipe(tmp_path, RECIPE)


@pytest.mark.usefixtures("prefect_server")
def test_screening_special_tags_and_rare_tags_in_a_real_run(tmp_path: Path):
    from typer.testing import CliRunner

    from bakery import edits as api
    from bakery.cli import app
    from bakery.recipe import load_recipe
    from bakery.review import data
    from flows.bake import bake_lora

    recipe = _dataset(tmp_path)
    work = tmp_path / "work"
    first = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        skips = {s["subject"]: s["reason"] for s in cat.skips_for(first) if s["stage"] == "prune"}
        captions = {r["name"]: r["caption"] for r in cat.train_captions(first)}
        warnings = [w["message"] for w in cat.stage_warnings(first) if w["stage"] == "prune"]
        decisions = {(d["name"], d["rule"]): d for d in cat.caption_decisions(first)}
        assert cat.tag_post_counts(["red_theme", "simple_background"]) == {"red_theme": 120, "simple_background": 1005}
    assert set(skips) == {"chara/b", "chara/c", "chara/h"}
    assert skips["chara/b"].startswith("screened out: chibi (chibi; rules.md §3)")
    assert "keep chara/b" in skips["chara/b"]
    assert skips["chara/c"].startswith("screened out: crowd (3 people;")
    assert skips["chara/h"].startswith("screened out: deformed (bad_hands;")
    assert set(captions) == {"chara_a", "chara_d", "chara_l", "chara_f", "chara_t", "s"}
    assert decisions[("chara/d", "screen:text")]["action"] == "flag"
    flagged = "2 picture(s) flagged for text: chara/d (signature), chara/l (speech_bubble)"
    assert any(flagged in w for w in warnings), warnings
    # §10: the shop photo loses solo and 1girl and is a mannequin; the cut head, the blurred boy, the spoken heart
    assert captions["s"].startswith("CharaA, ") and "solo" not in captions["s"] and "1girl" not in captions["s"]
    assert captions["s"].endswith("mannequin, no_humans")
    assert decisions[("s", "special:shop_photo")]["tags"] == ["mannequin", "no_humans", "-1girl", "-solo"]
    assert "head_out_of_frame" in captions["chara_l"] and "spoken_heart" in captions["chara_l"]
    assert "faceless_male" in captions["chara_f"] and "faceless_female" not in captions["chara_f"]
    assert ("chara/a", "special:head_out_of_frame") not in decisions

    # bakery status lists the skips with their reasons and the flag; the studio shows the flags and the decisions
    out = CliRunner().invoke(app, ["status", str(recipe)])
    assert out.exit_code == 0, out.output
    assert "prune: chara/b: screened out: chibi" in out.output and "flagged for text" in out.output
    cards = {c.name: c for c in data.load_dataset(work, load_recipe(recipe)).cards}
    assert "signature" in cards["chara/d"].flags["screen"]
    assert "red_theme (120 posts)" in cards["chara/t"].flags["rare"]
    assert "+mannequin +no_humans -1girl -solo" in cards["s"].flags["special"] and "screen" not in cards["chara/a"].flags
    from tasks.report import run_summary_markdown
    from tasks.stage import RunInfo

    summary = run_summary_markdown(RunInfo(first, str(work)))
    assert "screened out: chibi" in summary and "flagged for text" in summary
    shown = data.load_decisions(work)
    assert {(d["name"], d["action"]) for d in shown["screening"]} >= {("chara/b", "skip"), ("chara/d", "flag")}

    # A keep edit trains the chibi picture on the next run; provenance shows the edit and the decision
    bad = CliRunner().invoke(app, ["edit", str(recipe), "keep", "chara/zz"])
    assert bad.exit_code == 1 and "no picture 'chara/zz'" in bad.output
    import httpx

    from bakery.review import create_app
    from tests.review_work import Served

    with Served(create_app(recipe)) as studio:  # the studio's decisions page: its "keep it" button
        page = httpx.get(studio.url + "/decisions", timeout=30).text
        row = page[page.index('<tr data-name="chara/b">'):]
        assert "screen:chibi" in row[:600] and 'value="keep"' in row[:900]
        made = httpx.post(studio.url + "/edits", data={"kind": "keep", "target": "chara/b", "reason": "a chibi we want",
                                                       "next": "/decisions"}, timeout=30)
        assert made.status_code == 303, made.text
    second = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        skips = {s["subject"] for s in cat.skips_for(second) if s["stage"] == "prune"}
        captions = {r["name"]: r["caption"] for r in cat.train_captions(second)}
        kept = next(d for d in cat.caption_decisions(second) if d["name"] == "chara/b")
        stages = {s["stage"]: s["status"] for s in cat.stage_table(second)}
    assert skips == {"chara/c", "chara/h"} and "chara_b" in captions and stages["prune"] == "ran"
    assert kept["action"] == "keep" and kept["reason"].startswith("kept by edit #1: a chibi we want")
    edit = api.list_edits(work)[0]
    prov = CliRunner().invoke(app, ["provenance", str(recipe), str(tmp_path / "images/chara/b.png")])
    assert prov.exit_code == 0, prov.output
    assert f"edit #{edit.id} keep chara/b" in prov.output and "caption screen:chibi keep: kept by edit #1" in prov.output


def test_screening_rules_per_concept_and_source():
    settings = craft.ScreenSettings()
    # a style LoRA trains chibi and crowds; a two-character concept has two people by design; a crop keeps only
    # what its drawing is
    assert craft.screen(["chibi", "4girls"], craft.Subject(style=True), settings) == []
    assert craft.screen(["2girls", "1boy"], craft.Subject(one_character=False), settings) == []
    assert [f.kind for f in craft.screen(["6+girls", "chibi", "watermark"], craft.Subject(crop=True), settings)] == [
        "chibi"]
    off = craft.ScreenSettings({**settings.actions, "chibi": "off", "blurry": "skip"})
    assert [(f.kind, f.action) for f in craft.screen(["chibi", "blurry"], craft.Subject(), off)] == [
        ("blurry", "skip")]
    assert craft.people_count(["1girl", "2boys", "multiple_boys"]) == 3
    # a picture from a shop photo and a fanart source is not taken for a mannequin; a 1girl + 1boy picture with no
    # known subject gets no faceless tag (who is in focus is unknown)
    assert craft.special_tags(["1girl", "solo"], ["shop_photo", "fanart_hires"]) == []
    assert craft.special_tags(["1girl", "1boy", "solo_focus", "blurry_background"], []) == []
    assert craft.special_tags(["1girl", "1boy", "solo_focus", "blurry_background"], [], subject_gender="boy")[0].added == (
        "faceless_female",)
    assert craft.special_tags(["lower_body"], [], crop=True) == []


def test_tagger_counts_only_where_no_booru_or_hand_count(tmp_path: Path):
    with Catalog.open(tmp_path) as cat:
        cat.add_tag_counts([{"tag": "a", "posts": 10, "site": "x"}])
        cat.con.execute("INSERT INTO booru_tags VALUES ('s', 'b', 'general', 3, now())")
        cat.add_tagger_counts("tagger:wd14", {"a": 9000, "b": 9000, "c": 120})
        assert cat.tag_post_counts(["a", "b", "c"]) == {"a": 10, "b": 3, "c": 120}
        cat.add_tag_counts([{"tag": "c", "posts": 900, "site": "x"}])  # a count given by hand replaces the tagger's
        cat.add_tagger_counts("tagger:wd14", {"c": 120})
        assert cat.tag_post_counts(["c"]) == {"c": 900}


def test_a_keep_edit_on_a_picture_the_screening_passes_is_said():
    from datetime import datetime

    from bakery.craft import edits as edits_craft
    from bakery.craft.caption import trainset

    keep = edits_craft.Edit(4, "keep", "chara/a", {}, "", datetime(2026, 1, 1))
    decisions = [{"name": "chara/b", "action": "keep"}]
    assert trainset.idle_keeps({"chara/a": keep, "chara/b": keep}, decisions) == [
        "edit #4 (keep) changes nothing: the screening does not skip chara/a"]
