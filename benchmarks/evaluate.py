#!/usr/bin/env python
"""Benchmark the evaluate stage on the tiny model: time per grid cell and the share spent swapping LoRA weights.

    .venv/bin/python benchmarks/evaluate.py [--epochs 4] [--steps 20] [--size 64] [--json out.json] [--strict]

1. Builds the tiny SD1.5-shaped model and one kohya-format LoRA file per epoch
   (random, non-zero; what the bake stage writes) in a temporary folder.
2. Loads the base pipeline once (timed apart), then renders the recipe's default
   grid: epochs x weights (0, .25, .5, .75, 1) x 2 prompts x 2 seeds, each epoch's
   file loaded with `load_lora_weights`, its weight changed in place with
   `set_adapters`, and deleted before the next epoch.
3. Runs the whole stage (`evaluate_bake`: grid + metrics + grids + report +
   catalog) without Prefect, for the end-to-end time.

With `--judges` the stage runs first with the tag judges (the tiny WD14 tagger: every
render tagged, one flexibility prompt over epochs x weights at the first seed; the seed
spread needs no render with two seeds), then without: `judges_over_stage` is the ratio.

With `--character` as well, the stage runs with the tag judges (today's) and with every judge on (the tag judges
plus [judges]' CCIP identity and corruption on the tiny deepghs-format models, bakery/testmodels/tiny_deepghs.py)
over the same four training pictures, interleaved `--repeat` times with the CCIP cache emptied each run;
`all_judges_over_tag_judges` is the ratio of the minima.

Target: reload share (LoRA loading + weight setting + deleting, over that plus
rendering) < 10 %. Exit code 0 whatever the numbers unless --strict.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RELOAD_SHARE = 0.10


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (the recipe's default: 20)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--judges", action="store_true", help="with the tiny WD14 tagger: identity, bleed, flexibility")
    ap.add_argument("--character", action="store_true",
                    help="with --judges: also every judge on (CCIP identity and corruption, tiny deepghs models)")
    ap.add_argument("--repeat", type=int, default=3, help="with --character: interleaved runs, the minimum counts")
    ap.add_argument("--strict", action="store_true", help="exit 1 if the reload share misses the target")
    return ap.parse_args()


def _measure(args: argparse.Namespace, root: Path) -> dict:
    """The grid alone (base load, render, LoRA swaps), then the whole stage, on the tiny model."""
    from bakery.craft.taste import xyz
    from bakery.manifest import BakeOutput
    from bakery.recipe import EvaluateParams
    from bakery.testmodels.tiny_sd15 import build_tiny_sd15
    from tasks.stage import RunInfo
    from tasks.taste.evaluate import EVALUATE, evaluate_bake
    from tests.lora_files import write_kohya_lora

    trigger = "bakery_girl"
    model = build_tiny_sd15(root / "tiny", words=[f"{trigger}, red_dress, smile, solo, blue_eyes"])
    files = {e: str(write_kohya_lora(model, root / f"b-{e:06d}.safetensors", seed=e, strength=0.4, epoch=e))
             for e in range(1, args.epochs + 1)}
    params = EvaluateParams(steps=args.steps, width=args.size, height=args.size, device=args.device)
    prompts = [trigger, f"{trigger}, solo, red_dress, smile"]
    t = time.perf_counter()
    taster = xyz.Taster(str(model), "sd15", 2, params.sampler, params.device)
    base_load_s = time.perf_counter() - t
    t = time.perf_counter()
    run = xyz.render_grid(taster, files, params.weights, prompts, params.seeds, params.negative_prompt,
                          params.steps, params.cfg_scale, params.width, params.height)
    grid_s, tm = time.perf_counter() - t, run.timings
    bake = BakeOutput("b", str(model), "sd15", files, "bench", [trigger], 2)
    judged = {}
    if args.judges:  # twice: the first pays one-off costs (onnxruntime's import, the first session)
        from bakery.craft.taste.judges.panel import TaggerSpec
        from bakery.testmodels.tiny_wd14 import write_tiny_wd14

        tagger = TaggerSpec(str(write_tiny_wd14(root / "wd14")))
        for label in ("stage_judges_cold_s", "stage_judges_s"):
            t = time.perf_counter()
            res = evaluate_bake(bake, params, RunInfo("bench", str(root / "work")), EVALUATE.code_version,
                                tagger=tagger)
            judged[label] = round(time.perf_counter() - t, 3)
        judged["stage_judges_cells"] = res.timings.cells
        if args.character:
            judged.update(_all_judges(bake, params, root, tagger, args.repeat))
    t = time.perf_counter()
    res = evaluate_bake(bake, params, RunInfo("bench", str(root / "work")), EVALUATE.code_version)
    stage_s = time.perf_counter() - t
    return {
        "device": taster.device,
        "epochs": args.epochs, "weights": len(params.weights), "prompts": len(prompts), "seeds": len(params.seeds),
        "steps": args.steps, "size": args.size,
        "cells": tm.cells,
        "base_load_s": round(base_load_s, 3),
        "grid_s": round(grid_s, 3),
        "per_cell_s": round(grid_s / tm.cells, 4),
        "render_s": round(tm.render_s, 3),
        "lora_swap_s": round(tm.load_s, 3),
        "lora_swap_per_epoch_s": round(tm.load_s / args.epochs, 4),
        "reload_share": round(tm.reload_share, 4),
        "stage_s": round(stage_s, 3),
        "stage_cells": res.timings.cells,
        **judged,
        **({"judges_over_stage": round(judged["stage_judges_s"] / stage_s, 3)} if judged else {}),
    }


def _all_judges(bake, params, root: Path, tagger, repeat: int) -> dict:  # noqa: ANN001
    """The stage with the tag judges (today's) and with every judge (tag + CCIP identity + corruption) on the same
    training set, interleaved `repeat` times after one cold run each; the CCIP feature cache is emptied before
    each run (a new bake's renders are new pictures). The minimum of each is the figure: robust to load spikes."""
    import shutil

    import numpy as np
    from PIL import Image

    from bakery.craft.taste.judges.character import CharacterSpec
    from bakery.manifest import TrainImage, TrainSet
    from bakery.testmodels.tiny_deepghs import write_all
    from storage import ContentStore
    from tasks.stage import RunInfo
    from tasks.taste.evaluate import EVALUATE, evaluate_bake

    models, work = write_all(root / "deepghs"), root / "work-all"
    store, cache = ContentStore(work / "store"), work / "cache" / "ccip-features"

    def png(rgb) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), rgb, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    train = TrainSet([TrainImage("c", f"p{i}", store.put_bytes(png((200, 40 + 10 * i, 40))).sha256,
                                 f"{bake.triggers[0]}, red_dress", 1) for i in range(4)], list(bake.triggers))
    spec = CharacterSpec(str(models["ccip"]), str(models["corrupt"]), cache=str(cache))

    def stage(character) -> float:  # noqa: ANN001
        shutil.rmtree(cache, ignore_errors=True)
        t = time.perf_counter()
        evaluate_bake(bake, params, RunInfo("bench", str(work)), EVALUATE.code_version, train, tagger, None, character)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {"tag": [], "all": []}
    stage(None), stage(spec)  # cold: onnxruntime sessions, imports
    for _ in range(repeat):
        times["tag"].append(stage(None))
        times["all"].append(stage(spec))
    tag, every = min(times["tag"]), min(times["all"])
    return {"repeat": repeat, "stage_tag_judges_min_s": round(tag, 3), "stage_all_judges_min_s": round(every, 3),
            "all_judges_over_tag_judges": round(every / tag, 3)}


def main() -> int:
    args = _args()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        figures = _measure(args, Path(tmp))
    out = {"device": figures.pop("device"), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
           **figures, "target_reload_share": TARGET_RELOAD_SHARE, "ok": figures["reload_share"] < TARGET_RELOAD_SHARE}
    width = max(map(len, out))
    for k, v in out.items():
        print(f"{k.ljust(width)}  {v}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if args.strict and not out["ok"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
