"""Real Prefect runs of the gather stages on real files, checked through the DuckDB catalog."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bakery.stages import PlanError, plan_run
from storage import Catalog, ContentStore, digest_file
from tests.conftest import write_recipe
from tests.images import BAD, GOOD, SAME_BYTES, SAME_PIXELS, gradient, write_sample_folder

pytestmark = pytest.mark.usefixtures("prefect_server")


def bake(recipe: Path, **kw) -> str:
    from flows.bake import bake_lora

    return bake_lora(str(recipe), **kw)


def stages(workdir: Path, run_id: str) -> dict[str, dict]:
    with Catalog.open(workdir, read_only=True) as cat:
        return {s["stage"]: s for s in cat.stage_table(run_id)}


def status(workdir: Path, run_id: str) -> dict[str, str]:
    return {k: v["status"] for k, v in stages(workdir, run_id).items()}


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (digest_file(p).sha256, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def every(first: str, rest: str, **stage_status: str) -> dict[str, str]:
    """The status of every built stage: `first` for ingest, `rest` for the others, unless named."""
    from flows.bake import BUILT, OPTIONAL

    # these recipes have folders and no concepts: the optional stages do not run
    return {s: stage_status.get(s, first if s == "ingest" else rest) for s in BUILT if s not in OPTIONAL}


# The sample gradients differ only in hue: near-duplicates to pHash; these tests are about the chain.
NO_NEAR = "\n[dedupe]\nnear = false\n"


def test_ingest_every_format_and_bad_input(tmp_path: Path):
    images = write_sample_folder(tmp_path / "images")
    recipe = write_recipe(tmp_path, NO_NEAR)
    before = snapshot(images)
    run_id = bake(recipe)
    work = tmp_path / "work"

    with Catalog.open(work, read_only=True) as cat:
        skips = {Path(s["subject"]).relative_to(images).as_posix(): s["reason"]
                 for s in cat.skips_for(run_id) if s["stage"] == "ingest"}
        # Nothing vanishes: the later (by path) of two files with the same bytes is a skip naming the first.
        assert set(skips) == set(BAD) | set(SAME_BYTES.values())
        for rel, reason in BAD.items():
            assert reason in skips[rel]
        for first, later in SAME_BYTES.items():
            assert skips[later].startswith(f"identical to {images / first}: one picture, stored once")
        st = stages(work, run_id)
        n_files = len(GOOD) + len(BAD) + len(SAME_BYTES) + len(SAME_PIXELS)
        assert st["ingest"]["n_in"] == n_files
        # Identical bytes are stored once but both sources are recorded.
        assert st["ingest"]["n_out"] == len(GOOD) + len(SAME_PIXELS)
        rgb = digest_file(images / "good/rgb.png").sha256
        locations = [r["location"] for r in cat.rows("SELECT location FROM sources WHERE image_hash = ? ORDER BY 1", [rgb])]
        assert [Path(p).relative_to(images).as_posix() for p in locations] == ["dup/rgb_identical.png", "good/rgb.png"]
        assert cat.rows("SELECT sidecar FROM sources WHERE location = ?", [str(images / "good/rgb.png")])[0]["sidecar"]

        # Convert: GIF frames become name0001..; every output is an RGB/RGBA PNG in the store, or
        # an upright RGB/RGBA JPEG/WebP/BMP/PNG with no profile, kept as it came (no re-encode).
        expected = sorted(Path(rel).with_suffix("").as_posix() + suf for rel, sufs in GOOD.items() for suf in sufs)
        assert st["convert"]["n_out"] == len(expected) + len(SAME_PIXELS)
        outputs = cat.rows(
            """SELECT i.*, d.input_hash = d.output_hash AS kept FROM derivations d
               JOIN images i ON i.hash = d.output_hash WHERE d.stage = 'convert'"""
        )
        assert all(o["mode"] in ("RGB", "RGBA") for o in outputs)
        assert {o["format"] for o in outputs if not o["kept"]} == {"PNG"}
        kept = {o["hash"] for o in outputs if o["kept"]}
        assert {digest_file(images / rel).sha256 for rel in ("good/photo.jpg", "good/pic.webp", "good/pic.bmp",
                                                             "good/rgb.png")} <= kept
        assert digest_file(images / "good/rotated.jpg").sha256 not in kept
        # Their pixels were hashed once, by ingest, with what dedupe and trim want to know of them.
        facts = cat.rows("SELECT image_hash FROM perceptual_hashes")
        assert kept <= {f["image_hash"] for f in facts}
        store = ContentStore(work / "store")
        assert all(store.has(o["hash"]) for o in outputs)

        # Dedupe: the BMP holds the PNG's pixels; the first by name is kept.
        dup = cat.rows("SELECT * FROM duplicates")
        assert [(d["method"], d["image_hash"]) for d in dup] == [("exact", rgb)]
        assert [(s["subject"], s["reason"]) for s in cat.skips_for(run_id) if s["stage"] == "dedupe"] == [
            ("dup/rgb_identical", "exact duplicate of dup/rgb_as_bmp")  # first path names shared bytes
        ]
        assert st["dedupe"]["n_out"] == len(expected)

    assert snapshot(images) == before  # originals are never modified


def test_second_run_is_all_cached_and_param_change_reruns_downstream_only(tmp_path: Path):
    images = tmp_path / "images"
    for i in range(4):
        images.mkdir(exist_ok=True)
        gradient(64 + i, 48, seed=i).save(images / f"img{i}.jpg")
    recipe = write_recipe(tmp_path, NO_NEAR)
    work = tmp_path / "work"

    first = bake(recipe)
    assert status(work, first) == every("ran", "ran")
    # What a killed run leaves half-written in the store's tmp goes at the next run's start;
    # a temp file still being written (recent) stays.
    leftover, fresh = work / "store/tmp/put-killed", work / "store/tmp/put-writing"
    leftover.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    second = bake(recipe)
    assert status(work, second) == every("cached", "cached")
    assert not leftover.exists() and fresh.exists()

    write_recipe(tmp_path, NO_NEAR + "\n[convert]\npng_compress_level = 6\n")
    third = bake(recipe)
    # The JPEGs need no pixel change: convert keeps them as they are, so the later stages see the same files.
    assert status(work, third) == every("cached", "cached", convert="ran")
    assert stages(work, third)["convert"]["n_processed"] == 4

    # One added image: only that image is worked on inside each per-image stage.
    gradient(99, 77, seed=42).save(images / "new.jpg")
    fourth = bake(recipe)
    st = stages(work, fourth)
    assert {k: v["status"] for k, v in st.items()} == every("ran", "ran")
    assert st["ingest"]["n_processed"] == 1 and st["convert"]["n_processed"] == 1
    assert st["dedupe"]["n_out"] == 5
    assert st["alpha"]["n_processed"] == st["trim"]["n_processed"] == st["upscale"]["n_processed"] == 1
    with Catalog.open(work, read_only=True) as cat:
        new_rows = cat.rows("SELECT stage, count(*) AS n FROM derivations WHERE run_id = ? GROUP BY stage", [fourth])
    assert {r["stage"]: r["n"] for r in new_rows} == {"convert": 1, "alpha": 1, "trim": 1, "upscale": 1}

    # Changing a file's CONTENT under the same name is noticed (paths are not the key).
    gradient(99, 77, seed=43).save(images / "new.jpg")
    fifth = bake(recipe)
    assert stages(work, fifth)["convert"]["n_processed"] == 1


def test_from_and_only_force_the_right_stages(tmp_path: Path):
    (tmp_path / "images").mkdir()
    gradient(50, 50, seed=1).save(tmp_path / "images" / "a.png")
    recipe = write_recipe(tmp_path)
    work = tmp_path / "work"
    bake(recipe)
    assert status(work, bake(recipe, from_stage="convert")) == every("cached", "ran")
    assert status(work, bake(recipe, from_stage="upscale")) == every("cached", "cached", upscale="ran", crops="ran", masks="ran",
                                                                     buckets="ran")
    assert status(work, bake(recipe, only_stage="convert")) == {"ingest": "cached", "convert": "ran"}


def test_failed_run_is_recorded_and_the_rerun_resumes_from_cache(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    gradient(40, 40, seed=3).save(images / "a.png")
    recipe = write_recipe(tmp_path)
    work = tmp_path / "work"
    bake(recipe)
    shutil.rmtree(images)  # the source folder vanished: the scan fails
    with pytest.raises(Exception, match="source folder does not exist"):
        bake(recipe)
    with Catalog.open(work, read_only=True) as cat:
        assert cat.last_run()["status"] == "failed"
    write_sample_folder(images)
    gradient(40, 40, seed=3).save(images / "a.png")
    run_id = bake(recipe)
    with Catalog.open(work, read_only=True) as cat:
        assert cat.last_run()["status"] == "completed"
        # a.png was converted in the first run: only the new images are converted now.
        a = digest_file(images / "a.png").sha256
        converted = cat.rows("SELECT input_hash FROM derivations WHERE run_id = ? AND stage = 'convert'", [run_id])
        assert len(converted) == sum(len(s) for s in GOOD.values()) + len(SAME_PIXELS)
        assert a not in {r["input_hash"] for r in converted}


def test_plan_rejects_unknown_and_unbuilt_stages():
    built = ("ingest", "convert", "dedupe")
    with pytest.raises(PlanError, match="not built yet"):
        plan_run(built, from_stage="bake")
    with pytest.raises(PlanError, match="unknown stage 'bogus'"):
        plan_run(built, only_stage="bogus")
    with pytest.raises(PlanError, match="not both"):
        plan_run(built, "ingest", "convert")
    assert plan_run(built, from_stage="convert").refresh == {"convert", "dedupe"}
    assert plan_run(built, only_stage="convert").stages == ("ingest", "convert")


def test_plan_to_stops_after_a_stage_without_forcing_it():
    built = ("ingest", "convert", "dedupe", "alpha")
    plan = plan_run(built, to_stage="convert")
    assert plan.stages == ("ingest", "convert") and plan.refresh == frozenset()
    plan = plan_run(built, from_stage="convert", to_stage="dedupe")
    assert plan.stages == ("ingest", "convert", "dedupe") and plan.refresh == {"convert", "dedupe"}
    with pytest.raises(PlanError, match="comes after"):
        plan_run(built, from_stage="alpha", to_stage="convert")
    with pytest.raises(PlanError, match="not both"):
        plan_run(built, only_stage="alpha", to_stage="convert")


def _stage_rows(workdir: Path, run_id: str) -> dict[str, tuple]:
    """What a run recorded of each stage, durations and times left out."""
    keys = ("status", "n_in", "n_out", "n_processed", "n_skipped", "n_split", "n_lost", "message")
    return {name: tuple(row[k] for k in keys) for name, row in stages(workdir, run_id).items()}


def _count(workdir: Path, table: str) -> int:
    with Catalog.open(workdir, read_only=True) as cat:
        return cat.rows(f"SELECT count(*) AS n FROM {table}")[0]["n"]


def test_a_run_with_every_stage_cached_is_replayed_without_prefect_and_recorded_the_same(tmp_path: Path):
    from flows.bake import replay_cached

    images = write_sample_folder(tmp_path / "images")
    recipe = write_recipe(tmp_path, NO_NEAR)
    work = tmp_path / "work"
    first = bake(recipe)
    assert replay_cached(str(recipe), from_stage="dedupe") is None  # a refresh always goes through Prefect
    second = bake(recipe)
    replayed = replay_cached(str(recipe))
    assert replayed not in (None, first, second)
    assert status(work, replayed) == every("cached", "cached")
    assert _stage_rows(work, replayed) == _stage_rows(work, second)
    with Catalog.open(work, read_only=True) as cat:
        run = cat.rows("SELECT * FROM runs WHERE run_id = ?", [replayed])[0]
        assert (run["status"], run["flow_run_id"]) == ("completed", None) and cat.last_run()["run_id"] == replayed
        skips = {r: sorted((s["stage"], s["subject"], s["reason"]) for s in cat.skips_for(r)) for r in (second, replayed)}
    assert skips[replayed] == skips[second] and skips[replayed]  # the bad inputs are still named

    # A new picture: ingest has to run. The replay stops there and leaves nothing behind.
    n_runs, n_stage_rows, n_skips = _count(work, "runs"), _count(work, "stage_runs"), _count(work, "skips")
    gradient(99, 77, seed=42).save(images / "new.png")
    assert replay_cached(str(recipe)) is None
    assert (_count(work, "runs"), _count(work, "stage_runs"), _count(work, "skips")) == (n_runs, n_stage_rows, n_skips)
    assert status(work, bake(recipe))["ingest"] == "ran"
