"""Pure functions of the prepare stages on generated pictures (no Prefect)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from bakery.craft.prepare import alpha, trim, upscale
from bakery.craft.prepare.bucket_report import bucket_report, merge_plan, report_markdown
from bakery.craft.prepare.dedupe import Candidate, near_duplicates, near_pairs, perceptual_hash
from bakery.manifest import ImageRef
from tests.prepare_images import crop_margin, jpeg, padded, rgba_sprite, scene


# -- alpha ------------------------------------------------------------------
def test_alpha_rgba_la_and_palette_transparency_become_rgb_on_background():
    rgba = rgba_sprite(64, 64)
    out = alpha.remove_alpha(rgba)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((32, 32)) == (255, 0, 0)
    la = Image.new("LA", (8, 8), (0, 0))
    assert alpha.remove_alpha(la, "#00ff00").getpixel((0, 0)) == (0, 255, 0)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    pal.info["transparency"] = 0
    assert alpha.remove_alpha(pal, "black").getpixel((3, 3)) == (0, 0, 0)
    # half-transparent red over white is pink
    half = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    assert alpha.remove_alpha(half).getpixel((0, 0)) == (255, 127, 127)


def test_alpha_leaves_opaque_modes_alone():
    assert alpha.remove_alpha(scene(32, 32, 1)) is None
    assert alpha.remove_alpha(Image.new("L", (4, 4))) is None


# -- trim -------------------------------------------------------------------
def test_trim_removes_uniform_padding_within_fuzz():
    pic = scene(200, 150, 3)
    pad = padded(pic, (30, 10, 5, 40))
    # noisy near-white padding (within 20 %) still counts as padding
    arr = np.asarray(pad).astype(int)
    noise = np.random.default_rng(0).integers(-20, 1, arr.shape)
    mask = np.ones(arr.shape[:2], bool)
    mask[10:160, 30:230] = False
    arr[mask] += noise[mask]
    noisy = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    box = trim.content_box(noisy, 0.2, 16)
    # the scene's own border may match the padding colour: the box is inside the pasted picture
    assert 30 <= box[0] and 10 <= box[1] and box[2] <= 230 and box[3] <= 160
    assert box[2] - box[0] > 150 and box[3] - box[1] > 100
    assert trim.trim(pic, 0.2, 16) is None or trim.trim(pic, 0.2, 16).size != pic.size


def test_trim_keeps_min_size_and_uniform_images():
    tiny = padded(Image.new("RGB", (10, 10), (0, 0, 0)), (100, 100, 100, 100))
    out = trim.trim(tiny, 0.2, 64)
    assert out.size == (64, 64)
    assert np.asarray(out).min() == 0  # the content is inside
    assert trim.trim(Image.new("RGB", (50, 50), (9, 9, 9)), 0.2, 16) is None


def test_trim_border_shortcut_gives_the_full_scan_box():
    """Deciding "nothing to trim" from the edge rows and columns alone gives what scanning every pixel gives,
    whichever sides are padded (none, one, several, all) and however near the padding colour the content is."""
    rng = np.random.default_rng(7)
    for case in range(60):
        w, h = (int(v) for v in rng.integers(20, 90, 2))
        content = rng.integers(0, 256, (h, w, 3))
        if case % 3 == 0:  # content close to the padding colour (white), around the fuzz limit
            content = 255 - rng.integers(0, 80, (h, w, 3))
        sides = tuple(int(rng.integers(1, 12)) if rng.random() < 0.4 else 0 for _ in range(4))
        pic = padded(Image.fromarray(content.astype(np.uint8)), sides)
        full = trim._off_corner(pic, pic.getpixel((0, 0)), 0.2).getbbox()
        box = trim.content_box(pic, 0.2, 1)
        if full is None or full == (0, 0, pic.width, pic.height):
            assert box == (0, 0, pic.width, pic.height), (case, sides)
        else:
            assert box == full, (case, sides)
        if sides == (0, 0, 0, 0) and case % 3:  # random content fills the frame
            assert trim.trim(pic, 0.2, 1) is None
        if trim.leaves_alone(trim.edge_spread(pic), 0.2):  # what trim decides from the catalog, undecoded
            assert full is None or full == (0, 0, pic.width, pic.height), (case, sides)


@pytest.mark.parametrize("fuzz", [0.0, 0.05, 0.2, 0.5])
def test_edge_spread_agrees_with_the_full_scan_at_the_fuzz_limit(fuzz):
    """Edges that differ from the corner by just about the fuzz (the lookup tables' rounding zone)."""
    limit = fuzz * 255 * 3 ** 0.5  # the largest in-fuzz distance, all of it on one channel
    for step in range(-6, 7):
        d = min(255, max(0, round(limit + step * 0.3)))
        pic = Image.new("RGB", (40, 30), (0, 0, 0))
        for xy in ((20, 0), (20, 29), (0, 15), (39, 15)):  # one pixel per edge, d off on red
            pic.putpixel(xy, (d, 0, 0))
        pic.paste((d, 0, 0), (10, 10, 30, 20))
        full = trim._off_corner(pic, (0, 0, 0), fuzz).getbbox()
        spread = trim.edge_spread(pic)
        assert abs(spread - d / 255 / 3 ** 0.5) < 1e-9
        if trim.leaves_alone(spread, fuzz):
            assert full == (0, 0, 40, 30), (fuzz, d)
        assert trim.content_box(pic, fuzz, 1) == (full or (0, 0, 40, 30))
    assert trim.edge_spread(Image.new("RGBA", (8, 8))) is None  # the alpha stage changes it first
    assert not trim.leaves_alone(None, fuzz)


# -- upscale ----------------------------------------------------------------
def test_upscale_target_size_reaches_resolution_squared():
    assert upscale.target_size(512, 512, 512) is None
    assert upscale.target_size(1024, 300, 512) is None
    for w, h in [(100, 80), (300, 200), (511, 512), (1000, 10), (7, 3)]:
        tw, th = upscale.target_size(w, h, 512)
        assert tw * th >= 512 * 512
        assert abs(tw / th - w / h) / (w / h) < 0.02 or min(w, h) < 20
        assert (tw - 1) * th < 512 * 512 or tw * (th - 1) < 512 * 512  # smallest


def test_upscale_too_small_past_max_factor_per_side():
    # 40x30 at 512 px: 592x443, 14.8x per side (the guide's ESRGAN models are 4x).
    assert upscale.target_size(40, 30, 512) == (592, 443)
    assert upscale.too_small(40, 30, 512, 4.0) == "too small: 40x30 would need 14.8x per side > upscale.max_factor = 4"
    assert upscale.too_small(40, 30, 512, 15.0) is None
    assert upscale.too_small(128, 128, 512, 4.0) is None  # exactly 4x: allowed
    assert upscale.too_small(127, 128, 512, 4.0).endswith("4.031x per side > upscale.max_factor = 4")
    assert upscale.too_small(600, 500, 512, 1.0) is None  # large enough: nothing to upscale
    assert upscale.factor_per_side(300, 200, (600, 437)) == 2.185


def tiny_rrdbnet_state_dict(scale: int = 4, nf: int = 8, blocks: int = 1) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of RealESRGAN's RRDBNet files (conv_first, body.N.rdbM ...)."""
    g = torch.Generator().manual_seed(0)
    gc, sd = 32, {}  # spandrel reads the growth channels as 32, like every released ESRGAN

    def conv(name: str, cin: int, cout: int) -> None:
        sd[name + ".weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[name + ".bias"] = torch.zeros(cout)

    conv("conv_first", 3 * {1: 16, 2: 4}.get(scale, 1), nf)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{c}", nf + (c - 1) * gc, gc if c < 5 else nf)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", nf, 3)
    return sd


@pytest.fixture(scope="module")
def esrgan_files(tmp_path_factory) -> dict[str, str]:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("esrgan")
    files = {}
    for scale in (4, 2):
        sd = tiny_rrdbnet_state_dict(scale)
        files[f"x{scale}.pth"] = str(folder / f"tiny_x{scale}.pth")
        torch.save(sd, files[f"x{scale}.pth"])
        files[f"x{scale}.safetensors"] = str(folder / f"tiny_x{scale}.safetensors")
        save_file(sd, files[f"x{scale}.safetensors"])
    return files


@pytest.mark.parametrize("name", ["x4.pth", "x4.safetensors", "x2.safetensors"])
def test_spandrel_loads_real_file_formats_and_upscales(esrgan_files, name):
    model = upscale.load_spandrel(esrgan_files[name], "auto", tile=32, overlap=8)
    assert model.scale == int(name[1]) and "ESRGAN" in model.name
    assert model.device == ("cuda" if torch.cuda.is_available() else "cpu")
    im = scene(60, 45, 2)
    size = upscale.target_size(im.width, im.height, 128)
    out, passes = upscale.spandrel_upscale(im, size, model)
    assert out.size == size and out.mode == "RGB"
    assert passes == (1 if model.scale == 4 else 2)


def test_spandrel_tiling_matches_whole_image(esrgan_files):
    whole = upscale.load_spandrel(esrgan_files["x4.pth"], "cpu", tile=0)
    tiled = upscale.load_spandrel(esrgan_files["x4.pth"], "cpu", tile=24, overlap=8)
    im = scene(70, 50, 4)
    a, b = np.asarray(whole(im)).astype(int), np.asarray(tiled(im)).astype(int)
    assert a.shape == (200, 280, 3) and np.abs(a - b).max() <= 1


def test_spandrel_missing_model_says_what_to_pass(tmp_path):
    with pytest.raises(upscale.ModelMissing, match="model"):
        upscale.load_spandrel(tmp_path / "RealESRGAN_x4plus.pth")


# -- near-duplicates --------------------------------------------------------
def test_near_pairs_matches_brute_force():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    for a, b in zip(range(0, 200, 2), range(1, 200, 2)):  # plant close pairs
        v = int(h[a])
        for bit in rng.choice(64, int(rng.integers(0, 11)), replace=False):
            v ^= 1 << int(bit)
        h[b] = v
    for t in (0, 3, 8, 10):
        i, j, d = near_pairs(h, t)
        got = set(zip(i.tolist(), j.tolist()))
        dist = np.bitwise_count(h[:, None] ^ h[None, :])
        want = {(a, b) for a, b in zip(*np.nonzero(np.triu(dist <= t, 1)))}
        assert got == want, t
        assert (d <= t).all()


def _cand(name: str, im: Image.Image, rank: int = 99, added: str = "") -> Candidate:
    ph = perceptual_hash(im)
    return Candidate(ImageRef(name, name.ljust(64, "0")), im.width, im.height, ph.phash, ph.dhash, ph.colour, rank, added)


def test_near_duplicates_found_and_best_copy_kept():
    base = [scene(640, 480, s) for s in range(6)]
    cands = [_cand(f"orig{s}", im) for s, im in enumerate(base)]
    cands += [
        _cand("small0", base[0].resize((320, 240), Image.Resampling.LANCZOS)),
        _cand("jpeg1", jpeg(base[1])),
        _cand("crop2", crop_margin(base[2], 0.02)),
    ]
    groups = near_duplicates(cands, 8, 12)
    pairs = sorted((d.kept.ref.name, d.dropped.ref.name) for g in groups for d in g.dropped)
    # orig1 and jpeg1 have the same size: the better source would decide; unknown -> name order
    assert pairs == [("jpeg1", "orig1"), ("orig0", "small0"), ("orig2", "crop2")] or \
        pairs == [("orig0", "small0"), ("orig1", "jpeg1"), ("orig2", "crop2")]
    for g in groups:
        for d in g.dropped:
            assert d.phash_distance <= 8 and d.dhash_distance <= 12


def test_keep_order_source_rank_then_oldest_and_keep_override():
    im = scene(300, 300, 9)
    a = _cand("a", im, rank=5, added="2024-01-02")
    b = _cand("b", im.copy(), rank=0, added="2024-01-03")
    c = _cand("c", im.copy(), rank=0, added="2024-01-01")
    (g,) = near_duplicates([a, b, c], 8, 12)
    assert [k.ref.name for k in g.kept] == ["c"]  # best source, then oldest
    (g,) = near_duplicates([a, b, c], 8, 12, keep=["a"])
    assert [k.ref.name for k in g.kept] == ["c", "a"] and [d.dropped.ref.name for d in g.dropped] == ["b"]
    (g,) = near_duplicates([a, b, c], 8, 12, keep=["a", "b00000"])  # a hash prefix works too
    assert [k.ref.name for k in g.kept] == ["c", "b", "a"] and g.dropped == []


def test_different_pictures_not_merged():
    cands = [_cand(f"s{s}", scene(320, 240, s)) for s in range(40)]
    assert near_duplicates(cands, 8, 12) == []


# -- bucket report ------------------------------------------------------------
def test_bucket_report_counts_tiny_worst_and_merge():
    sizes = {"hd": (1920, 1080), "sq": (512, 512), "sq2": (600, 600), "tall": (300, 1000), "huge": (4096, 4096)}
    rep = bucket_report(sizes, 512, max_buckets=2, tiny_bucket=1)
    assert rep.counts == {(256, 832): 1, (512, 512): 3, (640, 384): 1}
    assert set(rep.tiny) == {(256, 832), (640, 384)}
    assert rep.worst[0].name == "huge" and rep.worst[0].downscale == 8.0
    assert len(rep.merged_counts) == 2 and sum(rep.merged_counts.values()) == 5
    hd = next(p for p in rep.placed if p.name == "hd")
    assert hd.choice.bucket == (640, 384) and hd.choice.resized == (683, 384)
    md = report_markdown(rep, 2.0, False)
    assert "| 512x512 | 3 |" in md and "crop a portrait" in md


def test_bucket_report_flags_aspect_ratios_outside_the_bucket_range():
    sizes = {"pano": (2100, 140), "tall": (100, 1500), "edge": (1024, 256), "hd": (1920, 1080)}
    rep = bucket_report(sizes, 512, max_buckets=9)
    assert rep.aspects == (0.25, 4.0)
    assert [p.name for p in rep.out_of_range] == ["pano", "tall"]  # 4:1 itself is in range
    pano = rep.out_of_range[0]
    assert pano.choice.bucket == (1024, 256) and pano.choice.resized == (3840, 256)
    md = report_markdown(rep, 2.0, False)
    assert "## Aspect ratio out of range (2): buckets go from 1:4 to 4:1" in md
    assert "| pano | 2100x140 | 15:1 | 1024x256 | 3840x256 | 73.3% |  |" in md
    # no_upscale: kohya's buckets follow each picture, nothing is out of range.
    assert bucket_report(sizes, 512, no_upscale=True).out_of_range == []


def test_merge_plan_folds_smallest_into_nearest_aspect():
    counts = {(512, 512): 10, (576, 448): 1, (448, 576): 5, (832, 256): 2}
    plan = merge_plan(counts, 3)
    assert plan == {(576, 448): (512, 512)}
    plan = merge_plan(counts, 1)
    assert set(plan.values()) == {(512, 512)} and len(plan) == 3


def test_same_drawing_in_another_colour_is_not_a_duplicate():
    from PIL import ImageDraw

    def outfit(colour):
        im = Image.new("RGB", (300, 400), (230, 230, 230))
        d = ImageDraw.Draw(im)
        d.ellipse([110, 30, 190, 110], fill=(250, 215, 190))
        d.polygon([(90, 120), (210, 120), (250, 380), (50, 380)], fill=colour)
        return im

    red, blue = _cand("red", outfit((200, 40, 50))), _cand("blue", outfit((40, 70, 190)))
    assert near_duplicates([red, blue], 8, 12, colour_threshold=255) != []  # grey hashes alone merge them
    assert near_duplicates([red, blue], 8, 12, colour_threshold=32) == []


def test_chained_group_only_drops_images_near_the_kept_one():
    im = scene(400, 300, 11)
    a = _cand("a", im)
    b = Candidate(ImageRef("b", "b" * 64), 300, 200, a.phash ^ 0b1111, a.dhash, a.colour)
    c = Candidate(ImageRef("c", "c" * 64), 200, 100, a.phash ^ 0b11111111, a.dhash, a.colour)
    (g,) = near_duplicates([a, b, c], 5, 12)  # a~b (4 bits), b~c (4 bits), a-c 8 bits apart
    assert [k.ref.name for k in g.kept] == ["a"] and [d.dropped.ref.name for d in g.dropped] == ["b"]
