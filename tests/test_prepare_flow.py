"""Real Prefect runs of dedupe (near) -> alpha -> trim -> upscale -> buckets, checked through the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from storage import Catalog, ContentStore
from tests.conftest import write_recipe
from tests.images import gradient
from tests.prepare_images import crop_margin, jpeg, padded, rgba_sprite, scene
from tests.test_flow import bake, snapshot, stages, status

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL = "\n[buckets]\nresolution = 256\nmin_side = 128\nmax_side = 512\nstep = 64\n"


def write_set(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for s in range(4):
        scene(400, 300, s).save(folder / f"scene{s}.png")
    scene(400, 300, 0).resize((200, 150), Image.Resampling.LANCZOS).save(folder / "scene0_small.png")
    jpeg(scene(400, 300, 1), 60).save(folder / "scene1_reencoded.jpg", quality=95)
    crop_margin(scene(400, 300, 2), 0.02).save(folder / "scene2_cropped.png")
    rgba_sprite(300, 300).save(folder / "sprite_rgba.png")
    Image.new("LA", (280, 260), (0, 0)).save(folder / "blank_la.png")  # fully transparent grey
    pal = scene(300, 280, 7).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_transparent.png", transparency=0)
    padded(scene(260, 200, 8), (40, 30, 60, 20)).save(folder / "padded.png")
    scene(100, 80, 9).save(folder / "tiny.png")
    gradient(320, 300, 5).save(folder / "gradient.png")  # colours change along every edge: nothing to trim


def outputs(work: Path, run_id: str, stage: str) -> dict[str, dict]:
    """The stage's output image rows by input name (via the sources of the originals)."""
    with Catalog.open(work, read_only=True) as cat:
        return {
            r["name"]: r
            for r in cat.rows(
                """SELECT d.input_hash, i.*, s.name FROM derivations d JOIN images i ON i.hash = d.output_hash
                   JOIN sources s ON s.image_hash = (
                       WITH RECURSIVE up(h) AS (SELECT d.input_hash UNION ALL
                            SELECT x.input_hash FROM derivations x JOIN up ON x.output_hash = up.h
                            AND x.input_hash <> x.output_hash)
                       SELECT h FROM up WHERE h IN (SELECT image_hash FROM sources) LIMIT 1)
                   WHERE d.stage = ?""",
                [stage],
            )
        }


