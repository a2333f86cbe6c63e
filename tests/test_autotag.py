"""The WD14 tagger path on a tiny ONNX model with the real signature (tests/wd14_model.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bakery.craft.caption import wd14
from tests.wd14_model import write_tiny_wd14


def test_preprocess_pads_white_resizes_and_swaps_to_bgr():
    im = Image.new("RGB", (40, 20), (0, 0, 255))  # wide blue image
    arr = wd14.preprocess(im, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.float32
    assert arr.max() <= 255 and arr.min() >= 0
    assert (arr[0, 16] == 255).all() and (arr[31, 16] == 255).all()  # white padding top and bottom
    assert arr[16, 16].tolist() == [255.0, 0.0, 0.0]  # blue lands in channel 0: BGR
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent -> white, not black
    assert (wd14.preprocess(rgba, 8) == 255).all()


def test_tiny_model_tags_by_colour_with_thresholds_and_rating(tmp_path: Path):
    tagger = wd14.WD14Tagger(write_tiny_wd14(tmp_path / "m"))
    assert tagger.size == 32 and tagger.input_name == "input_1:0" and not tagger.channels_first
    assert "CPUExecutionProvider" in tagger.providers
    ims = [Image.new("RGB", (50, 50), c) for c in ((255, 0, 0), (0, 0, 255), (0, 0, 0))]
    probs = tagger.predict(ims, batch_size=2)  # two batches: 2 + 1
    assert probs.shape == (3, len(tagger.tags))
    th = wd14.Thresholds()
    got = [[p.tag for p in wd14.select(row, tagger.tags, th)] for row in probs]
    assert got == [["red_theme", "simple_background"], ["blue_theme", "simple_background"], ["chara_x", "simple_background"]]
    # The character threshold (0.85) is stricter than the general one (0.35).
    dark = probs[2]
    assert [p.tag for p in wd14.select(dark, tagger.tags, wd14.Thresholds(character=0.99999))] == ["simple_background"]
    kept = wd14.select(probs[0], tagger.tags, wd14.Thresholds(keep_rating=True))
    assert kept[-1] == wd14.Prediction("general", "rating", pytest.approx(0.731, abs=1e-3))


def test_second_model_merges_union_with_max_confidence(tmp_path: Path):
    a = wd14.WD14Tagger(write_tiny_wd14(tmp_path / "a"))
    b = wd14.WD14Tagger(write_tiny_wd14(tmp_path / "b", size=16, extra_tags=[("umbrella", 0, (0.0, 0.0, 0.0), 2.0)]))
    im = [Image.new("RGB", (20, 20), (255, 0, 0))]
    pa = wd14.select(a.predict(im)[0], a.tags, wd14.Thresholds())
    pb = wd14.select(b.predict(im)[0], b.tags, wd14.Thresholds())
    merged = wd14.merge(pa, pb)
    assert [p.tag for p in merged] == ["red_theme", "umbrella", "simple_background"]
    assert len({p.tag for p in merged}) == len(merged)


def test_fixed_batch_and_other_input_names(tmp_path: Path):
    tagger = wd14.WD14Tagger(write_tiny_wd14(tmp_path / "v3", input_name="input", batch=1))
    assert tagger.fixed_batch == 1
    probs = tagger.predict([Image.new("RGB", (9, 9), (255, 0, 0))] * 3, batch_size=8)
    assert probs.shape[0] == 3


def test_missing_model_is_a_clear_error(tmp_path: Path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail fast
    (tmp_path / "empty").mkdir()
    with pytest.raises(wd14.TaggerError, match="lacks model.onnx, selected_tags.csv"):
        wd14.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(wd14.TaggerError, match="neither a folder"):
        wd14.resolve_model(str(tmp_path / "nowhere"))
    # A hub id with no network: the error says what to pass instead.
    with pytest.raises(wd14.TaggerError, match="set autotag.model to the folder"):
        wd14.resolve_model("SmilingWolf/not-a-real-tagger-xyz")
