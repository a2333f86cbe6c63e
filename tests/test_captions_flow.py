"""Autotag and prune in real Prefect runs: sidecars, Grabber files, the tiny WD14 model, the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from storage import Catalog
from tests.conftest import write_recipe
from tests.wd14_model import write_tiny_wd14

pytestmark = pytest.mark.usefixtures("prefect_server")

CONCEPTS = """
[[concepts]]
name = "CharaA"
trigger = "CharaA"
paths = ["chara/*"]

[[concepts.outfits]]
name = "Outfit1"
trigger = "Outfit1"
paths = ["chara/outfit1/*"]
"""
GUIDE = ("1girl, ascot, closed_mouth, frilled_ascot, frilled_skirt, frills, green_hair, long_sleeves, looking_at_viewer, "
         "one-hour_drawing_challenge, open_mouth, plaid, plaid_skirt, plaid_vest, red_skirt, red_vest, shirt, "
         "short_hair, simple_background, skirt, solo, umbrella, vest, white_shirt, yellow_background")


def bake(recipe: Path, **kw) -> str:
    from flows.bake import bake_lora

    return bake_lora(str(recipe), **kw)


def status(work: Path, run_id: str) -> dict[str, str]:
    with Catalog.open(work, read_only=True) as cat:
        return {s["stage"]: s["status"] for s in cat.stage_table(run_id)}


def _dataset(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    (images / "chara" / "outfit1").mkdir(parents=True)
    Image.new("RGB", (48, 48), (250, 250, 60)).save(images / "chara/outfit1/a.png")
    (images / "chara/outfit1/a.txt").write_text(GUIDE, encoding="utf-8")
    Image.new("RGB", (48, 40), (60, 250, 60)).save(images / "chara/outfit1/b.png")
    # Grabber: `|`-joined, spaces in tags, namespaces.
    (images / "chara/outfit1/b.txt").write_text(
        "character:chara a|artist:someone|general:green hair|plaid skirt|red vest|smile|meta:highres", encoding="utf-8")
    Image.new("RGB", (40, 48), (255, 0, 0)).save(images / "chara/c.png")  # no sidecar: the tagger captions it
    return images


def test_captions_from_sidecars_grabber_and_tagger(tmp_path: Path):
    _dataset(tmp_path)
    write_tiny_wd14(tmp_path / "tagger")
    recipe = write_recipe(tmp_path, CONCEPTS + '\n[autotag]\nmodel = "tagger"\nkeep_rating = true\n'
                          '\n[captions]\nmerge = "first"\n')  # user sidecars first, the tagger where none
    work = tmp_path / "work"
    first = bake(recipe)
    assert status(work, first) == {s: "ran" for s in ("ingest", "convert", "dedupe", "alpha", "trim", "upscale", "crops", "masks", "buckets", "autotag",
                                             "prune")}
    with Catalog.open(work, read_only=True) as cat:
        tagged = cat.rows("SELECT tag, category, confidence FROM tags WHERE origin = 'tagger' ORDER BY tag")
        assert {r["tag"] for r in tagged} >= {"red_theme", "simple_background", "general"}
        assert all(0 < r["confidence"] <= 1 for r in tagged)
        rows = {r["name"]: r for r in cat.train_captions(first)}
        assert rows["chara_outfit1_a"]["caption"] == (
            "CharaA, Outfit1, closed_mouth, looking_at_viewer, open_mouth, simple_background, solo, umbrella, "
            "yellow_background"
        )
        assert rows["chara_outfit1_a"]["folder"] == "Outfit1"
        # Grabber: artist/meta dropped; the recognised character, intrinsics and garments pruned.
        assert rows["chara_outfit1_b"]["caption"] == "CharaA, Outfit1, smile"
        assert rows["chara_c"]["folder"] == "CharaA"
        assert rows["chara_c"]["caption"] == "CharaA, red_theme, simple_background, general"  # rating kept, last
        # Repeats: CharaA 300/1, Outfit1 100/2 -> x3/5 (min-SNR on by default) = 180, 30.
        assert {r["folder"]: r["repeats"] for r in rows.values()} == {"CharaA": 180, "Outfit1": 30}
        stats = cat.tag_stats(first)
        before = {(s["concept"], s["tag"]) for s in stats if s["phase"] == "before_prune"}
        after = {(s["concept"], s["tag"]) for s in stats if s["phase"] == "after_prune"}
        assert ("Outfit1", "plaid_skirt") in before and ("Outfit1", "plaid_skirt") not in after
        assert ("Outfit1", "chara_a") in before and ("Outfit1", "chara_a") not in after
        assert ("Outfit1", "Outfit1") in after

    # Prefect table artifacts: tag counts per group and the repeats plan.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with Catalog.open(work, read_only=True) as cat:
        flow_run_id = cat.rows("SELECT flow_run_id FROM runs WHERE run_id = ?", [first])[0]["flow_run_id"]
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}
    assert artifacts["tag-stats"].type == "table" and "plaid_skirt" in str(artifacts["tag-stats"].data)
    assert "180" in str(artifacts["repeats"].data)

    second = bake(recipe)
    assert set(status(work, second).values()) == {"cached"}

    # A sidecar edited beside an unchanged image reaches the captions.
    (tmp_path / "images/chara/outfit1/b.txt").write_text("smile, umbrella", encoding="utf-8")
    third = bake(recipe)
    assert status(work, third)["prune"] == "ran" and status(work, third)["autotag"] == "cached"
    with Catalog.open(work, read_only=True) as cat:
        rows = {r["name"]: r for r in cat.train_captions(third)}
    assert rows["chara_outfit1_b"]["caption"] == "CharaA, Outfit1, smile, umbrella"

    # Booru tags recorded against the original (as scrape does) come before the tagger's ("first" merge).
    from storage import digest_file

    original = digest_file(tmp_path / "images/chara/c.png").sha256
    with Catalog.open(work) as cat:
        cat.replace_tags("booru", [original], [
            {"image_hash": original, "tag": "outdoors", "category": "general", "confidence": None},
            {"image_hash": original, "tag": "some_artist", "category": "artist", "confidence": None},
        ])
    fourth = bake(recipe)
    with Catalog.open(work, read_only=True) as cat:
        rows = {r["name"]: r for r in cat.train_captions(fourth)}
    assert rows["chara_c"]["caption"] == "CharaA, outdoors"
    third = fourth

    # `bakery tags`: frequency table, the change since the run before, the overlap between groups.
    from typer.testing import CliRunner

    from bakery.cli import app

    out = CliRunner().invoke(app, ["tags", str(recipe)])
    assert out.exit_code == 0, out.output
    assert f"tags of run {fourth}" in out.output and "changes since run" in out.output
    assert "CharaA: gained outdoors (1); lost general (1), red_theme (1), simple_background (1)" in out.output
    assert "plaid_skirt: pruned in Outfit1" in out.output

    # `bakery export-kohya`: the layout sd-scripts reads, parsed back.
    import tomllib

    dest = tmp_path / "kohya"
    out = CliRunner().invoke(app, ["export-kohya", str(recipe), str(dest)])
    assert out.exit_code == 0, out.output
    assert sorted(p.relative_to(dest).as_posix() for p in (dest / "img").rglob("*")) == [
        "img/180_CharaA", "img/180_CharaA/chara_c.png", "img/180_CharaA/chara_c.txt",
        "img/30_Outfit1", "img/30_Outfit1/chara_outfit1_a.png", "img/30_Outfit1/chara_outfit1_a.txt",
        "img/30_Outfit1/chara_outfit1_b.png", "img/30_Outfit1/chara_outfit1_b.txt",
    ]
    assert (dest / "img/30_Outfit1/chara_outfit1_b.txt").read_text() == "CharaA, Outfit1, smile, umbrella"
    ds = tomllib.loads((dest / "dataset_config.toml").read_text())
    subsets = {Path(s["image_dir"]).name: s for s in ds["datasets"][0]["subsets"]}
    assert subsets["30_Outfit1"]["num_repeats"] == 30 and subsets["30_Outfit1"]["keep_tokens"] == 2
    assert subsets["180_CharaA"]["keep_tokens"] == 1 and Path(subsets["180_CharaA"]["image_dir"]).is_dir()
    cfg = tomllib.loads((dest / "train_network.toml").read_text())
    assert cfg["training"]["dataset_config"] == str((dest / "dataset_config.toml").resolve())
    assert cfg["saving"]["training_comment"] == "triggers: CharaA, Outfit1"
    assert (dest / "img/180_CharaA/chara_c.txt").read_text() == "CharaA, outdoors"
    again = CliRunner().invoke(app, ["export-kohya", str(recipe), str(dest)])
    assert again.exit_code == 1 and "--force" in again.output


def test_an_image_without_caption_fails_before_bake(tmp_path: Path):
    _dataset(tmp_path)
    recipe = write_recipe(tmp_path, CONCEPTS)  # no tagger: chara/c has no caption at all
    with pytest.raises(Exception, match=r"1 images have no caption.*CharaA/chara/c"):
        bake(recipe)
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        assert cat.last_run()["status"] == "failed"


def test_multi_concept_layout_from_the_recipe(tmp_path: Path):
    images = tmp_path / "images"
    files = {
        "a/1": "1girl, solo, red_hair, smile",
        "a/dress/2": "1girl, red_hair, red_dress, white_apron, black_footwear",
        "b/1": "1girl, blue_hair, sitting",
        "ab/1": "2girls, multiple_girls, red_hair, blue_hair, hug",
        "misc/1": "1girl, red_hair, bow",
        "solo/1": "1girl, green_hair, red_dress",
    }
    for i, (name, caption) in enumerate(files.items()):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i * 40, 80, 120)).save(images / f"{name}.png")
        (images / f"{name}.txt").write_text(caption, encoding="utf-8")
    layout = """