def test_prepare_chain_on_generated_images(tmp_path: Path):
    images = tmp_path / "images"
    write_set(images)
    before = snapshot(images)
    recipe = write_recipe(tmp_path, SMALL)
    work = tmp_path / "work"
    run_id = bake(recipe)
    st = stages(work, run_id)
    assert {k: v["status"] for k, v in st.items()} == {
        "ingest": "ran", "convert": "ran", "dedupe": "ran", "alpha": "ran", "trim": "ran", "upscale": "ran", "crops": "ran",
        "masks": "ran", "buckets": "ran"
    }

    with Catalog.open(work, read_only=True) as cat:
        # near-duplicates: the resized, re-encoded and cropped copies go; the largest stays
        dup = {r["dropped"]: (r["kept"], r["method"], r["distance"]) for r in cat.rows(
            """SELECT sd.name AS dropped, sk.name AS kept, method, distance FROM duplicates d
               JOIN derivations cd ON cd.output_hash = d.image_hash AND cd.stage = 'convert'
               JOIN sources sd ON sd.image_hash = cd.input_hash
               JOIN derivations ck ON ck.output_hash = d.kept_hash AND ck.stage = 'convert'
               JOIN sources sk ON sk.image_hash = ck.input_hash""")}
        assert {k: v[0] for k, v in dup.items()} == {
            "scene0_small": "scene0", "scene1_reencoded": "scene1", "scene2_cropped": "scene2"}
        assert all(m == "phash+dhash" and d <= 8 for _, m, d in dup.values())
        reasons = [s["reason"] for s in cat.skips_for(run_id) if s["stage"] == "dedupe"]
        assert len(reasons) == 3 and all("near duplicate of" in r for r in reasons)
        assert cat.rows("SELECT count(*) AS n FROM perceptual_hashes")[0]["n"] >= 13
        # convert worked out each output's pixel facts while it had the pixels decoded
        facts = {r["name"]: r["edge_spread"] for r in cat.rows(
            """SELECT s.name, p.edge_spread FROM perceptual_hashes p
               JOIN derivations d ON d.output_hash = p.image_hash AND d.stage = 'convert'
               JOIN sources s ON s.image_hash = d.input_hash""")}
        assert len(facts) == 13 and facts["sprite_rgba"] is None  # transparent: the alpha stage changes it
        assert facts["padded"] == 0.0 and facts["gradient"] > 0.2 * 1.01
    assert st["dedupe"]["n_out"] == 10
    page = (work / "reports/dedupe/index.html").read_text()
    assert page.count("<section>") == 3 and page.count('class="dropped"') == 3
    assert len(list((work / "reports/dedupe/thumbs").glob("*.jpg"))) == 6

    alpha = outputs(work, run_id, "alpha")
    for name in ("sprite_rgba", "blank_la", "palette_transparent"):
        assert alpha[name]["mode"] == "RGB" and alpha[name]["hash"] != alpha[name]["input_hash"], name
    assert alpha["scene3"]["hash"] == alpha["scene3"]["input_hash"]  # no alpha: no re-encode
    store = ContentStore(work / "store")
    with Image.open(store.path(alpha["sprite_rgba"]["hash"])) as im:
        assert im.getpixel((0, 0)) == (255, 255, 255)

    trim = outputs(work, run_id, "trim")
    assert (trim["padded"]["width"], trim["padded"]["height"]) == (260, 200)
    assert trim["gradient"]["hash"] == trim["gradient"]["input_hash"]
    # the transparent sprite, now red on white, is trimmed to its disc; the blank stays whole
    assert trim["sprite_rgba"]["width"] < 200 and trim["blank_la"]["hash"] == trim["blank_la"]["input_hash"]

    up = outputs(work, run_id, "upscale")
    assert all(r["width"] * r["height"] >= 256 * 256 for r in up.values())
    assert up["scene3"]["hash"] == up["scene3"]["input_hash"]  # 400x300 > 256²
    report = (work / "reports/upscale.md").read_text()
    tiny = next(line for line in report.splitlines() if line.startswith("| tiny |"))
    assert tiny.endswith("| lanczos |") and "3 of 10 images upscaled" in report

    assert st["buckets"]["n_out"] == 10
    assert "# Buckets" in (work / "reports/buckets.md").read_text()
    assignment = json.loads((work / "reports/buckets.json").read_text())
    assert len(assignment) == 10 and all(len(a["bucket"]) == 2 for a in assignment.values())
    assert snapshot(images) == before  # originals never modified

    # Prefect artifacts for the reviews
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["dedupe-review", "upscale-report", "buckets-report"]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    found: dict[str, list[str]] = {}
    for art in arts:  # every run's versions of these keys (other tests write them too)
        found.setdefault(art.key, []).append(art.data)
    assert set(found) == set(keys)
    assert any("| scene0 | scene0_small |" in data for data in found["dedupe-review"])

    # Unchanged: every stage cached. A `keep` override: dedupe re-runs, one image flows down.
    assert set(status(work, bake(recipe)).values()) == {"cached"}
    write_recipe(tmp_path, SMALL + '\n[dedupe]\nkeep = ["scene0_small"]\n')
    run2 = bake(recipe)
    st2 = stages(work, run2)
    assert st2["dedupe"]["status"] == "ran" and st2["dedupe"]["n_out"] == 11
    assert st2["dedupe"]["n_processed"] == 13  # exact check over all; no image hashed again
    assert st2["alpha"]["n_processed"] == st2["trim"]["n_processed"] == st2["upscale"]["n_processed"] == 1
    with Catalog.open(work, read_only=True) as cat:
        assert cat.rows("SELECT count(*) AS n FROM duplicates WHERE method = 'phash+dhash'")[0]["n"] == 2

    # A trim parameter: the stages before it stay cached, trim re-runs on every image.
    write_recipe(tmp_path, SMALL + '\n[dedupe]\nkeep = ["scene0_small"]\n[trim]\nfuzz = 0.1\n')
    st3 = stages(work, bake(recipe))
    assert {k: v["status"] for k, v in st3.items() if k in ("ingest", "convert", "dedupe", "alpha")} == dict.fromkeys(
        ("ingest", "convert", "dedupe", "alpha"), "cached")
    assert st3["trim"]["status"] == "ran" and st3["trim"]["n_processed"] == 11


