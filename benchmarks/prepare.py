#!/usr/bin/env python
"""Benchmark the prepare stages: dedupe (exact + near) -> alpha -> trim -> upscale (lanczos) -> buckets.

    .venv/bin/python benchmarks/prepare.py [--n 1000] [--scaling] [--json out.json] [--strict]

1. Draws N images (seeded; a gradient ground with shapes and grain that fill
   the frame, 512-1,200 px per side): ~60 % opaque PNG/JPEG, ~12 % RGBA with a
   transparent ground, ~10 % padded with a uniform border, ~8 % small (< 512²
   pixels), ~10 % near-duplicates of others (resized to 60-90 % or re-encoded
   as JPEG).
2. Baseline: one process opens and fully decodes every image once.
3. In a fresh process: starts the temporary Prefect server, runs `bake_lora`
   (ingest -> convert -> dedupe -> alpha -> trim -> upscale -> buckets), runs it
   again (every stage must be `cached`), samples the RSS of the flow process and
   its workers (server left out). The prepare time is the sum of the dedupe,
   alpha, trim, upscale and buckets stage durations from the catalog.
4. Near-duplicate search alone: 100,000 random 64-bit pHash/dHash pairs (1,000
   planted near pairs) through `near_duplicates`.

Targets: prepare time <= 3x the decode-only loop; peak RSS <= 1.5 GB and flat in
N (--scaling runs N and 2N); 100k-hash search <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from ingest import TreeSampler, _maxrss_mb, _private_prefect_env  # noqa: E402  (stdlib-only module)

PREPARE_STAGES = ("dedupe", "alpha", "trim", "upscale", "buckets")


def _scene(w: int, h: int, seed: int):
    """A picture that fills its frame, as most training images do: a two-colour gradient ground, shapes
    (some running off the edges) and a little grain. Only the `padded` and `rgba` kinds have a border
    for trim to cut."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 6.283)
    ramp = x * np.cos(angle) + y * np.sin(angle)
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    c0, c1 = (np.array([rng.randrange(256) for _ in range(3)], np.float32) for _ in range(2))
    im = Image.fromarray((c0 + ramp[..., None] * (c1 - c0)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(14):
        x0, y0 = rng.randrange(-w // 8, w), rng.randrange(-h // 8, h)
        x1, y1 = x0 + rng.randrange(w // 8, w // 2), y0 + rng.randrange(h // 8, h // 2)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            [x0, y0, x1, y1], fill=tuple(rng.randrange(256) for _ in range(3)))
    grain = np.random.default_rng(seed).normal(0, 2, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(im, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def plan(n: int, seed: int) -> list[tuple[int, str, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.random()
        kind = ("near" if i > 10 and r < 0.10 else "small" if r < 0.18 else "rgba" if r < 0.30
                else "padded" if r < 0.40 else "jpeg" if r < 0.70 else "png")
        out.append((i, kind, rng.randrange(max(i, 1)) if kind == "near" else i))
    return out


def draw(args: tuple[int, str, int, int, str]) -> None:
    from PIL import Image

    index, kind, source, seed, folder = args
    rng = random.Random(seed * 1_000_003 + (source if kind == "near" else index))
    w, h = rng.randrange(512, 1200), rng.randrange(512, 1200)  # >= 512² pixels: only `small` needs upscaling
    if kind == "small":
        w, h = rng.randrange(120, 400), rng.randrange(120, 400)
    im = _scene(w, h, seed * 7919 + (source if kind == "near" else index))
    path = Path(folder) / f"img{index:06d}"
    if kind == "near":
        f = rng.uniform(0.6, 0.9)
        im = im.resize((int(w * f), int(h * f)), Image.Resampling.LANCZOS)
        im.save(path.with_suffix(".jpg"), quality=80)
    elif kind == "rgba":
        alpha = Image.new("L", im.size, 0)
        alpha.paste(255, (w // 6, h // 6, w - w // 6, h - h // 6))
        im.putalpha(alpha)
        im.save(path.with_suffix(".png"), compress_level=1)
    elif kind == "padded":
        canvas = Image.new("RGB", (w + 80, h + 60), (255, 255, 255))
        canvas.paste(im, (40, 30))
        canvas.save(path.with_suffix(".png"), compress_level=1)
    elif kind == "jpeg":
        im.save(path.with_suffix(".jpg"), quality=90)
    else:
        im.save(path.with_suffix(".png"), compress_level=1)


def build(bench: Path, n: int, seed: int, workers: int) -> Path:
    images = bench / "images"
    images.mkdir(parents=True, exist_ok=True)
    jobs = [(i, k, s, seed, str(images)) for i, k, s in plan(n, seed)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(draw, jobs, chunksize=8))
    recipe = bench / "recipe.toml"
    recipe.write_text(
        f'[project]\nname = "bench"\nworkdir = "work"\n\n[[sources]]\nkind = "folder"\npath = "images"\n\n'
        f"[runtime]\nworkers = {workers}\n", encoding="utf-8")
    return recipe


def baseline_decode(folder: Path) -> float:
    from PIL import Image

    started = time.perf_counter()
    for path in sorted(folder.iterdir()):
        with Image.open(path) as im:
            im.load()
    return time.perf_counter() - started


def near_search(n: int = 100_000, seed: int = 0) -> dict:
    import numpy as np

    from bakery.craft.prepare.dedupe import Candidate, near_duplicates, near_pairs
    from bakery.manifest import ImageRef

    rng = np.random.default_rng(seed)
    ph = rng.integers(0, 2**64, n, dtype=np.uint64)
    dh = rng.integers(0, 2**64, n, dtype=np.uint64)
    pairs = min(1000, n // 2)  # planted near-duplicate pairs
    idx = rng.choice(n, 2 * pairs, replace=False)
    for a, b in zip(idx[:pairs], idx[pairs:]):
        for arr, k in ((ph, 8), (dh, 12)):
            v = int(arr[a])
            for bit in rng.choice(64, int(rng.integers(0, k + 1)), replace=False):
                v ^= 1 << int(bit)
            arr[b] = v
    started = time.perf_counter()
    i, _, _ = near_pairs(ph, 8)
    pairs_s = time.perf_counter() - started
    cands = [Candidate(ImageRef(f"i{k}", f"{k:064x}"), 512, 512, int(p), int(d))
             for k, (p, d) in enumerate(zip(ph.tolist(), dh.tolist()))]
    started = time.perf_counter()
    groups = near_duplicates(cands, 8, 12)
    full_s = time.perf_counter() - started
    return {"hashes": n, "pairs_found": int(len(i)), "groups": len(groups),
            "near_pairs_s": pairs_s, "near_duplicates_s": full_s}


def measure(recipe_path: Path, out_path: Path) -> int:
    _private_prefect_env()
    from bakery.recipe import load_recipe
    from flows.bake import bake_lora
    from flows.runtime import prefect_api
    from storage import Catalog

    recipe = load_recipe(recipe_path)
    result: dict = {}
    sampler = TreeSampler(os.getpid())
    with prefect_api(recipe.workdir / "logs"):
        sampler.exclude = sampler.children(os.getpid()) - {os.getpid()}
        sampler.start()
        started = time.perf_counter()
        first = bake_lora(str(recipe_path))
        result["first_s"] = time.perf_counter() - started
        started = time.perf_counter()
        again = bake_lora(str(recipe_path))
        result["rerun_s"] = time.perf_counter() - started
        sampler.stop()
        result["rss_self_mb"] = _maxrss_mb(resource.RUSAGE_SELF)
        result["rss_children_mb"] = _maxrss_mb(resource.RUSAGE_CHILDREN)
    result["rss_tree_mb"] = sampler.peak_bytes / 2**20 if sampler.available else None
    with Catalog.open(recipe.workdir, read_only=True) as cat:
        cols = "stage, status, n_in, n_out, n_processed, n_skipped, duration_s"
        result["stages"] = cat.rows(f"SELECT {cols} FROM stage_runs WHERE run_id = ? ORDER BY started_at", [first])
        rerun = {s["stage"]: s["status"] for s in cat.rows("SELECT stage, status FROM stage_runs WHERE run_id = ?", [again])}
        result["near_dropped"] = cat.rows("SELECT count(*) AS n FROM duplicates WHERE method <> 'exact'")[0]["n"]
    ran_first = {s["stage"] for s in result["stages"]}  # the optional stages (scrape, captions, bake) do not run here
    result["rerun_all_cached"] = set(rerun) == ran_first and set(rerun.values()) == {"cached"}
    out_path.write_text(json.dumps(result, indent=2, default=str))
    return 0


def run_one(n: int, seed: int, workers: int, keep: bool) -> dict:
    bench = Path(tempfile.mkdtemp(prefix=f"bakery-bench-prepare-{n}-"))
    started = time.perf_counter()
    recipe = build(bench, n, seed, workers)
    draw_s = time.perf_counter() - started
    decode_s = baseline_decode(bench / "images")
    out = bench / "measure.json"
    log = bench / "measure.log"
    with open(log, "wb") as fh:
        proc = subprocess.run([sys.executable, __file__, "--measure-child", str(recipe), "--child-out", str(out)],
                              stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "BAKERY_BENCH_PREFECT_HOME": str(bench / "prefect")})  # gone with bench
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"measurement failed (exit {proc.returncode}); see {log}")
    r = json.loads(out.read_text())
    prep = sum(s["duration_s"] for s in r["stages"] if s["stage"] in PREPARE_STAGES)
    r.update(n=n, bench=str(bench), draw_s=draw_s, decode_s=decode_s, prepare_s=prep,
             images_per_s=n / prep, ratio_to_decode=prep / decode_s)
    if not keep:
        import shutil

        shutil.rmtree(bench, ignore_errors=True)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--scaling", action="store_true", help="also run 2N: is peak memory flat?")
    ap.add_argument("--search-n", type=int, default=100_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--keep", action="store_true", help="keep the generated images")
    ap.add_argument("--measure-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure_child:
        return measure(args.measure_child, args.child_out)

    search = near_search(args.search_n)
    print(f"near-dup search, {search['hashes']:,} hashes: near_pairs {search['near_pairs_s']:.2f} s, "
          f"full grouping {search['near_duplicates_s']:.2f} s ({search['groups']} groups)")
    runs = [run_one(n, args.seed, args.workers, args.keep) for n in ([args.n, 2 * args.n] if args.scaling else [args.n])]
    for r in runs:
        print(f"\nN = {r['n']} images ({args.workers} workers)")
        for s in r["stages"]:
            print(f"  {s['stage']:<8} {s['status']:<6} in {s['n_in']:>5} out {s['n_out']:>5} "
                  f"processed {s['n_processed']:>5} {s['duration_s']:7.2f} s")
        print(f"  decode-only loop      {r['decode_s']:.2f} s")
        print(f"  prepare stages        {r['prepare_s']:.2f} s = {r['images_per_s']:.1f} images/s, "
              f"{r['ratio_to_decode']:.2f}x the decode loop")
        print(f"  near-duplicates dropped {r['near_dropped']}; re-run all cached: {r['rerun_all_cached']}")
        print(f"  peak RSS: tree {r['rss_tree_mb']:.0f} MB, flow {r['rss_self_mb']:.0f} MB, "
              f"largest worker {r['rss_children_mb']:.0f} MB")
    ok = (search["near_duplicates_s"] <= 10 and all(r["ratio_to_decode"] <= 3 and (r["rss_tree_mb"] or 0) <= 1536
                                                    and r["rerun_all_cached"] for r in runs))
    print("\ntargets met" if ok else "\nsome target missed")
    if args.json:
        args.json.write_text(json.dumps({"search": search, "runs": runs}, indent=2, default=str))
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
