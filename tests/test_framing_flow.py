"""The crops stage in real Prefect runs with a test-built ONNX face detector: framing, face crops with their
provenance and captions, the balance, portraits to misc, and the face-keeping bucket crop through export-kohya."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from bakery.cli import app
from bakery.craft.prepare.buckets import bucket_resolutions, fit_to_bucket, select_bucket
from bakery.testmodels.tiny_detector import RED, build_marker_detector
from storage import Catalog
from tests import sd_scripts_schema
from tests.conftest import write_recipe
from tests.test_flow import bake, stages, status

pytestmark = pytest.mark.usefixtures("prefect_server")

RECIPE = """
[dedupe]
near = false

[trim]
enabled = false

[validation]
enabled = false

[crops]
face_model = "models/face.onnx"
min_face_px = 64
min_crop_side = 64
portraits_to_misc = true

[[concepts]]
name = "CharaA"
trigger = "CharaA"
paths = ["chara/**"]
prune = "fluid"

[[concepts]]
name = "misc"
trigger = "CharaA"
paths = ["misc/**"]
prune = "fluid"
"""


def picture(size: tuple[int, int], face: tuple[int, int, int, int], path: Path, caption: str, shade: int = 0) -> None:
    """A grey figure on white with a red 'face' where the marker detector will find it; a caption sidecar."""
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = face
    d.rectangle([max(x0 - 20, 0), y1, x1 + 20, size[1] - 1], fill=(120 + shade, 120, 140))
    d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=RED)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def dataset(root: Path) -> None:
    build_marker_detector(root / "models/face.onnx")
    for i in range(4):  # full body: a 60 px face is 27 px once bucketed (768x1536 -> 352x704)
        picture((768, 1536), (354, 100, 414, 160), root / f"images/chara/fb{i}.png",
                "1girl, full_body, boots, red_dress, smile", shade=20 * i)
    # upper body, face at the left edge: kohya's centre crop (768x320 of 875x320) would cut it
    picture((1400, 512), (0, 200, 80, 280), root / "images/chara/wide.png", "1girl, upper_body, smile")
    picture((512, 512), (156, 100, 356, 300), root / "images/chara/por0.png", "1girl, portrait, smile")


def test_crops_balance_provenance_and_the_face_kept_through_export(tmp_path: Path):
    dataset(tmp_path)
    recipe = write_recipe(tmp_path, RECIPE)
    work = tmp_path / "work"
    first = bake(recipe)
    table = stages(work, first)
    crops = table["crops"]
    assert crops["status"] == "ran" and (crops["n_in"], crops["n_split"], crops["n_out"]) == (6, 2, 8)
    assert crops["n_lost"] == 0

    with Catalog.open(work, read_only=True) as cat:
        framed = {r["name"]: r for r in cat.framings(first)}
        captions = {(r["folder"], r["name"]): r for r in cat.train_captions(first)}
        crop_hash = captions[("misc", "chara_fb0_portrait")]["image_hash"]
        steps = cat.provenance(crop_hash).steps
    assert {n: r["framing"] for n, r in framed.items()} == {
        **{f"chara/fb{i}": "full_body" for i in range(4)}, "chara/wide": "upper_body", "chara/por0": "portrait",
        "chara/fb0_portrait": "portrait", "chara/fb0_upper_body": "upper_body"}
    assert framed["chara/fb0_portrait"]["crop_of"] == "chara/fb0"
    # 6 pictures in CharaA: at most ceil(6/4) = 2 portraits and 2 upper bodies, so fb0 alone is cropped
    crop_step = next(s for s in steps if s.stage == "crops")
    assert crop_step.params["framing"] == "portrait" and crop_step.output_suffix == "_portrait"
    x0, y0, x1, y1 = crop_step.params["box"]
    assert x0 <= 354 and x1 >= 414 and y0 <= 100 and y1 >= 160 and x1 - x0 == y1 - y0 == 180

    # captions: a crop's framing tags and what lies below it corrected; its parent's untouched
    assert set(captions) == {("CharaA", f"chara_fb{i}") for i in range(4)} | {
        ("CharaA", "chara_wide"), ("CharaA", "chara_fb0_upper_body"), ("misc", "chara_por0"),
        ("misc", "chara_fb0_portrait")}
    portrait_tags = captions[("misc", "chara_fb0_portrait")]["caption"].split(", ")
    assert "portrait" in portrait_tags and not {"full_body", "boots"} & set(portrait_tags)
    upper_tags = captions[("CharaA", "chara_fb0_upper_body")]["caption"].split(", ")
    assert "upper_body" in upper_tags and "red_dress" in upper_tags and "full_body" not in upper_tags
    assert "full_body" in captions[("CharaA", "chara_fb1")]["caption"].split(", ")

    # the balance: report, run summary, `bakery status`, artifact
    report = (work / "reports/framing.md").read_text()
    assert "| CharaA | 2 (25%) | 2 (25%) | 0 (0%) | 4 (50%) | 0 |" in report
    assert "cowboy_shot: 0 of 8, add about 2" in report
    out = CliRunner().invoke(app, ["status", str(recipe)])
    assert out.exit_code == 0 and "framing CharaA: portrait 2 (25%)" in out.output, out.output
    _assert_artifacts()

    # the face-keeping crop: wide.png is written at its bucket with the face in, and export-kohya ships that
    assignment = json.loads((work / "reports/buckets.json").read_text())
    assert assignment["chara/wide"]["crop_shifted_to_keep"] is True
    assert not any(a["crop_shifted_to_keep"] for n, a in assignment.items() if n != "chara/wide")
    dest = tmp_path / "kohya"
    out = CliRunner().invoke(app, ["export-kohya", str(recipe), str(dest)])
    assert out.exit_code == 0, out.output
    wide = Image.open(next(dest.glob("img/*_CharaA/chara_wide.png"))).convert("RGB")
    original = Image.open(tmp_path / "images/chara/wide.png").convert("RGB")
    choice = select_bucket(1400, 512, bucket_resolutions(512))
    assert wide.size == choice.bucket == (768, 320)
    assert _red(wide) > 1000 and _red(fit_to_bucket(original, choice)) == 0  # kohya's own crop loses the face
    assert next(dest.glob("img/*_misc/chara_fb0_portrait.png")).is_file()
    sd_scripts_schema.check_train_network(dest / "dataset_config.toml", masked_loss=False)
    assert tomllib.loads((dest / "dataset_config.toml").read_text())["datasets"][0]["resolution"] == 512

    second = bake(recipe)
    assert status(work, second)["crops"] == "cached" and status(work, second)["buckets"] == "cached"

    # A user's crop edit (a keep box by file name) wins over the detected face and moves kohya's crop too.
    from bakery import edits as api

    api.add_edit(work, "crop", "chara_fb1", {"keep": [0.0, 0.5, 0.03, 0.6]}, "keep the hand")
    third = bake(recipe)
    assert status(work, third)["crops"] == "cached" and status(work, third)["buckets"] == "ran"
    fb1 = json.loads((work / "reports/buckets.json").read_text())["chara/fb1"]
    assert fb1["keep_box"] == [0.0, 0.5, 0.03, 0.6] and fb1["crop_shifted_to_keep"] is True
    with Catalog.open(work, read_only=True) as cat:
        shifted = cat.rows("""SELECT d.params, i.width, i.height FROM derivations d JOIN images i
                              ON i.hash = d.output_hash WHERE d.stage = 'buckets' AND d.run_id = ?""", [third])
    assert [(json.loads(r["params"])["box"], r["width"], r["height"]) for r in shifted] == [([0, 0, 320, 704], 320, 704)]


def _red(im: Image.Image) -> int:
    a = np.asarray(im).astype(int)
    return int(((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum())


def _assert_artifacts() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["framing-balance", "bake-summary"])))
    found = {}
    for art in arts:
        found.setdefault(art.key, []).append(art.data)
    assert any("| CharaA | 2 (25%)" in d for d in found["framing-balance"])
    assert any("framing CharaA: portrait 2 (25%)" in d for d in found["bake-summary"])


def test_a_missing_detector_file_fails_the_run_naming_the_key(tmp_path: Path):
    dataset(tmp_path)
    (tmp_path / "models/face.onnx").unlink()
    recipe = write_recipe(tmp_path, RECIPE)
    with pytest.raises(Exception, match=r"crops.face_model = .*face.onnx: no such file"):
        bake(recipe)
