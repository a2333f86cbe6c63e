"""Buckets: kohya's bucket per image, the per-bucket report and merge plan; `snap` applies the plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import tasks.prepare_workers as prep
from bakery.craft import bucket_report as craft
from bakery.craft import edits as edits_craft
from bakery.craft import buckets as kohya
from bakery.manifest import ImageRef, Skip, StageResult
from bakery.recipe import BucketParams, stage_params_json
from storage import Catalog
from tasks import caching
from tasks.stage import RunInfo, Stage, derive_per_image

REPORT = "reports/buckets.md"
ASSIGNMENT = "reports/buckets.json"


def buckets_params_json(params: BucketParams, keep_boxes: dict[str, list[float]] | None = None) -> str:
    """The stage's parameters; with the crop edits' keep boxes (picture -> [x0, y0, x1, y1]) when there are some."""
    data = params.model_dump(mode="json")
    return stage_params_json({**data, "keep_boxes": keep_boxes} if keep_boxes else data)


@task(name="buckets")
def buckets(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    cfg = json.loads(params_json)
    keep_boxes = cfg.pop("keep_boxes", {})  # the crop edits: what each picture's bucket crop must keep
    # TODO(merge with issue 16, framing): hand keep_boxes to the bucket crop that keeps a box.
    params = BucketParams.model_validate(cfg)
    params_json = stage_params_json(cfg)  # snap's derivations: the same with or without crop edits
    run = RunInfo(run_id, workdir, workers)
    refs = sorted(inputs)
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

    images, n_processed = [by_name[n] for n in sizes], len(sizes)
    if params.snap:
        root = str(run.store.root)
        groups: dict[tuple[int, int], list[craft.Placed]] = {}
        for p in rep.placed:
            groups.setdefault(p.final.bucket, []).append(p)
        images, n_processed = [], 0
        for bucket, placed in sorted(groups.items()):
            finals = {by_name[p.name].hash: p.final for p in placed}
            group_params = stage_params_json({"buckets": json.loads(params_json), "bucket": list(bucket)})
            result = derive_per_image(
                "buckets", BUCKETS.code_version, [by_name[p.name] for p in placed], group_params, run,
                work=prep.snap_one,
                make_job=lambda ref: prep.SnapJob(
                    ref, root, known.get(ref.hash), bucket=finals[ref.hash].bucket, resized=finals[ref.hash].resized
                ),
            )
            images += result.images
            skips += result.skips
            n_processed += result.n_processed
    _write_report(run, rep, params, edits_craft.resolve_boxes(keep_boxes, {r.name: r.hash for r in refs}))
    return StageResult(images=sorted(images), skips=skips, n_in=len(inputs), n_processed=n_processed)


def _write_report(run: RunInfo, rep: craft.BucketReport, params: BucketParams,
                  keep_boxes: dict[str, list[float]]) -> None:
    text = craft.report_markdown(rep, params.max_downscale, params.snap)
    base = Path(run.workdir)
    (base / REPORT).parent.mkdir(parents=True, exist_ok=True)
    (base / REPORT).write_text(text, encoding="utf-8")
    flagged = {p.name for p in rep.out_of_range}
    assignment = {
        p.name: {"size": list(p.size), "kohya_bucket": list(p.choice.bucket), "bucket": list(p.final.bucket),
                 "downscale": round(p.downscale, 4), "kohya_resized": list(p.choice.resized),
                 "kohya_crop_share": round(craft.crop_share(p.choice), 4), "aspect_out_of_range": p.name in flagged,
                 **({"keep_box": keep_boxes[p.name]} if p.name in keep_boxes else {})}
        for p in rep.placed
    }
    if flagged:
        worst = rep.out_of_range[0]
        get_run_logger().warning(
            "buckets: %d picture(s) with an aspect ratio outside the buckets' range; kohya's centre crop throws "
            "away up to %.0f%% (%s): see %s", len(flagged), 100 * craft.crop_share(worst.choice), worst.name, REPORT)
    (base / ASSIGNMENT).write_text(json.dumps(assignment, indent=1, sort_keys=True), encoding="utf-8")
    create_markdown_artifact(text, key="buckets-report", description="Images per bucket, detail lost, merge plan")


BUCKETS = Stage("buckets", buckets, caching.code_version(craft, kohya, prep, sys.modules[__name__]))
