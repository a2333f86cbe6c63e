"""Ingest checks and convert normalisation on real files (pure functions, no Prefect)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bakery.craft.gather.convert import convert_image, pixel_hash
from bakery.craft.gather.ingest import Limits, SkipImage, inspect_image, read_sidecar, source_name, walk_folder
from bakery.recipe import DEFAULT_MAX_PIXELS, IngestParams
from tests.images import BAD, GOOD, gradient, png_with_size

LIMITS = Limits(tuple(IngestParams().formats), DEFAULT_MAX_PIXELS, 256 * 2**20)


def test_walk_finds_every_file_recursively_in_order_without_sidecars(sample_folder: Path):
    names = [source_name(p, sample_folder) for p in walk_folder(sample_folder)]
    assert names == sorted(names)
    assert "nested/deeper/img" in names
    assert "good/rgb" in names and names.count("good/rgb") == 1  # rgb.txt is a sidecar, not a file to ingest
    assert read_sidecar(sample_folder / "good/rgb.png") == "1girl, solo, red_hair\n"
    assert read_sidecar(sample_folder / "good/photo.jpg") is None


def test_walk_of_missing_folder_says_which(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="source folder does not exist"):
        list(walk_folder(tmp_path / "nope"))


@pytest.mark.parametrize("rel", sorted(GOOD))
def test_every_accepted_format_decodes(sample_folder: Path, rel: str):
    info = inspect_image((sample_folder / rel).read_bytes(), LIMITS)
    assert info.width > 0 and info.height > 0
    assert info.frames == len(GOOD[rel])


@pytest.mark.parametrize("rel", sorted(BAD))
def test_every_bad_input_is_refused_with_its_reason(sample_folder: Path, rel: str):
    with pytest.raises(SkipImage, match=BAD[rel]):
        inspect_image((sample_folder / rel).read_bytes(), LIMITS)


def test_pixel_limit_is_the_recipes_not_pillows():
    bomb = png_with_size(20_000, 10_000)  # 200 Mpx
    with pytest.raises(SkipImage, match="exceeds ingest.max_pixels = 1,000"):
        inspect_image(bomb, Limits(("PNG",), 1_000, 2**20))
    # Raising the limit lets the header through; the (fake) data then fails to decode.
    with pytest.raises(SkipImage, match="corrupt or truncated"):
        inspect_image(bomb, Limits(("PNG",), 300_000_000, 2**20))


def _convert(path: Path) -> list[Image.Image]:
    import io

    frames = convert_image(path.read_bytes(), compress_level=1)
    return [Image.open(io.BytesIO(f.png)) if f.png else Image.open(path) for f in frames]


@pytest.mark.parametrize(
    "rel,mode",
    [
        ("good/rgb.png", "RGB"),
        ("good/rgba.png", "RGBA"),
        ("good/cmyk.jpg", "RGB"),
        ("good/palette.png", "RGBA"),  # palette with a transparent index keeps its alpha
        ("good/grey16.png", "RGB"),
        ("good/la.png", "RGBA"),
        ("good/pic.avif", "RGB"),  # sd-scripts does not read AVIF without a plugin
        ("good/rotated.jpg", "RGB"),  # EXIF orientation: the pixels change
    ],
)
def test_convert_normalises_to_8bit_rgb_or_rgba_png(sample_folder: Path, rel: str, mode: str):
    (out,) = _convert(sample_folder / rel)
    assert out.format == "PNG" and out.mode == mode


@pytest.mark.parametrize("rel", ["good/rgb.png", "good/photo.jpg", "good/pic.webp", "good/pic.bmp"])
def test_a_trainable_file_needing_no_pixel_change_is_kept_byte_for_byte(sample_folder: Path, rel: str):
    """No re-encode: a JPEG/WebP keeps its bytes (no generation loss); its pixels are still hashed."""
    data = (sample_folder / rel).read_bytes()
    (frame,) = convert_image(data, 1, facts=lambda im: {"w": im.width})
    assert frame.png is None and frame.suffix == ""
    with Image.open(sample_folder / rel) as im:
        assert frame.pixel_hash == pixel_hash(im.convert("RGB")) and frame.facts == {"w": im.width}


def test_ingest_hashes_a_kept_file_so_convert_does_not_decode_it_again(sample_folder: Path):
    data = (sample_folder / "good/photo.jpg").read_bytes()
    seen = inspect_image(data, LIMITS, seen=lambda im: pixel_hash(im)).seen
    (decoded,) = convert_image(data, 1)
    assert seen == decoded.pixel_hash
    # Given the known hash, convert reads only the header: a file cut after it is not decoded.
    (frame,) = convert_image(data[: len(data) // 2], 1, known_pixel_hash=seen)
    assert frame.png is None and frame.pixel_hash == seen and frame.facts is None
    with pytest.raises(OSError):
        convert_image(data[: len(data) // 2], 1)
    # Frames of an animation are each their own picture: nothing is seen for the file.
    assert inspect_image((sample_folder / "good/anim.gif").read_bytes(), LIMITS, seen=pixel_hash).seen is None


def test_16bit_grey_is_scaled_not_clipped(sample_folder: Path):
    (out,) = _convert(sample_folder / "good/grey16.png")
    lo, hi = out.convert("L").getextrema()
    assert lo == 0 and hi > 200  # 0..64491 -> 0..251, not saturated at 255


def test_exif_orientation_is_applied(sample_folder: Path):
    (out,) = _convert(sample_folder / "good/rotated.jpg")
    assert out.size == (40, 60)  # stored 60x40 with "rotate 90": upright is 40x60


def test_animated_gif_becomes_one_png_per_frame(sample_folder: Path):
    frames = convert_image((sample_folder / "good/anim.gif").read_bytes(), 1)
    assert [f.suffix for f in frames] == ["0001", "0002", "0003"]
    assert len({f.pixel_hash for f in frames}) == 3


def test_pixel_hash_matches_same_picture_in_other_formats(sample_folder: Path):
    png = convert_image((sample_folder / "good/rgb.png").read_bytes(), 1)[0]
    bmp = convert_image((sample_folder / "dup/rgb_as_bmp.bmp").read_bytes(), 9)[0]
    assert png.pixel_hash == bmp.pixel_hash
    assert pixel_hash(gradient(96, 64, seed=2)) != png.pixel_hash


def test_a_png_is_judged_from_its_header_but_its_exif_orientation_still_counts(tmp_path: Path):
    import io

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    buf = io.BytesIO()
    gradient(60, 40, seed=1).save(buf, "PNG", exif=exif)
    (rotated,) = convert_image(buf.getvalue(), 1, known_pixel_hash="from-ingest")
    assert rotated.png is not None and (rotated.width, rotated.height) == (40, 60)
    plain = io.BytesIO()
    gradient(60, 40, seed=1).save(plain, "PNG")
    (kept,) = convert_image(plain.getvalue(), 1, known_pixel_hash="from-ingest")
    assert kept.png is None and kept.pixel_hash == "from-ingest"
