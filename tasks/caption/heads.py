"""The heads each picture shows, for the several-characters check ([judges] screen_several_characters).

The framing stage's detections are reused (tasks/prepare/crops.py records them in the catalog per picture and
detector key): a picture's own, else those of the picture it was derived from, but never across a crop the crops
stage cut (its parent shows more than the crop). The detector runs only on pictures with none recorded, and
records what it finds the same way.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from bakery.craft.prepare import detect
from storage import Catalog
from tasks.prepare.crops import detection, detection_rows
from tasks.stage import RunInfo


def recorded(chain: Sequence[str], known: dict[str, list], cut: dict[str, str]) -> str | None:
    """The nearest picture of `chain` (the picture, then what it came from) with recorded detections."""
    for h in chain:
        if h in known:
            return h
        if h in cut:
            return None
    return None


def head_crops(spec: dict, hashes: Sequence[str], run: RunInfo) -> dict[str, tuple[int, list[Image.Image]]]:
    """image hash -> (heads found, their crops when more than one) (`spec`: stage_params.head_detector), from the
    recorded detections or detected now."""
    if spec["key"] is None:
        raise detect.DetectorError(f"crops.{spec['role']}_model = {spec['path']}: no such file "
                                   "(a deepghs YOLO detector .onnx)")
    with Catalog.open(run.catalog) as cat:
        chains = cat.ancestors(list(hashes))
        everyone = sorted({a for chain in chains.values() for a in chain})
        cut = cat.crop_framings(everyone)
        known = {h: [detection(r).box for r in rows] for h, rows in cat.detections(spec["key"], everyone).items()}
    source = {h: recorded(chains[h], known, cut) for h in hashes}
    todo = [h for h in hashes if source[h] is None]
    if todo:
        known.update(detect_heads(spec, todo, run))
        source.update({h: h for h in todo})
    out = {}
    for h in hashes:
        boxes, crops = known[source[h]], []
        if len(boxes) > 1:  # one head or none: nothing for CCIP to compare
            with Image.open(io.BytesIO(run.store.read_bytes(source[h]))) as im:
                crops = [im.convert("RGB").crop(tuple(round(v) for v in box)) for box in boxes]
        out[h] = (len(boxes), crops)
    return out


def detect_heads(spec: dict, hashes: Sequence[str], run: RunInfo) -> dict[str, list[detect.Box]]:
    """Run the detector on pictures without recorded detections; record them under the framing stage's key."""
    model = detect.YoloDetector(Path(spec["path"]), f"crops.{spec['role']}_model", spec["confidence"], spec["iou"],
                                max_side=spec["detector_size"])
    found, rows = {}, []
    for h in hashes:
        with Image.open(io.BytesIO(run.store.read_bytes(h))) as im:
            im.load()
            dets = model.detect(im)
        found[h] = [d.box for d in dets]
        rows += detection_rows(spec["key"], h, dets)
    with Catalog.open(run.catalog) as cat:
        cat.add_detections(rows)
    return found
