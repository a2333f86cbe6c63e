"""The face judge: share of renders with a face and their hair colour against the training set's, with the
test-built ONNX face detector; skipped with a note naming the key without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bakery.craft.taste.judges import face as F
from bakery.craft.taste.judges import panel as judging
from bakery.craft.taste.reports import judges as judge_report
from bakery.testmodels.tiny_detector import RED, build_marker_detector


def render(hair: tuple[int, int, int] | None, size: int = 128) -> np.ndarray:
    """A 'render': a red face marker (what the detector finds) with a fringe of `hair` across the middle of its
    top rows (what the judge reads as hair), or no face at all."""
    im = Image.new("RGB", (size, size), "white")
    if hair is not None:
        d = ImageDraw.Draw(im)
        d.rectangle([40, 30, 87, 77], fill=RED)
        d.rectangle([50, 31, 77, 38], fill=hair)
    return np.asarray(im)


def test_face_share_and_hair_distance_per_cell(tmp_path: Path):
    spec = F.FaceSpec("onnx", str(build_marker_detector(tmp_path / "face.onnx")), "crops.face_model")
    model = spec.load()
    pink, blue = (230, 60, 150), (40, 60, 230)
    assert F.face_and_hair(model, render(pink)) == (True, pink)
    assert F.face_and_hair(model, render(None)) == (False, None)
    reference = F.reference_hair(model, [render(pink), render(pink), render(None)])
    assert reference == pink
    grid = {(1, 0.0, 0, 1): render(pink), (1, 0.0, 1, 1): render(pink),
            (1, 1.0, 0, 1): render(None), (1, 1.0, 1, 1): render(blue)}
    scores = F.score({k: F.face_and_hair(model, v) for k, v in grid.items()}, reference, spec.key)
    assert scores.share == {(1, 0.0): 1.0, (1, 1.0): 0.5}
    assert scores.hair_distance[(1, 0.0)] == 0.0
    assert scores.hair_distance[(1, 1.0)] == pytest.approx(float(np.linalg.norm(np.subtract(blue, pink))))
    assert F.flags(scores) == ["epoch 1: faces found in 50% of the renders at weight 1 vs 100% without the LoRA: "
                               "the face is lost (rules.md §13: Picasso faces -> over-trained)"]
    assert {r["judge"] for r in scores.rows()} == {"face_share", "hair_distance"}
    assert F.score({}, None, "face").note.startswith("no face found in the training images")


def test_without_a_detector_the_judge_is_skipped_naming_the_key():
    scores = judging.judge_faces(judging.JudgeSetup(), {(1, 1.0, 0, 1): render((1, 2, 3))})
    assert scores.share == {} and "set [crops] face_model" in scores.note
    html = "".join(judge_report._faces_html(judging.Judged(
        None, "", *(3 * [None]), None, None, [], [], 0.2, {}, scores)))
    assert "SKIPPED: no face detector: set [crops] face_model" in html
