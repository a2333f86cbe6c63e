#!/usr/bin/env python
"""Benchmark the masks stage's model and QA (no Prefect): seconds per image, memory, QA rate.

    .venv/bin/python benchmarks/masks.py [--ckpt FILE] [--mode fast] [--size 384] [--n 4]
                                         [--device auto] [--json out.json]

1. The checkpoint: --ckpt, else a random-weight InSPyReNet_SwinB (the real
   architecture; its masks mean nothing, its cost is the real one) built once in
   ~/.cache/bakery-test.
2. Loads transparent-background's Remover on it (timed), then predicts N
   generated 768x512 images (the first, which includes one-off warm-up, is
   reported apart from the steady-state mean).
3. Mask QA: histograms + verdicts for 10,000 synthetic 512x512 masks' histograms
   (what a re-check with new thresholds costs: no decode, no model).
4. Peak RSS of this process (getrusage).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--mode", default="fast", choices=["base", "fast", "base-nightly"])
    ap.add_argument("--size", type=int, default=None, help="network input side (default: the mode's own)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def _checkpoint(given: Path | None) -> Path:
    """The given checkpoint, else the tests' random one, else a random one built now."""
    from bakery.testmodels.inspyrenet import build_random_inspyrenet_ckpt

    if given is not None:
        return given
    cache = Path.home() / ".cache" / "bakery-test"
    found = sorted(cache.glob("inspyrenet-swinb-random-*.pth"))  # the tests' one, if there
    ckpt = found[0] if found else cache / "inspyrenet-swinb-random-bench.pth"
    if not ckpt.is_file():
        t = time.perf_counter()
        build_random_inspyrenet_ckpt(ckpt)
        print(f"built random checkpoint in {time.perf_counter() - t:.1f} s: {ckpt}")
    return ckpt


def _model_times(args: argparse.Namespace, ckpt: Path) -> tuple[str, float, list[float]]:
    """(device, load seconds, seconds per image) of the mask model on generated pictures."""
    import torch

    from bakery.craft.prepare.masks import MaskModel
    from tests.images import gradient

    cfg = Path.home() / ".cache" / "bakery-test" / "tb-home"
    t = time.perf_counter()
    model = MaskModel(ckpt, cfg, mode=args.mode, size=args.size, device=args.device)
    load_s = time.perf_counter() - t
    times = []
    for i in range(args.n):
        img = gradient(768, 512, seed=i)
        t = time.perf_counter()
        mask = model.predict(img)
        if model.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        assert mask.size == img.size and mask.mode == "L"
    model.close()
    return model.device, load_s, times


def _qa_rates() -> tuple[float, float]:
    """Histograms of 512 px masks per second, QA verdicts per second."""
    import numpy as np

    from bakery.craft.prepare.masks import MaskQA, histogram, qa_reason

    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 256, (512, 512), dtype=np.uint8) for _ in range(8)]
    t = time.perf_counter()
    hists = [histogram(masks[i % 8]) for i in range(2000)]
    hist_rate = 2000 / (time.perf_counter() - t)
    qa = MaskQA()
    t = time.perf_counter()
    for i in range(10_000):
        qa_reason(hists[i % len(hists)], qa)
    return hist_rate, 10_000 / (time.perf_counter() - t)


def main() -> int:
    args = _args()
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    import torch

    device, load_s, times = _model_times(args, _checkpoint(args.ckpt))
    hist_rate, qa_rate = _qa_rates()
    steady = times[1:] or times
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}",
        "device": device,
        "mode": args.mode,
        "size": args.size or "mode default",
        "load_s": round(load_s, 2),
        "first_image_s": round(times[0], 2),
        "steady_s_per_image": round(sum(steady) / len(steady), 2),
        "histograms_per_s_512px": round(hist_rate),
        "qa_verdicts_per_s": round(qa_rate),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
