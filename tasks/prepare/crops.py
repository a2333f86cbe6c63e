"""Crops: each picture's framing from the recipe's detectors, face crops of full-body pictures, the balance.

Detections are kept in the catalog per picture content and detector file, so a re-run (or a new
threshold of the crop rules) looks only at pictures not seen with that detector. Crops are new
pictures (`crop` derivations of their parent, with the box), counted as `split` in the account.
"""

from __future__ import annotations

import io
import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bakery.craft.gather.convert import pixel_hash, png_bytes
from bakery.craft.prepare import detect
from bakery.craft.prepare import framing as craft
from bakery.manifest import ImageRef, StageResult
from bakery.recipe import CropsParams, Recipe
from bakery.report import FRAMING_LISTING as LISTING
from bakery.report import FRAMING_REPORT as REPORT
from bakery.stage_params import DETECTOR_ROLES, detector_key
from storage import Catalog
from tasks import caching
from tasks.progress import StageProgress
from tasks.stage import RunInfo, Stage, name_outputs, params_hash


@dataclass
class CropsOutput:
    """What the crops stage hands on besides its pictures."""

    framings: dict[str, str]  # picture name -> portrait | upper_body | cowboy_shot | full_body | none
    keep_boxes: dict[str, list[float]]  # picture name -> its face as fractions (x0, y0, x1, y1) of the picture
    detector: str


def no_detector_note(recipe: Recipe) -> str:
    if not recipe.crops.enabled:
        return "off ([crops] enabled = false)"
    return ("no face detector: set [crops] face_model (a deepghs ONNX YOLO face detector) or "
            "`pip install animeface`; no framing, no face crops")


def load_detectors(cfg: dict) -> list[tuple[str, Any]]:
    """(detector key, detector) for every configured detector; a bad file fails naming its key."""
    params = CropsParams.model_validate(cfg["crops"])
    found: list[tuple[str, Any]] = []
    for role in DETECTOR_ROLES:
        path = getattr(params, f"{role}_model")
        if path is None:
            continue
        sha = cfg["sha256"].get(role)
        if sha is None:
            raise detect.DetectorError(f"crops.{role}_model = {path}: no such file (a deepghs YOLO detector .onnx)")
        model = detect.YoloDetector(Path(path), f"crops.{role}_model", params.confidence, params.iou,
                                    max_side=params.detector_size)
        found.append((detector_key(role, sha, params), model))
    if cfg.get("animeface"):
        found.append(("animeface:2", detect.AnimeFaceDetector()))
    return found


def detection_rows(key: str, image_hash: str, found: list[detect.Detection]) -> list[dict[str, Any]]:
    """The catalog rows of one picture's detections (one row with n = -1: looked, found nothing)."""
    if not found:
        return [{"image_hash": image_hash, "detector": key, "n": -1, "label": None, "score": None,
                 "x0": None, "y0": None, "x1": None, "y1": None, "hair": None}]
    return [{"image_hash": image_hash, "detector": key, "n": i, "label": d.label, "score": d.score,
             "x0": d.box[0], "y0": d.box[1], "x1": d.box[2], "y1": d.box[3],
             "hair": json.dumps(list(d.hair)) if d.hair else None} for i, d in enumerate(found)]


def detection(row: dict[str, Any]) -> detect.Detection:
    hair = tuple(json.loads(row["hair"])) if row.get("hair") else None
    return detect.Detection(row["label"], row["score"], (row["x0"], row["y0"], row["x1"], row["y1"]), hair)


