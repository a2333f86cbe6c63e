"""Buckets: kohya's bucket per image, the per-bucket report and merge plan; `snap` applies the plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

import tasks.prepare.workers as prep
from bakery.craft import edits as edits_craft
from bakery.craft.prepare import bucket_report as craft
from bakery.craft.prepare import buckets as kohya
from bakery.manifest import ImageRef, Skip, StageResult
from bakery.recipe import BucketParams, stage_params_json
from bakery.report import name_list
from storage import Catalog
from tasks import caching
from tasks.stage import RunInfo, Stage, derive_per_image

REPORT = "reports/buckets.md"
ASSIGNMENT = "reports/buckets.json"


@task(name="buckets")
def buckets(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    data = json.loads(params_json)
    boxes = data.pop("keep_boxes", {})  # detected faces and crop edits: what each picture's bucket crop must keep
    params = BucketParams.model_validate(data)
    run = RunInfo(run_id, workdir, workers)
    refs = sorted(inputs)
    keep_boxes = edits_craft.resolve_boxes(boxes, {r.name: r.hash for r in refs})  # edits may name a file or hash
    with Catalog.open(run.catalog) as cat:
        rows = cat.image_rows([r.hash for r in refs])
        known = cat.pixel_hashes([r.hash for r in refs])
    skips, sizes, by_name = [], {}, {}
    for ref in refs:
        row = rows.get(ref.hash)
        if not row or not row.get("width") or not row.get("height"):
            skips.append(Skip(ref.name, "image size unknown to the catalog"))
            continue
        sizes[ref.name], by_name[ref.name] = (row["width"], row["height"]), ref
    try:
        rep = craft.bucket_report(
            sizes, params.resolution, params.min_side, params.max_side, params.step, params.max_buckets,
            params.no_upscale, params.tiny_bucket,
        )
    except ValueError as exc:  # e.g. an image smaller than one step in no_upscale mode
        raise ValueError(f"buckets: {exc}") from None
    # Pictures written at their bucket: all with `snap`, else those whose kept box kohya's centre crop would cut.
    cut = {}
    for p in rep.placed:
        choice = p.final if params.snap else p.choice
        box = kohya.keep_crop_box(choice, keep_boxes[p.name]) if p.name in keep_boxes else choice.crop_box
        if params.snap or box != choice.crop_box:
            cut[p.name] = (choice, box)
    kept = [by_name[n] for n in sizes if n not in cut]
    made, n_cut, cut_skips = _cut_to_buckets(run, [by_name[n] for n in cut], cut, known, data)
    _write_report(run, rep, params, keep_boxes, {n for n in cut if cut[n][1] != cut[n][0].crop_box})
    return StageResult(images=sorted(kept + made), skips=skips + cut_skips, n_in=len(inputs),
                       n_processed=len(kept) + n_cut, warnings=aspect_warnings(rep))


def aspect_warnings(rep: craft.BucketReport) -> list[str]:
    """Pictures whose aspect ratio no bucket holds: kohya's centre crop cuts them (rules.md §7)."""
    if not rep.out_of_range:
        return []
    worst = rep.out_of_range[0]
    return [f"{len(rep.out_of_range)} picture(s) with an aspect ratio outside the buckets' range "
            f"({name_list([p.name for p in rep.out_of_range])}); kohya's centre crop throws away up to "
            f"{100 * craft.crop_share(worst.choice):.0f}% ({worst.name}): see {REPORT}"]


def _cut_to_buckets(run: RunInfo, refs: list[ImageRef], cut: dict, known: dict, params: dict
                    ) -> tuple[list[ImageRef], int, list[Skip]]:
    """Each picture (and its mask) resized and cropped to its bucket at its box, one derivation per bucket and box."""
    root = str(run.store.root)
    groups: dict[tuple, list[ImageRef]] = {}
    for ref in refs:
        choice, box = cut[ref.name]
        groups.setdefault((choice.bucket, choice.resized, box), []).append(ref)
    images, skips, n_processed = [], [], 0
    for (bucket, resized, box), members in sorted(groups.items()):
        group_params = stage_params_json({"buckets": params, "bucket": list(bucket),
                                          "resized": list(resized), "box": list(box)})
        done = {}
        for mode, picked in (("RGB", members), ("L", [ImageRef(r.name, r.mask) for r in members if r.mask])):
            result = derive_per_image(
                "buckets", BUCKETS.code_version, picked, group_params, run, work=prep.snap_one,
                make_job=lambda ref, mode=mode: prep.SnapJob(ref, root, known.get(ref.hash), bucket=bucket,
                                                             resized=resized, box=box, mode=mode))
            done[mode] = {r.name: r.hash for r in result.images}
            skips += result.skips
            n_processed += result.n_processed if mode == "RGB" else 0
        images += [ImageRef(n, h, done["L"].get(n, "")) for n, h in done["RGB"].items()]
    return images, n_processed, skips


def _write_report(run: RunInfo, rep: craft.BucketReport, params: BucketParams, keep_boxes: dict[str, list[float]],
                  shifted: set[str]) -> None:
    text = craft.report_markdown(rep, params.max_downscale, params.snap)
    base = Path(run.workdir)
    (base / REPORT).parent.mkdir(parents=True, exist_ok=True)
    (base / REPORT).write_text(text, encoding="utf-8")
    flagged = {p.name for p in rep.out_of_range}
    assignment = {
        p.name: {"size": list(p.size), "kohya_bucket": list(p.choice.bucket), "bucket": list(p.final.bucket),
                 "downscale": round(p.downscale, 4), "kohya_resized": list(p.choice.resized),
                 "kohya_crop_share": round(craft.crop_share(p.choice), 4), "aspect_out_of_range": p.name in flagged,
                 "crop_shifted_to_keep": p.name in shifted,
                 **({"keep_box": keep_boxes[p.name]} if p.name in keep_boxes else {})}
        for p in rep.placed
    }
    (base / ASSIGNMENT).write_text(json.dumps(assignment, indent=1, sort_keys=True), encoding="utf-8")
    create_markdown_artifact(text, key="buckets-report", description="Images per bucket, detail lost, merge plan")


BUCKETS = Stage("buckets", buckets, caching.code_version(craft, kohya, prep, sys.modules[__name__]))