def test_spandrel_backend_and_snap_through_the_flow(tmp_path: Path):
    from safetensors.torch import save_file

    from tests.test_prepare_craft import tiny_rrdbnet_state_dict

    images = tmp_path / "images"
    images.mkdir()
    scene(60, 50, 1).save(images / "small.png")
    scene(300, 200, 2).save(images / "wide.png")
    scene(200, 320, 3).save(images / "tall.png")
    save_file(tiny_rrdbnet_state_dict(4), tmp_path / "tiny_x4.safetensors")
    extra = ("\n[buckets]\nresolution = 128\nmin_side = 64\nmax_side = 256\nstep = 64\nmax_buckets = 1\nsnap = true\n"
             '\n[upscale]\nbackend = "spandrel"\nmodel = "tiny_x4.safetensors"\ntile = 32\ntile_overlap = 4\n')
    recipe = write_recipe(tmp_path, extra)
    work = tmp_path / "work"
    run_id = bake(recipe)
    st = stages(work, run_id)
    assert st["upscale"]["status"] == "ran" and st["buckets"]["n_out"] == 3
    report = (work / "reports/upscale.md").read_text()
    assert "| small | 60x50 |" in report and "spandrel tiny_x4.safetensors (ESRGAN x4)" in report
    assert "wide" not in report  # 300x200 >= 128²: passed through
    snapped = outputs(work, run_id, "buckets")
    assert len({(r["width"], r["height"]) for r in snapped.values()}) == 1  # all in the one merged bucket

    # A missing model file is a clear failure naming the key to set.
    (tmp_path / "tiny_x4.safetensors").unlink()
    with pytest.raises(Exception, match="upscale model file not found"):
        bake(recipe)