def look(run: RunInfo, refs: list[ImageRef], detectors: list[tuple[str, Any]]) -> tuple[dict, dict, int]:
    """Every picture's detections (catalog first, the detectors on the rest) and size; how many were decoded."""
    hashes = sorted({r.hash for r in refs})
    with Catalog.open(run.catalog) as cat:
        known = {key: {h: [detection(r) for r in rows] for h, rows in cat.detections(key, hashes).items()}
                 for key, _ in detectors}
        sizes = {h: (row["width"], row["height"]) for h, row in cat.image_rows(hashes).items()}
    todo = [h for h in hashes if any(h not in known[key] for key, _ in detectors) or not all(sizes.get(h, ()))]

    def prepared(h: str) -> tuple[tuple[int, int], dict[str, Any]]:  # in a thread: decode and resize
        with Image.open(io.BytesIO(run.store.read_bytes(h))) as im:
            im.load()
            return im.size, {key: model.prepare(im) for key, model in detectors if h not in known[key]}

    rows: list[dict[str, Any]] = []
    with StageProgress("crops", len(todo)) as bar:
        for h, (size, inputs) in zip(todo, _ahead(prepared, todo)):
            sizes[h] = size
            for key, model in detectors:
                if key in inputs:
                    known[key][h] = model.infer(inputs[key])
                    rows += detection_rows(key, h, known[key][h])
            bar.advance()
            if len(rows) >= 256:
                _save(run, rows)
                rows = []
    _save(run, rows)
    found = {h: [d for key, _ in detectors for d in known[key].get(h, [])] for h in hashes}
    return found, sizes, len(todo)


def _ahead(fn: Any, items: list[str], depth: int = 4) -> Any:
    """fn over items in order, decoding up to `depth` pictures ahead in a thread while the detector runs."""
    with ThreadPoolExecutor(1) as pool:
        pending = deque(pool.submit(fn, x) for x in items[:depth])
        for x in items[depth:]:
            yield pending.popleft().result()
            pending.append(pool.submit(fn, x))
        while pending:
            yield pending.popleft().result()


def _save(run: RunInfo, rows: list[dict[str, Any]]) -> None:
    if rows:
        with Catalog.open(run.catalog) as cat:
            cat.add_detections(rows)


def cut(run: RunInfo, refs: list[ImageRef], plans: list[craft.CropPlan], stage_params: str
        ) -> dict[str, list[tuple[str, str, craft.CropPlan]]]:
    """Store every planned crop as a `crops` derivation of its parent: parent hash -> [(crop hash, suffix, plan)]."""
    by_name = {r.name: r for r in refs}
    images, derivations, made = [], [], {}
    for plan in plans:
        parent = by_name[plan.parent]
        with Image.open(io.BytesIO(run.store.read_bytes(parent.hash))) as im:
            piece = im.crop(plan.box)
            piece.load()
        digest = run.store.put_bytes(png_bytes(piece, 1))
        images.append({"hash": digest.sha256, "md5": digest.md5, "width": piece.width, "height": piece.height,
                       "mode": piece.mode, "format": "PNG", "bytes": digest.size, "frames": 1,
                       "pixel_hash": pixel_hash(piece)})
        params = json.dumps({"framing": plan.framing, "box": list(plan.box), "face_px": plan.face_px,
                             "stage_params": params_hash(stage_params)}, sort_keys=True)
        suffix = f"_{plan.framing}"
        derivations.append({"input_hash": parent.hash, "output_hash": digest.sha256, "output_suffix": suffix,
                            "stage": "crops", "params": params, "params_hash": params_hash(params),
                            "code_version": caching.code_version(craft)})
        made.setdefault(parent.hash, []).append((digest.sha256, suffix, plan))
    with Catalog.open(run.catalog) as cat:
        cat.add_images(images)
        cat.add_derivations(derivations, run.run_id)
    return made


