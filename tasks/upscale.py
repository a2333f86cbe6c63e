"""Upscale: images below resolution² pixels are enlarged (Lanczos or a spandrel model); the report says which."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

import tasks.prepare_workers as prep
from bakery.craft import upscale as craft
from bakery.manifest import ImageRef, StageResult
from bakery.recipe import UpscaleParams
from storage import Catalog, digest_file
from tasks import caching
from tasks.stage import RunInfo, Stage, derive_per_image

REPORT = "reports/upscale.md"


def upscale_params_json(params: UpscaleParams, resolution: int, model_path: Path | None) -> str:
    """The stage's parameters: its section, the training resolution and the model file's content hash."""
    data: dict[str, Any] = {"upscale": params.model_dump(mode="json"), "resolution": resolution}
    if params.backend == "spandrel" and model_path is not None:
        data["upscale"]["model"] = str(model_path)
        data["model_sha256"] = digest_file(model_path).sha256 if model_path.is_file() else None
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@task(name="upscale")
def upscale(inputs: list[ImageRef], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    data = json.loads(params_json)
    params = UpscaleParams.model_validate(data["upscale"])
    resolution = int(data["resolution"])
    if not params.enabled:
        return StageResult(images=sorted(inputs), n_in=len(inputs))
    run = RunInfo(run_id, workdir, workers)
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
    result = derive_per_image(
        "upscale", UPSCALE.code_version, inputs, params_json, run,
        work=prep.upscale_one,
        make_job=lambda ref: prep.UpscaleJob(
            ref, root, known.get(ref.hash), resolution=resolution, backend=params.backend,
            model=str(params.model) if params.model else None, tile=params.tile,
            tile_overlap=params.tile_overlap, device=params.device,
        ),
    )
    _report(inputs, result, before, run, backend_name, resolution)
    return result


def _report(inputs: list[ImageRef], result: StageResult, before: dict, run: RunInfo, backend: str, resolution: int) -> None:
    by_name = {r.name: r for r in inputs}
    with Catalog.open(run.catalog) as cat:
        after = cat.image_rows([r.hash for r in result.images])
    lines = [f"# Upscale (to >= {resolution}² = {resolution * resolution:,} pixels)", "",
             "| image | from | to | backend |", "|---|---|---|---|"]
    n = 0
    for out in result.images:
        src = by_name.get(out.name)
        if src is None or src.hash == out.hash:
            continue
        a, b = before.get(src.hash, {}), after.get(out.hash, {})
        lines.append(f"| {out.name} | {a.get('width')}x{a.get('height')} | {b.get('width')}x{b.get('height')} | {backend} |")
        n += 1
    lines.insert(2, f"{n} of {len(inputs)} images upscaled.\n")
    text = "\n".join(lines) + "\n"
    path = Path(run.workdir) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    create_markdown_artifact(text, key="upscale-report", description="Which images were upscaled, and how")


UPSCALE = Stage("upscale", upscale, caching.code_version(craft, prep, sys.modules[__name__]))
