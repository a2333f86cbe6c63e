#!/usr/bin/env python
"""Benchmark the crops stage (framing, face crops) against the decode-only loop.

    .venv/bin/python benchmarks/crops.py [--n 1000] [--size 640] [--model FACE.onnx] [--detector-size 416]
                                         [--json out.json]

1. Draws N pictures (seeded, 512-1,200 px per side, PNG): a grey figure on a grainy gradient with a red
   face marker, a third of them full-body with a small face (so crops are cut).
2. Baseline: one process opens and fully decodes every picture once.
3. The stage's work (`tasks.prepare.crops.frame_pictures`: read each picture from the content store, run the
   face detector, classify, plan and cut the crops, record detections and framings in the catalog) on
   a fresh work dir, timed; then again on the same work dir (detections come from the catalog).

The detector is `--model` (a deepghs ONNX YOLO face detector) or, by default, the tests' marker
detector built at `--size` (640 = the deepghs models' input): it has the real input/output format
but almost no arithmetic, so the figure measures our stage around the model, not a real model's
inference. benchmarks/yolov8n_face.py builds a YOLOv8n face detector with random weights (ultralytics'
architecture, deepghs' format) that costs what a real one costs; with `--dynamic` it takes any input size,
for `--detector-size`.

Target: crops stage <= 3x the decode-only loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from ingest import baseline_decode  # noqa: E402  (the decode-only floor, as benchmarks/ingest.py measures it)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=640, help="input side of the built marker detector")
    ap.add_argument("--model", type=Path, help="a real deepghs face detector .onnx instead")
    ap.add_argument("--detector-size", type=int, help="[crops] detector_size (a dynamic-input model)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def draw(folder: Path, n: int, seed: int) -> list[Path]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = rng.randint(512, 1200), rng.randint(512, 1200)
        ramp = np.linspace(rng.randint(150, 255), rng.randint(150, 255), w, dtype=np.float32)
        ground = np.repeat(np.stack([ramp, ramp[::-1], ramp * 0.9], -1)[None], h, 0)
        grain = np.random.default_rng(seed + i).normal(0, 6, (h, w, 1))  # as drawn and scanned art has
        im = Image.fromarray(np.clip(ground + grain, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        face = max(12, h // (12 if i % 3 == 0 else 3))  # full body (small face) or a closer framing
        x0, y0 = rng.randint(0, w - face), rng.randint(0, max(h // 4 - face, 1))
        d.rectangle([x0 - face // 2, y0 + face, x0 + face + face // 2, h - 1], fill=(110, 110, 130))
        d.rectangle([x0, y0, x0 + face - 1, y0 + face - 1], fill=(255, 0, 0))
        path = folder / f"p{i:05d}.png"
        im.save(path, compress_level=1)
        paths.append(path)
    return paths


def stage_inputs(paths: list[Path], work: Path):
    """The pictures in a content store with their catalog rows, as the stage finds them after upscale."""
    from PIL import Image

    from bakery.manifest import ImageRef
    from storage import Catalog
    from tasks.stage import RunInfo

    run = RunInfo("bench", str(work))
    refs, rows = [], []
    for p in paths:
        d = run.store.put_file(p)
        with Image.open(p) as im:
            rows.append({"hash": d.sha256, "md5": d.md5, "width": im.width, "height": im.height, "mode": im.mode,
                         "format": "PNG", "bytes": d.size, "frames": 1, "pixel_hash": None})
        refs.append(ImageRef(p.stem, d.sha256))
    with Catalog.open(run.catalog) as cat:
        cat.add_images(rows)
    return run, refs


class _Timed:
    """Adds up the seconds spent in the detector itself (onnxruntime), to tell the model's cost from ours."""

    seconds = 0.0

    @classmethod
    def wrap(cls) -> None:
        from bakery.craft.prepare.detect import YoloDetector

        infer = YoloDetector.infer

        def timed(self, prepared):
            t = time.perf_counter()
            try:
                return infer(self, prepared)
            finally:
                cls.seconds += time.perf_counter() - t

        YoloDetector.infer = timed


def main() -> int:
    args = _args()
    _Timed.wrap()
    from bakery.recipe import Recipe
    from bakery.stage_params import crops_params_json
    from bakery.testmodels.tiny_detector import build_marker_detector
    from tasks.prepare.crops import frame_pictures

    with tempfile.TemporaryDirectory(prefix="bakery-bench-crops-") as tmp:
        base = Path(tmp)
        paths = draw(base / "images", args.n, args.seed)
        model = args.model or build_marker_detector(base / "face.onnx", size=args.size)
        recipe = Recipe.model_validate({"crops": {"face_model": str(model), "min_crop_side": 64,
                                                  "detector_size": args.detector_size}})
        cfg = json.loads(crops_params_json(recipe))
        decode_s = min(baseline_decode(paths) for _ in range(2))
        run, refs = stage_inputs(paths, base / "work")
        t = time.perf_counter()
        result, balances, plans = frame_pictures(run, refs, cfg)
        first_s = time.perf_counter() - t
        model_s = _Timed.seconds
        t = time.perf_counter()
        frame_pictures(run, refs, cfg)
        again_s = time.perf_counter() - t
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or 'cpu'}",
        "n": args.n, "detector": str(args.model) if args.model else f"marker detector {args.size} px",
        "detector_size": args.detector_size,
        "decode_only_s": round(decode_s, 2), "crops_stage_s": round(first_s, 2), "rerun_s": round(again_s, 2),
        "ratio": round(first_s / decode_s, 2), "model_inference_s": round(model_s, 2),
        "ratio_without_model": round((first_s - model_s) / decode_s, 2), "crops_cut": len(plans), "pictures_out": len(result.images),
        "framings": balances[0].counts if balances else {},
    }
    print(json.dumps(out, indent=1))
    print(f"crops stage / decode-only: {out['ratio']}x ({'PASS' if out['ratio'] <= 3 else 'FAIL'}, target <= 3x)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