def frame_pictures(run: RunInfo, inputs: list[ImageRef], cfg: dict) -> tuple[StageResult, list[craft.Balance], list]:
    """The stage's work: detect -> classify -> plan and cut crops; every picture goes on, its crops beside it."""
    params = CropsParams.model_validate(cfg["crops"])
    refs = sorted(inputs)
    detectors = load_detectors(cfg)
    found, sizes, n_looked = look(run, refs, detectors)
    looked = [craft.Looked(r.name, craft.concept_of(r.name, cfg["concepts"]), sizes[r.hash], tuple(found[r.hash]),
                           craft.classify(found[r.hash], sizes[r.hash])) for r in refs]
    b = cfg["buckets"]
    rules = craft.CropRules(params.min_face_px, params.min_crop_side, b["resolution"], b["min_side"], b["max_side"],
                            b["step"], b["no_upscale"])
    plans = craft.plan_crops(looked, rules)
    made = cut(run, refs, plans, json.dumps(cfg, sort_keys=True))
    memo = {r.hash: [(r.hash, "")] + [(h, suffix) for h, suffix, _ in made.get(r.hash, [])] for r in refs}
    images, origins = name_outputs(refs, memo)
    output = _output(looked, made, refs, images, origins, ", ".join(key for key, _ in detectors))
    _record(run, looked, images, origins, output)
    result = StageResult(images=sorted(images), n_in=len(inputs), n_processed=n_looked, origins=origins, payload=output)
    return result, craft.balance(looked, plans), plans


@task(name="crops")
def crops(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    """Framing, face crops and the balance report (reports/framing.md, artifact `framing-balance`)."""
    cfg = json.loads(params_json)
    result, balances, plans = frame_pictures(RunInfo(run_id, workdir, workers), inputs, cfg)
    text = craft.balance_markdown(balances, plans, cfg["crops"]["min_face_px"], result.payload.detector)
    _report(RunInfo(run_id, workdir, workers), text, balances, plans)
    return result


def _output(looked: list[craft.Looked], made: dict, refs: list[ImageRef], images: list[ImageRef],
            origins: dict[str, str], detector: str) -> CropsOutput:
    """Framings and face boxes by output name (a crop's face box moved into the crop)."""
    by_name = {p.name: p for p in looked}
    hash_of = {r.name: r.hash for r in refs}
    framings, boxes = {}, {}
    for ref in images:
        parent = by_name[origins.get(ref.name, ref.name)]
        face = craft.largest(parent.detections, craft.FACE_LABELS)
        plan = next((p for h, _, p in made.get(hash_of[parent.name], []) if h == ref.hash), None)
        if plan is None:
            framings[ref.name] = parent.framing
            if face is not None:
                boxes[ref.name] = craft.fractions(face.box, parent.size)
            continue
        framings[ref.name] = plan.framing
        x0, y0, x1, y1 = plan.box
        fx0, fy0, fx1, fy1 = face.box
        inside = (max(fx0 - x0, 0), max(fy0 - y0, 0), min(fx1, x1) - x0, min(fy1, y1) - y0)
        boxes[ref.name] = craft.fractions(inside, (x1 - x0, y1 - y0))
    return CropsOutput(framings, boxes, detector)


def _record(run: RunInfo, looked: list[craft.Looked], images: list[ImageRef], origins: dict[str, str],
            output: CropsOutput) -> None:
    concept = {p.name: p.concept for p in looked}
    rows = [{"name": r.name, "image_hash": r.hash, "concept": concept[origins.get(r.name, r.name)],
             "framing": output.framings[r.name], "crop_of": origins.get(r.name)} for r in images]
    with Catalog.open(run.catalog) as cat:
        cat.add_framings(run.run_id, rows)


def _report(run: RunInfo, text: str, balances: list[craft.Balance], plans: list[craft.CropPlan]) -> None:
    base = Path(run.workdir)
    (base / REPORT).parent.mkdir(parents=True, exist_ok=True)
    (base / REPORT).write_text(text, encoding="utf-8")
    listing = {"run_id": run.run_id,
               "balance": [{"concept": b.concept, "counts": b.counts, "suggestions": b.suggestions} for b in balances],
               "crops": [{"parent": p.parent, "framing": p.framing, "box": list(p.box)} for p in plans]}
    (base / LISTING).write_text(json.dumps(listing, indent=1), encoding="utf-8")  # the run summary reads it
    for b in balances:
        for s in b.suggestions:
            get_run_logger().info("crops: %s: %s", b.concept, s)
    create_markdown_artifact(text, key="framing-balance", description="Framings per concept and the crops added")


CROPS = Stage("crops", crops, caching.code_version(craft, detect, sys.modules[__name__]))
