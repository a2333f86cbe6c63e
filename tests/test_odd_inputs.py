"""Odd inputs (tests/odd_files.py): each gives the pixels a viewer shows, or a recorded skip with its
reason, in the convert craft and in a real Prefect run up to alpha; the originals never change."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bakery.craft.gather.convert import convert_image
from bakery.craft.gather.ingest import Limits, SkipImage, inspect_image, list_folder, shown
from bakery.recipe import DEFAULT_MAX_PIXELS, IngestParams
from storage import Catalog, ContentStore
from tests.conftest import write_recipe
from tests.odd_files import Odd, write_corpus

LIMITS = Limits(tuple(IngestParams().formats), DEFAULT_MAX_PIXELS, 256 * 2**20)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Odd]]:
    base = tmp_path_factory.mktemp("odd")
    return base / "images", write_corpus(base / "images", base / "outside")


def difference(out: np.ndarray, expected: np.ndarray) -> int:
    """Largest channel difference; colour only counts where the expected pixel is not fully transparent."""
    if out.shape != expected.shape:
        return 999
    out, expected = out.astype(int), expected.astype(int)
    seen = expected[..., 3] > 0
    colour = np.abs(out[..., :3] - expected[..., :3])[seen]
    return int(max(np.abs(out[..., 3] - expected[..., 3]).max(), colour.max() if colour.size else 0))


def on_white(expected: np.ndarray) -> np.ndarray:
    """What the alpha stage makes of a picture: composited onto white, alpha gone."""
    a = expected[..., 3:] / 255.0
    rgb = (expected[..., :3] * a + 255 * (1 - a)).round().astype(np.uint8)
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


def mismatches(case: Odd, outputs: list[np.ndarray], extra_tol: int = 0) -> list[str]:
    if len(outputs) != len(case.frames):
        return [f"{case.rel}: {len(outputs)} pictures, expected {len(case.frames)}"]
    found = [(k, difference(o, e)) for k, (o, e) in enumerate(zip(outputs, case.frames))]
    return [f"{case.rel} picture {k + 1}: off by {d} > {case.tol + extra_tol}" for k, d in found
            if d > case.tol + extra_tol]


def test_convert_gives_each_picture_as_a_viewer_shows_it(corpus):
    root, cases = corpus
    wrong, profiled = [], []
    for case in (c for c in cases if c.frames):
        data = (root / case.rel).read_bytes()
        decoded = []
        for frame in convert_image(data, compress_level=1):
            with Image.open(io.BytesIO(frame.png if frame.png is not None else data)) as out:
                assert out.mode in ("RGB", "RGBA")
                decoded.append(np.asarray(out.convert("RGBA")))  # honours an RGB PNG's tRNS key, as alpha does
                if "icc_profile" in out.info:
                    profiled.append(case.rel)
        wrong += mismatches(case, decoded)
    assert wrong == []
    assert profiled == []  # the pixels are sRGB now: no output claims another profile (nor a broken one)


def test_bad_files_are_refused_with_their_reason(corpus):
    root, cases = corpus
    for case in (c for c in cases if c.skip and not c.walk_skip):
        with pytest.raises(SkipImage, match=case.skip):
            inspect_image((root / case.rel).read_bytes(), LIMITS)


def test_the_walk_records_every_entry_it_cannot_use_and_ends(corpus):
    root, cases = corpus
    walk = list_folder(root)
    expected = {shown(root / c.rel): c.skip for c in cases if c.walk_skip}
    assert {subject for subject, _ in walk.skips} == set(expected)
    for subject, reason in walk.skips:
        assert expected[subject] in reason, (subject, reason)
    files = {p.relative_to(root).as_posix() for p in walk.files}
    assert files == {c.rel for c in cases if not c.walk_skip}  # followed links included, once
    assert walk.files == sorted(walk.files)


def test_a_flat_walk_records_what_it_cannot_use_at_its_level(corpus):
    root, _ = corpus
    walk = list_folder(root / "bad", recursive=False)
    assert sorted(Path(s).name for s, _ in walk.skips) == ["broken_link.png", "fifo.png", "folder.png", "self_link.png"]
    assert [p.name for p in walk.files] == ["empty.png"]  # folder.png/inside.png is a level down


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every entry below the folders, links not followed: content hash and mtime, link target, or kind."""
    seen: dict[str, tuple] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                st = path.lstat()
                if stat.S_ISREG(st.st_mode):
                    seen[shown(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns)
                elif stat.S_ISLNK(st.st_mode):
                    seen[shown(path)] = ("link", os.readlink(path), st.st_mtime_ns)
                else:
                    seen[shown(path)] = (stat.S_IFMT(st.st_mode), st.st_mtime_ns)
    return seen


def _final_pixels(cat: Catalog, store: ContentStore, location: str) -> list[np.ndarray]:
    """The alpha stage's pictures made from one source file, in frame order, followed through the catalog."""
    (source,) = cat.rows("SELECT image_hash FROM sources WHERE location = ?", [location])
    converted = cat.rows("SELECT output_hash FROM derivations WHERE stage = 'convert' AND input_hash = ? "
                         "ORDER BY output_suffix", [source["image_hash"]])
    pictures = []
    for row in converted:
        (final,) = cat.rows("SELECT output_hash FROM derivations WHERE stage = 'alpha' AND input_hash = ?",
                            [row["output_hash"]])
        with Image.open(io.BytesIO(store.read_bytes(final["output_hash"]))) as im:
            assert im.mode == "RGB"
            pictures.append(np.asarray(im.convert("RGBA")))
    return pictures


@pytest.mark.usefixtures("prefect_server")
def test_a_real_run_gives_the_right_pixels_or_a_recorded_skip_and_leaves_originals_alone(tmp_path: Path):
    from flows.bake import bake_lora

    images, outside = tmp_path / "images", tmp_path / "outside"
    cases = write_corpus(images, outside)
    recipe = write_recipe(tmp_path, "\n[dedupe]\nnear = false\n")
    before = snapshot(images, outside)
    run_id = bake_lora(str(recipe), to_stage="alpha")

    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        skips = {(s["stage"], s["subject"]): s["reason"] for s in cat.skips_for(run_id)}
        expected = {("ingest", shown(images / c.rel)): c.skip for c in cases if c.skip}
        assert set(skips) == set(expected)  # nothing else dropped: not by convert, dedupe or alpha
        for key, fragment in expected.items():
            assert fragment in skips[key], (key, skips[key])
        store = ContentStore(tmp_path / "work/store")
        wrong = []
        for case in (c for c in cases if c.frames):
            pixels = _final_pixels(cat, store, str(images / case.rel))
            wrong += mismatches(Odd(case.rel, tuple(map(on_white, case.frames)), case.tol), pixels, extra_tol=1)
        assert wrong == []

    assert snapshot(images, outside) == before  # every original, link and special file as it was
