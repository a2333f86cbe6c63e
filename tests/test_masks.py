"""Masks: mask QA on synthetic masks; the real transparent-background path on a random-weight checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from bakery.craft.prepare.masks import (
    DISABLED_MESSAGE,
    MaskModel,
    MaskQA,
    MaskSetupError,
    as_rgb,
    histogram,
    qa_reason,
)
from bakery.manifest import ImageRef
from bakery.recipe import RecipeError, parse_recipe, stage_params_json
from bakery.testmodels.inspyrenet import build_random_inspyrenet_ckpt
from storage import Catalog, ContentStore
from tests.conftest import write_recipe
from tests.images import gradient

# Model tests run the network at 64 px: the real code path, a fraction of the time.
FAST = {"mode": "fast", "size": 64, "device": "cpu"}
# Thresholds no mask can fail (except all black), and ones every mask fails.
LENIENT = {"min_foreground": 0.0, "max_foreground": 1.0, "max_grey": 1.0}
STRICT = {"min_foreground": 0.0, "max_foreground": 0.0001}


# -- mask QA on synthetic masks ----------------------------------------------------------
def disk(size: int = 200, radius: int = 60, value: int = 255, blur: float = 0.0) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).ellipse([size / 2 - radius, size / 2 - radius, size / 2 + radius, size / 2 + radius], fill=value)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img)


def test_histogram_counts_every_pixel():
    mask = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    hist = histogram(mask)
    assert len(hist) == 256 and sum(hist) == 37 * 53
    assert hist[int(mask[0, 0])] >= 1


def test_a_clean_soft_edged_mask_passes():
    assert qa_reason(histogram(disk(blur=2.0)), MaskQA()) is None


@pytest.mark.parametrize(
    ("mask", "start"),
    [
        (np.zeros((50, 50), np.uint8), "all black"),
        (np.full((50, 50), 10, np.uint8), "all black"),  # at or below black_level
        (disk(radius=10), "nearly empty"),  # ~0.8% of the image
        (255 - disk(size=200, radius=12), "nearly full"),  # ~99% of the image
        (disk(value=128), "grey"),  # the subject is there, but in grey
        (np.zeros((0, 0), np.uint8), "empty mask"),
    ],
)
def test_bad_masks_are_rejected_with_a_reason(mask: np.ndarray, start: str):
    reason = qa_reason(histogram(mask), MaskQA())
    assert reason is not None and reason.startswith(start), reason


def test_thresholds_decide():
    small = histogram(disk(radius=10))  # ~0.8% foreground
    assert qa_reason(small, MaskQA()).startswith("nearly empty")
    assert "min_foreground 2.0%" in qa_reason(small, MaskQA())
    assert qa_reason(small, MaskQA(min_foreground=0.005)) is None
    grey = histogram(disk(value=128))
    assert qa_reason(grey, MaskQA(max_grey=1.0)) is None
    assert qa_reason(grey, MaskQA(grey_low=140, grey_high=200)) is None  # 128 is outside that band
    with pytest.raises(ValueError, match="256-bin"):
        qa_reason([1, 2, 3], MaskQA())


def test_the_model_sees_rgb_with_transparency_on_white():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert as_rgb(rgba).mode == "RGB" and as_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert as_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)


# -- recipe ----------------------------------------------------------------------------
def problems(masks: dict) -> list[str]:
    with pytest.raises(RecipeError) as err:
        parse_recipe({"masks": masks}, Path("."))
    return err.value.problems


def test_recipe_keys_are_checked_with_their_path():
    assert parse_recipe({}, Path(".")).masks.checkpoint is None  # off unless configured
    assert problems({"size": 100}) == ["masks.size: Input should be a multiple of 32, got 100"]
    assert problems({"mode": "turbo"})[0].startswith("masks.mode: must be one of")
    assert problems({"max_grey": 1.5}) == ["masks.max_grey: must be <= 1.0, got 1.5"]
    (line,) = problems({"min_foreground": 0.5, "max_foreground": 0.4})
    assert line.startswith("masks: min_foreground (0.5) must be < max_foreground (0.4)")
    (line,) = problems({"black_level": 70})
    assert "black_level < grey_low <= grey_high" in line
    assert problems({"checkpoint_path": "x"}) == ["masks.checkpoint_path: unknown key"]


def test_disabled_message_says_how_to_turn_masks_on():
    assert "[masks]" in DISABLED_MESSAGE and "checkpoint =" in DISABLED_MESSAGE and "ckpt_base.pth" in DISABLED_MESSAGE


# -- the real model on a random-weight checkpoint -------------------------------------------
def _checkpoint_cache() -> Path | None:
    """Where the random checkpoint is kept between sessions ($BAKERY_TEST_CACHE, ~/.cache/bakery-test)."""
    root = Path(os.environ.get("BAKERY_TEST_CACHE") or Path.home() / ".cache" / "bakery-test")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return root if os.access(root, os.W_OK) else None


@pytest.fixture(scope="session")
def inspyrenet_ckpt(tmp_path_factory: pytest.TempPathFactory):
    """InSPyReNet_SwinB(depth=64) with random weights (~370 MB), built once and reused.

    Its name holds everything its bytes depend on (seed, library and torch versions); it is
    written atomically, so a reader never sees half a file, and any session can rebuild it.
    """
    import importlib.metadata

    import torch

    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # before transparent_background (albumentations) is imported
    home = tmp_path_factory.mktemp("transparent-background")
    os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"] = str(home)  # never ~/.transparent-background
    name = (f"inspyrenet-swinb-random-s0-tb{importlib.metadata.version('transparent-background')}"
            f"-torch{torch.__version__.split('+')[0]}.pth")
    cache = _checkpoint_cache()
    path = (cache or tmp_path_factory.mktemp("inspyrenet")) / name
    if not path.is_file():
        build_random_inspyrenet_ckpt(path)
    yield path
    if cache is None:
        path.unlink(missing_ok=True)


def stage_params(base: Path, **masks) -> str:
    from bakery.stage_params import masks_params

    return stage_params_json(masks_params(parse_recipe({"masks": masks}, base)))


def put_images(store: ContentStore, images: dict[str, Image.Image]) -> list[ImageRef]:
    refs = []
    for name, img in images.items():
        path = store.root / "tmp-in.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        refs.append(ImageRef(name, store.put_file(path).sha256))
        path.unlink()
    return sorted(refs)


def run_masks(refs: list[ImageRef], params_json: str, work: Path, run_id: str):
    """The masks stage alone, in a flow run of its own (as the bake flow runs it)."""
    from prefect import flow

    from tasks.prepare.masks import MASKS
    from tasks.stage import RunInfo, run_stage

    @flow(name="masks-only", validate_parameters=False)
    def masks_only(refs: list[ImageRef], params_json: str, work: str, run_id: str):
        return run_stage(MASKS, refs, params_json, RunInfo(run_id, work, 1))

    return masks_only(refs, params_json, str(work), run_id)


@pytest.mark.usefixtures("prefect_server")
def test_masks_from_the_real_model_are_stored_checked_and_reused(tmp_path: Path, inspyrenet_ckpt: Path):
    work = tmp_path / "work"
    store = ContentStore(work / "store")
    a, b = gradient(96, 64, seed=1), gradient(64, 80, seed=2).convert("RGBA")
    refs = put_images(store, {"a": a, "b": b})
    lenient = stage_params(tmp_path, checkpoint=str(inspyrenet_ckpt), **FAST, **LENIENT)

    # Every image gets a greyscale mask of its own size, kept as a 'masks' derivation.
    result = run_masks(refs, lenient, work, "r1")
    assert result.n_processed == 2 and [r.hash for r in result.images] == [r.hash for r in refs]
    assert all(r.mask for r in result.images)
    for ref, img in zip(result.images, (a, b)):
        with Image.open(store.path(ref.mask)) as mask:
            assert (mask.format, mask.mode, mask.size) == ("PNG", "L", img.size)
    with Catalog.open(work, read_only=True) as cat:
        rows = cat.rows("SELECT input_hash, output_hash, output_suffix FROM derivations WHERE stage = 'masks'")
        assert sorted((r["input_hash"], r["output_hash"], r["output_suffix"]) for r in rows) == sorted(
            (r.hash, r.mask, "") for r in result.images
        )
        assert [q["accepted"] for q in cat.mask_qa_for("r1")] == [True, True]
        assert set(cat.mask_histograms([r.mask for r in result.images])) == {r.mask for r in result.images}

    # The same inputs and parameters: the whole stage comes from Prefect's cache.
    run_masks(refs, lenient, work, "r2")
    with Catalog.open(work, read_only=True) as cat:
        assert cat.stage_table("r2")[0]["status"] == "cached"

    # Stricter QA: no model run, every mask re-checked and rejected with a reason.
    strict = stage_params(tmp_path, checkpoint=str(inspyrenet_ckpt), **FAST, **STRICT)
    result = run_masks(refs, strict, work, "r3")
    assert result.n_processed == 0 and result.n_out == 2
    assert [r.mask for r in result.images] == ["", ""]  # they train without masked loss
    with Catalog.open(work, read_only=True) as cat:
        qa = cat.mask_qa_for("r3")
    assert [q["accepted"] for q in qa] == [False, False] and all(q["mask_hash"] for q in qa)
    assert all(q["reason"].startswith(("nearly full", "all black")) for q in qa), qa
    with Catalog.open(work, read_only=True) as cat:
        warned = [(w["stage"], w["message"]) for w in cat.stage_warnings("r3")]
    assert warned == [("masks", "2 of 2 masks rejected; those images train without masked loss: "
                                f"{', '.join(sorted(r.name for r in refs))}")]

    # One new image: only that one goes through the model.
    refs += put_images(store, {"c": gradient(72, 72, seed=3)})
    result = run_masks(refs, lenient, work, "r4")
    assert result.n_processed == 1 and all(r.mask for r in result.images)


@pytest.mark.usefixtures("prefect_server")
def test_bake_makes_masks_with_provenance(tmp_path: Path, inspyrenet_ckpt: Path):
    from flows.bake import bake_lora

    images = tmp_path / "images"
    images.mkdir()
    gradient(80, 60, seed=5).save(images / "one.png")
    gradient(60, 80, seed=6).save(images / "two.jpg")
    recipe = write_recipe(
        tmp_path,
        f'\n[masks]\ncheckpoint = "{inspyrenet_ckpt}"\nmode = "fast"\nsize = 64\ndevice = "cpu"\n'
        "min_foreground = 0.0\nmax_foreground = 1.0\nmax_grey = 1.0\n",
    )
    work = tmp_path / "work"
    run_id = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        st = {s["stage"]: s for s in cat.stage_table(run_id)}
        assert (st["masks"]["status"], st["masks"]["n_processed"], st["masks"]["n_out"]) == ("ran", 2, 2)
        qa = cat.mask_qa_for(run_id)
        assert [q["accepted"] for q in qa] == [True, True]
        # A mask traces back through its image to the original file.
        prov = cat.provenance(qa[0]["mask_hash"])
        assert prov.steps[-1].stage == "masks" and prov.steps[-1].input_hash == qa[0]["image_hash"]
        assert Path(prov.sources[0]["location"]).name in ("one.png", "two.jpg")
    again = bake_lora(str(recipe))
    with Catalog.open(work, read_only=True) as cat:
        assert {s["stage"]: s["status"] for s in cat.stage_table(again)}["masks"] == "cached"


@pytest.mark.usefixtures("prefect_server")
def test_without_checkpoint_images_pass_without_masks(tmp_path: Path):
    from tasks.stage import StageFailed

    work = tmp_path / "work"
    refs = put_images(ContentStore(work / "store"), {"a": gradient(32, 32)})
    result = run_masks(refs, stage_params(tmp_path), work, "r1")
    assert result.images == refs and result.n_processed == 0
    with Catalog.open(work, read_only=True) as cat:
        assert cat.rows("SELECT count(*) AS n FROM derivations WHERE stage = 'masks'") == [{"n": 0}]

    # A checkpoint that is not there fails the stage, naming the key.
    with pytest.raises(StageFailed, match="masks.checkpoint: no file at .*nothing.pth"):
        run_masks(refs, stage_params(tmp_path, checkpoint="nothing.pth"), work, "r2")


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path, inspyrenet_ckpt: Path):
    import torch

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(MaskSetupError, match="masks.checkpoint: .*junk.pth is not a transparent-background"):
        MaskModel(junk, tmp_path / "cfg", **FAST)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(MaskSetupError, match="is not a transparent-background .*Missing key"):
        MaskModel(other, tmp_path / "cfg", **FAST)


def test_the_stage_makes_only_missing_masks_keeps_them_in_batches_and_judges_all():
    """bakery/craft/prepare/masks.py mask_pictures, with no Prefect: a mask made from each picture's own pixels."""
    from bakery.craft.prepare.masks import Mask, MaskQA, histogram, mask_pictures

    def subject(seed: int) -> np.ndarray:  # a bright disc on black: an accepted mask
        m = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(m).ellipse((8 + seed, 8, 48 + seed, 56), fill=255)
        return np.asarray(m)

    pics = [ImageRef(f"p{i}", f"{i:064x}") for i in range(5)]
    black = Mask(pics[0].hash, "m0", histogram(np.zeros((64, 64), np.uint8)))  # known from an earlier run
    made, batches = [], []

    def make(ref: ImageRef) -> Mask:
        if ref.name == "p3":
            raise OSError("gone from the store")
        made.append(ref.name)
        return Mask(ref.hash, "m" + ref.name, histogram(subject(int(ref.name[1:]))), 64, 64)

    run = mask_pictures(pics, {black.image_hash: black}, pics[1:], make, batches.append, MaskQA(), batch=2)
    assert made == ["p1", "p2", "p4"] and [[m.image_hash for _, m in b] for b in batches] == [
        [pics[1].hash, pics[2].hash], [pics[4].hash]]
    assert [r.mask for r in run.images] == ["", "mp1", "mp2", "", "mp4"] and run.made == 4
    assert [(ref.name, reason.split(" (")[0]) for ref, reason in run.rejected] == [
        ("p0", "all black"), ("p3", "cannot read image: gone from the store")]
    assert [v["accepted"] for v in run.verdicts] == [False, True, True, False, True]
