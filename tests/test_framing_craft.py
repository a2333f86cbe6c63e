"""Detectors (test-built ONNX files in the deepghs YOLO format), framing, crops, balance, the keep-box crop."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bakery.craft.prepare import framing
from bakery.craft.prepare.buckets import (
    BucketChoice,
    bucket_resolutions,
    fit_to_box,
    fit_to_bucket,
    keep_crop_box,
    select_bucket,
)
from bakery.craft.prepare.detect import AnimeFaceDetector, Detection, DetectorError, YoloDetector, aspect_size, decode
from bakery.testmodels.tiny_detector import RED, build_marker_detector
from bakery.testmodels.tiny_wd14 import write_tiny_wd14


def face(box, label="face", score=0.9):
    return Detection(label, score, tuple(float(v) for v in box))


def test_decode_yolo_output_scales_boxes_drops_faint_and_overlapping_ones():
    # [4 + 2 classes, 4 boxes]: centre x, centre y, w, h, score face, score person (input 100 x 100)
    boxes = [[50, 50, 20, 20, 0.9, 0.0], [51, 50, 20, 20, 0.8, 0.0], [20, 20, 10, 10, 0.1, 0.0],
             [80, 40, 40, 80, 0.0, 0.7]]
    out = np.array(boxes, dtype=np.float32).T
    found = decode(out, ["face", "person"], (100, 100), (200, 400), conf=0.25, iou_threshold=0.7)
    assert [(d.label, round(d.score, 2)) for d in found] == [("face", 0.9), ("person", 0.7)]
    assert found[0].box == (80.0, 160.0, 120.0, 240.0)  # (40..60, 40..60) scaled x2 wide, x4 tall
    assert found[1].box == (120.0, 0.0, 200.0, 320.0)


def test_decode_end_to_end_output_and_refuses_other_shapes():
    out = np.array([[10, 10, 30, 30, 0.8, 0], [11, 11, 31, 31, 0.5, 0], [0, 0, 5, 5, 0.1, 0]], dtype=np.float32)
    found = decode(out, ["face"], (100, 100), (100, 100))
    assert [d.box for d in found] == [(10.0, 10.0, 30.0, 30.0)]
    with pytest.raises(DetectorError, match="neither"):
        decode(np.zeros((7, 3), dtype=np.float32), ["face"], (100, 100), (100, 100))


@pytest.mark.parametrize("end_to_end", [False, True])
def test_onnx_detector_finds_the_box_the_test_drew(tmp_path: Path, end_to_end: bool):
    model = YoloDetector(build_marker_detector(tmp_path / "face.onnx", end_to_end=end_to_end), "crops.face_model")
    assert model.labels == ["face"] and model.input_size == (256, 256)
    im = Image.new("RGB", (512, 1024), "white")
    ImageDraw.Draw(im).rectangle([200, 96, 263, 159], fill=RED)
    (found,) = model.detect(im)  # the shifted copy is suppressed, the faint box filtered
    assert found.label == "face" and found.score == pytest.approx(0.9)
    assert found.box == pytest.approx((200, 96, 264, 160), abs=4)
    assert model.detect(Image.new("RGB", (300, 200), "white")) == []


def test_detector_size_keeps_the_aspect_as_imgutils_allow_dynamic_does():
    assert aspect_size((1000, 500), 640) == (640, 320)
    assert aspect_size((1200, 800), 416) == (416, 288)  # 277.3 rounded up to 32
    assert aspect_size((300, 200), 640) == (320, 224)  # never enlarged, only aligned


def test_a_dynamic_input_detector_sees_the_picture_at_detector_size(tmp_path: Path):
    model = YoloDetector(build_marker_detector(tmp_path / "dyn.onnx", dynamic=True), "crops.face_model", max_side=128)
    im = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(im).rectangle([100, 40, 159, 79], fill=RED)
    data, size, input_size = model.prepare(im)
    assert data.shape == (1, 3, 64, 128) and size == (400, 200) and input_size == (128, 64)
    (found,) = model.infer((data, size, input_size))
    assert found.box == pytest.approx((100, 40, 160, 80), abs=4)  # back in the picture's pixels
    fixed = build_marker_detector(tmp_path / "fixed.onnx")
    with pytest.raises(DetectorError, match=r"^crops.face_model = .*fixed at 256x256.*detector_size"):
        YoloDetector(fixed, "crops.face_model", max_side=128)


def test_missing_or_wrong_detector_files_fail_naming_the_key(tmp_path: Path):
    with pytest.raises(DetectorError, match=r"^crops.face_model = .*no such file"):
        YoloDetector(tmp_path / "nope.onnx", "crops.face_model")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DetectorError, match=r"^crops.head_model = .*not an ONNX model"):
        YoloDetector(tmp_path / "junk.onnx", "crops.head_model")
    tagger = write_tiny_wd14(tmp_path / "tagger")  # an ONNX file, but a tagger: no YOLO `names`
    with pytest.raises(DetectorError, match=r"^crops.person_model = .*names"):
        YoloDetector(tagger / "model.onnx", "crops.person_model")


def test_classify_counts_face_heights_below_the_face():
    size = (1000, 1000)
    assert framing.classify([face((400, 100, 600, 500))], size) == "portrait"  # 2.25 heads
    assert framing.classify([face((450, 100, 550, 350))], size) == "upper_body"  # 3.6
    assert framing.classify([face((450, 100, 550, 260))], size) == "cowboy_shot"  # 5.6
    assert framing.classify([face((480, 50, 520, 150))], size) == "full_body"  # 9.5
    assert framing.classify([face((0, 0, 10, 10), "person")], size) == "none"
    # a person box ending above the picture's bottom ends the figure there (legs cut by the person's box)
    person = face((300, 50, 700, 500), "person")
    assert framing.classify([face((480, 50, 520, 150)), person], size) == "cowboy_shot"  # (500 - 50) / 100 = 4.5
    assert framing.classify([face((480, 50, 520, 150), "head")], size) == "full_body"


def looked(name, concept, fr, face_box=None, size=(768, 1536)):
    dets = (face(face_box),) if face_box else ()
    return framing.Looked(name, concept, size, dets, fr)


RULES = framing.CropRules(min_face_px=64, min_crop_side=128, resolution=512, min_side=256, max_side=1024, step=64)


def test_plan_crops_small_full_body_faces_only_and_never_over_fills():
    small = (350, 100, 418, 168)  # 68 px: 68 * 704/1536 = 31.2 px after bucketing (512: bucket 320x704)
    big = (250, 100, 520, 370)  # 270 px -> 135 px: no crop
    pics = [looked(f"fb{i}", "A", "full_body", small) for i in range(6)]
    pics += [looked("fb_big", "A", "full_body", big), looked("up", "A", "upper_body", (300, 100, 500, 300)),
             looked("none", "A", "none")]
    plans = framing.plan_crops(pics, RULES)
    # A has 9 pictures: at most ceil(9 / 4) = 3 portraits (it has none) and 3 upper bodies (it has 1)
    assert sorted((p.parent, p.framing) for p in plans) == sorted(
        [(f"fb{i}", "portrait") for i in range(3)] + [(f"fb{i}", "upper_body") for i in range(2)])
    p = next(p for p in plans if p.framing == "portrait")
    assert p.face_px == pytest.approx(31.2)
    x0, y0, x1, y1 = p.box
    assert x1 - x0 == y1 - y0 and x0 <= small[0] and x1 >= small[2] and y0 <= small[1] and y1 >= small[3]
    up = next(p for p in plans if p.framing == "upper_body").box
    assert (up[3] - up[1]) == pytest.approx(4 * 68, abs=1) and (up[2] - up[0]) == pytest.approx(3 * 68, abs=1)
    bal = {b.concept: b for b in framing.balance(pics, plans)}["A"]
    assert bal.counts == {"full_body": 7, "upper_body": 3, "none": 1, "portrait": 3}
    assert any("cowboy_shot: 0" in s for s in bal.suggestions) and any("full_body: 7" in s for s in bal.suggestions)
    text = framing.balance_markdown(list(framing.balance(pics, plans)), plans, 64, "face:abc")
    assert "| A | 3 (23%) | 3 (23%) | 0 (0%) | 7 (54%) | 1 |" in text and "| fb0 | portrait |" in text


def test_crop_tags_say_the_crops_framing_and_drop_what_is_out_of_it():
    tags = ["1girl", "full_body", "red_dress", "boots", "thighhighs", "pleated_skirt", "smile", "cowboy_shot"]
    assert framing.crop_tags(tags, "portrait") == ["1girl", "red_dress", "smile", "portrait"]
    assert framing.crop_tags(tags, "upper_body") == ["1girl", "red_dress", "pleated_skirt", "smile", "upper_body"]


def test_keep_crop_box_moves_kohyas_centre_crop_as_little_as_needed():
    choice = BucketChoice((768, 320), (875, 320))  # centre crop (53, 0, 821, 320)
    assert choice.crop_box == (53, 0, 821, 320)
    assert keep_crop_box(choice, (0.2, 0.1, 0.5, 0.5)) == choice.crop_box  # already inside: unchanged
    assert keep_crop_box(choice, (0.0, 0.4, 0.05, 0.6)) == (0, 0, 768, 320)  # at the left edge
    assert keep_crop_box(choice, (0.03, 0.4, 0.08, 0.6)) == (26, 0, 794, 320)  # floor(0.03 * 875) = 26
    assert keep_crop_box(choice, (0.9, 0.4, 0.95, 0.6)) == (64, 0, 832, 320)  # ceil(0.95 * 875) - 768
    assert keep_crop_box(choice, (0.0, 0.0, 1.0, 1.0)) == (54, 0, 822, 320)  # wider than the crop: centred on it


def test_keep_crop_box_random_cases_keep_the_box_or_centre_on_it():
    resos = bucket_resolutions(512)
    rng = random.Random(3)
    for _ in range(500):
        w, h = rng.randint(200, 3000), rng.randint(200, 3000)
        c = select_bucket(w, h, resos)
        x0, y0 = rng.random(), rng.random()
        keep = (x0, y0, min(1.0, x0 + rng.random() * 0.3), min(1.0, y0 + rng.random() * 0.3))
        box = keep_crop_box(c, keep)
        (rw, rh), (bw, bh) = c.resized, (c.crop_box[2] - c.crop_box[0], c.crop_box[3] - c.crop_box[1])
        assert (box[2] - box[0], box[3] - box[1]) == (bw, bh) and 0 <= box[0] <= rw - bw and 0 <= box[1] <= rh - bh
        for lo, hi, start, window, centre in ((keep[0] * rw, keep[2] * rw, box[0], bw, c.crop_box[0]),
                                              (keep[1] * rh, keep[3] * rh, box[1], bh, c.crop_box[1])):
            if hi - lo <= window:
                assert start <= lo + 1e-9 and hi <= start + window + 1e-9  # kept
                if centre <= lo and hi <= centre + window:
                    assert start == centre  # no need to move: kohya's own crop


def test_fit_to_box_at_the_centre_crop_is_fit_to_bucket():
    im = Image.effect_noise((900, 400), 40).convert("RGB")
    c = select_bucket(900, 400, bucket_resolutions(512))
    assert fit_to_box(im, c, c.crop_box).tobytes() == fit_to_bucket(im, c).tobytes()


def test_hair_colour_is_read_above_the_face():
    im = Image.new("RGB", (100, 100), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([20, 20, 80, 40], fill=(200, 40, 150))
    d.rectangle([20, 41, 80, 80], fill=(255, 220, 200))
    assert framing.hair_colour(np.asarray(im), (20, 20, 80, 80)) == (200, 40, 150)


def test_animeface_finds_no_face_in_what_the_tests_can_draw():
    """Documented in the README: AnimeFace (the fallback) does not see simple drawn faces, so its detection
    path is untested here; this test notices if that changes."""
    pytest.importorskip("animeface")
    im = Image.new("RGB", (512, 512), "white")
    d = ImageDraw.Draw(im)
    d.ellipse([96, 40, 416, 400], fill=(230, 60, 150))
    d.ellipse([130, 110, 382, 430], fill=(255, 224, 200))
    for cx in (200, 312):
        d.ellipse([cx - 34, 230, cx + 34, 320], fill="white", outline="black", width=4)
        d.ellipse([cx - 26, 240, cx + 26, 318], fill=(40, 90, 220))
    assert AnimeFaceDetector().detect(im) == []
