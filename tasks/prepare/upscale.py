"""Upscale: images below resolution² pixels are enlarged (Lanczos or a spandrel model), those that would grow
more than `max_factor` per side are skipped unless kept; the report lists both, with the factor per side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import tasks.prepare.workers as prep
from bakery.craft.prepare import upscale as craft
from bakery.craft.prepare.dedupe import matches_keep
from bakery.manifest import ImageRef, Skip, StageResult
from bakery.recipe import UpscaleParams
from bakery.report import UPSCALE_LISTING, UPSCALE_REPORT
from storage import Catalog
from tasks import caching
from tasks.stage import RunInfo, Stage, derive_per_image

# Which pictures are upscaled, not how: left out of the per-image derivations so that keeping one more
# small picture upscales that one and reuses the rest.
SELECTION_KEYS = ("max_factor", "keep_small")


def derivation_params(params_json: str) -> str:
    data = json.loads(params_json)
    for key in SELECTION_KEYS:
        data["upscale"].pop(key, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@task(name="upscale")
def upscale(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    data = json.loads(params_json)
    params = UpscaleParams.model_validate(data["upscale"])
    resolution = int(data["resolution"])
    run = RunInfo(run_id, workdir, workers)
    if not params.enabled:
        _write(run, "# Upscale\n\nOff (`[upscale] enabled = false`): nothing upscaled or skipped.\n", [], [])
        return StageResult(images=sorted(inputs), n_in=len(inputs))
    backend_name = "lanczos"
    if params.backend == "spandrel":
        # Load (and check) the model here, once: a missing or wrong file fails the stage with
        # a clear message. The model then runs in this process (one GPU, no pool).
        key = (str(params.model), params.device, params.tile, params.tile_overlap)
        prep._MODELS[key] = model = craft.load_spandrel(params.model, params.device, params.tile, params.tile_overlap)
        backend_name = f"spandrel {model.name} on {model.device}"
        run = RunInfo(run_id, workdir, 1)
    root = str(run.store.root)
    with Catalog.open(run.catalog) as cat:
        known = cat.pixel_hashes([r.hash for r in inputs])
        before = cat.image_rows([r.hash for r in inputs])
    chosen, skips = _select(inputs, before, run, params, resolution)
    result = derive_per_image(
        "upscale", UPSCALE.code_version, chosen, derivation_params(params_json), run,
        work=prep.upscale_one,
        make_job=lambda ref: prep.UpscaleJob(
            ref, root, known.get(ref.hash), resolution=resolution, backend=params.backend,
            model=str(params.model) if params.model else None, tile=params.tile,
            tile_overlap=params.tile_overlap, device=params.device,
        ),
    )
    result = StageResult(images=result.images, skips=skips + result.skips, n_in=len(inputs),
                         n_processed=result.n_processed)
    _report(inputs, result, before, run, backend_name, params, resolution)
    return result


def _size(ref: ImageRef, rows: dict, run: RunInfo) -> tuple[int, int]:
    """The picture's size from the catalog, else from its file's header."""
    row = rows.get(ref.hash) or {}
    if row.get("width") and row.get("height"):
        return row["width"], row["height"]
    with Image.open(run.store.path(ref.hash)) as im:
        rows[ref.hash] = {**row, "width": im.width, "height": im.height}
        return im.size


def _select(inputs: list[ImageRef], rows: dict, run: RunInfo, params: UpscaleParams, resolution: int
            ) -> tuple[list[ImageRef], list[Skip]]:
    """The pictures to upscale or pass on, and a skip for each one too small (unless `keep_small` names it)."""
    chosen, skips = [], []
    for ref in inputs:
        try:
            reason = craft.too_small(*_size(ref, rows, run), resolution, params.max_factor)
        except OSError:
            reason = None  # unreadable: the worker records why
        if reason and not matches_keep(ref, params.keep_small):
            skips.append(Skip(ref.name, reason))
        else:
            chosen.append(ref)
    return chosen, skips


def _report(inputs: list[ImageRef], result: StageResult, before: dict, run: RunInfo, backend: str,
            params: UpscaleParams, resolution: int) -> None:
    by_name = {r.name: r for r in inputs}
    with Catalog.open(run.catalog) as cat:
        after = cat.image_rows([r.hash for r in result.images])
    upscaled = []
    for out in result.images:
        src = by_name.get(out.name)
        if src is None or src.hash == out.hash:
            continue
        a, b = before.get(src.hash, {}), after.get(out.hash, {})
        size, to = (a.get("width"), a.get("height")), (b.get("width"), b.get("height"))
        factor = round(craft.factor_per_side(*size, to), 2) if all(size + to) else None
        kept = factor is not None and craft.too_small(*size, resolution, params.max_factor) is not None
        upscaled.append({"name": out.name, "from": list(size), "to": list(to), "factor": factor, "kept": kept})
    too_small = [s for s in result.skips if s.reason.startswith("too small")]
    if too_small:
        get_run_logger().warning(
            "upscale: %d picture(s) too small, skipped (%s); keep one with `[upscale] keep_small = [\"name\"]`",
            len(too_small), ", ".join(s.subject for s in too_small[:3]) + (", ..." if len(too_small) > 3 else ""))
    _write(run, _markdown(upscaled, too_small, len(inputs), backend, params, resolution), upscaled, too_small)


def _write(run: RunInfo, text: str, upscaled: list[dict], too_small: list[Skip]) -> None:
    base = Path(run.workdir)
    (base / UPSCALE_REPORT).parent.mkdir(parents=True, exist_ok=True)
    (base / UPSCALE_REPORT).write_text(text, encoding="utf-8")
    listing = {"run_id": run.run_id, "upscaled": upscaled,
               "too_small": [{"name": s.subject, "reason": s.reason} for s in too_small]}
    (base / UPSCALE_LISTING).write_text(json.dumps(listing, indent=1), encoding="utf-8")  # the run summary reads it
    create_markdown_artifact(text, key="upscale-report", description="Which images were upscaled, and how much")


def _markdown(upscaled: list[dict], too_small: list[Skip], n_in: int, backend: str, params: UpscaleParams,
              resolution: int) -> str:
    lines = [f"# Upscale (to >= {resolution}² = {resolution * resolution:,} pixels)", "",
             f"{len(upscaled)} of {n_in} images upscaled; {len(too_small)} too small (skipped).", "",
             "| image | from | to | factor per side | backend |", "|---|---|---|---:|---|"]
    for u in sorted(upscaled, key=lambda u: (-(u["factor"] or 0), u["name"])):
        kept = " (kept: `keep_small`)" if u["kept"] else ""
        factor = f"{u['factor']:.2f}x" if u["factor"] else "?"
        lines.append(f"| {u['name']} | {u['from'][0]}x{u['from'][1]} | {u['to'][0]}x{u['to'][1]} | {factor}{kept} | {backend} |")
    if too_small:
        lines += ["", f"## Too small (more than {params.max_factor:g}x per side): skipped", "",
                  "Keep one anyway: `[upscale] keep_small = [\"name\"]`, or raise `max_factor`.", "",
                  "| image | reason |", "|---|---|"]
        lines += [f"| {s.subject} | {s.reason} |" for s in too_small]
    return "\n".join(lines) + "\n"


UPSCALE = Stage("upscale", upscale, caching.code_version(craft, prep, sys.modules[__name__]))