def test_trim_leaves_a_picture_alone_from_its_known_edge_spread_without_decoding(tmp_path: Path):
    """The spread convert recorded decides; the picture is not decoded (here it could not be)."""
    import dataclasses
    import io

    import tasks.prepare.workers as prep
    from bakery.manifest import ImageRef, Skip

    store = ContentStore(tmp_path / "store")
    buf = io.BytesIO()
    padded(scene(120, 90, 3), (20, 10, 20, 10)).save(buf, "PNG")
    cut = store.put_bytes(buf.getvalue()[: len(buf.getvalue()) // 2]).sha256  # header intact, pixels cut off
    job = prep.TrimJob(ImageRef("cut", cut), str(store.root), "known-pixels", fuzz=0.2, edge_spread=0.5)
    (row,) = prep.trim_one(job)
    assert row["hash"] == cut and (row["width"], row["height"]) == (160, 110)
    assert isinstance(prep.trim_one(dataclasses.replace(job, edge_spread=None)), Skip)  # decoding it fails
    assert isinstance(prep.trim_one(dataclasses.replace(job, edge_spread=0.15)), Skip)  # within the fuzz: decoded


def test_too_small_skipped_by_default_kept_on_request_and_panoramas_flagged(tmp_path: Path):
    from typer.testing import CliRunner

    from bakery.cli import app
    from tasks.report import run_summary_markdown
    from tasks.stage import RunInfo

    images = tmp_path / "images"
    images.mkdir()
    # gradients: nothing for trim to cut
    gradient(40, 30, seed=1).save(images / "thumb.png")  # 14.8x per side to reach 512²
    gradient(300, 200, seed=2).save(images / "pic.png")  # 2.1x
    gradient(2100, 140, seed=3).save(images / "pano.png")  # 15:1, >= 512² pixels: not upscaled
    recipe = write_recipe(tmp_path, thumbnails=False)  # the default max_factor (4)
    work = tmp_path / "work"
    first = bake(recipe)
    st = stages(work, first)
    assert (st["upscale"]["n_in"], st["upscale"]["n_out"], st["upscale"]["n_skipped"]) == (3, 2, 1)
    with Catalog.open(work, read_only=True) as cat:
        skips = [(s["subject"], s["reason"]) for s in cat.skips_for(first) if s["stage"] == "upscale"]
    assert skips == [("thumb", "too small: 40x30 would need 14.8x per side > upscale.max_factor = 4")]
    report = (work / "reports/upscale.md").read_text()
    assert "| pic | 300x200 | 628x418 | 2.09x | lanczos |" in report and "| thumb | too small: 40x30" in report
    listing = json.loads((work / "reports/upscale.json").read_text())
    assert [(u["name"], u["factor"]) for u in listing["upscaled"]] == [("pic", 2.09)]
    line = f"upscaled 1 picture(s) (pic 2.1x); each with its factor in {work / 'reports/upscale.md'}"
    assert line in run_summary_markdown(RunInfo(first, str(work)))
    assert line in CliRunner().invoke(app, ["status", str(recipe)]).output

    # The panorama: flagged with kohya's bucket, the size it covers and the share its centre crop drops.
    assert "| pano | 2100x140 | 15:1 | 1024x256 | 3840x256 | 73.3% |" in (work / "reports/buckets.md").read_text()
    assignment = json.loads((work / "reports/buckets.json").read_text())
    assert assignment["pano"]["aspect_out_of_range"] and assignment["pano"]["kohya_crop_share"] == 0.7333
    assert (assignment["pano"]["kohya_bucket"], assignment["pano"]["kohya_resized"]) == ([1024, 256], [3840, 256])
    assert not assignment["pic"]["aspect_out_of_range"] and "thumb" not in assignment
    aspect = ("buckets", "1 picture(s) with an aspect ratio outside the buckets' range (pano); kohya's centre crop "
              "throws away up to 73% (pano): see reports/buckets.md")
    with Catalog.open(work, read_only=True) as cat:
        assert [(w["stage"], w["message"]) for w in cat.stage_warnings(first)] == [aspect]

    # Unchanged: cached, and the skip is recorded for this run too.
    second = bake(recipe)
    assert set(status(work, second).values()) == {"cached"}
    with Catalog.open(work, read_only=True) as cat:
        assert [s["subject"] for s in cat.skips_for(second) if s["stage"] == "upscale"] == ["thumb"]
        assert [(w["stage"], w["message"]) for w in cat.stage_warnings(second)] == [aspect]  # and its warning

    # Kept by name: only the thumbnail is upscaled now, the others come from the catalog.
    write_recipe(tmp_path, '\n[upscale]\nkeep_small = ["thumb"]\n', thumbnails=False)
    third = bake(recipe)
    st = stages(work, third)
    assert st["upscale"]["status"] == "ran" and (st["upscale"]["n_out"], st["upscale"]["n_skipped"]) == (3, 0)
    assert st["upscale"]["n_processed"] == 1
    up = outputs(work, third, "upscale")
    assert (up["thumb"]["width"], up["thumb"]["height"]) == (592, 443)
    assert "| thumb | 40x30 | 592x443 | 14.80x (kept: `keep_small`) | lanczos |" in (work / "reports/upscale.md").read_text()
    assert st["buckets"]["n_out"] == 3