[[concepts]]
name = "CharaA"
trigger = "CharaA"
paths = ["a/**"]
  [[concepts.outfits]]
  name = "CharaA_dress"
  trigger = "red_dress_white_apron"
  paths = ["a/dress/**"]
[[concepts]]
name = "CharaB"
trigger = "CharaB"
paths = ["b/**"]
[[concepts]]
name = "CharaAPLUSCharaB"
trigger = "CharaA"
extra_triggers = ["CharaB"]
paths = ["ab/**"]
prune_people_count = true
[[concepts]]
name = "misc"
trigger = "CharaA"
paths = ["misc/**"]
prune = "fluid"
[[concepts]]
name = "CharaC"
trigger = "CharaC"
paths = ["solo/**"]
duplicate_split = true
  [[concepts.outfits]]
  name = "CharaC_dress"
  trigger = "CharaC_red_dress"
  paths = ["solo/**"]
"""
    recipe = write_recipe(tmp_path, layout)
    run_id = bake(recipe)
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        got = {(r["folder"], r["name"]): (r["caption"], r["repeats"]) for r in cat.train_captions(run_id)}
    captions = {k: v[0] for k, v in got.items()}
    assert captions == {
        # A lone character trigger absorbs 1girl and keeps solo (rules.md §10).
        ("CharaA", "a_1"): "CharaA, solo, smile",
        # The outfit absorbs its garments, never the footwear.
        ("CharaA_dress", "a_dress_2"): "CharaA, red_dress_white_apron, black_footwear",
        ("CharaB", "b_1"): "CharaB, sitting",
        ("CharaAPLUSCharaB", "ab_1"): "CharaA, CharaB, hug",
        ("misc", "misc_1"): "CharaA, 1girl, red_hair, bow",
        ("CharaC_dress", "solo_1"): "CharaC, CharaC_red_dress",
        ("CharaC_dress_unpruned", "solo_1"): "CharaC, red_dress",
    }
    # One image per folder: 300 x 3/5 = 180 for concepts, 100 x 3/5 = 60 for outfits and their copies.
    assert {k[0]: v[1] for k, v in got.items()} == {
        "CharaA": 180, "CharaA_dress": 60, "CharaB": 180, "CharaAPLUSCharaB": 180, "misc": 180,
        "CharaC_dress": 60, "CharaC_dress_unpruned": 60}
