#!/usr/bin/env python
"""Benchmark the review studio: the first dataset page of a large work dir, thumbnails made.

    .venv/bin/python benchmarks/review.py [--n 2000] [--size 384] [--keep DIR]

1. A synthetic work dir through the real tables (no flow run, so it is fast): N
   drawn pictures put in the content store, each with an image row, a folder
   source with a caption sidecar, a convert derivation, a mask with its QA
   verdict, tagger tags, a `train_captions` row (trigger first) in one of three
   folders, tag statistics, and the buckets report made by the real bucketing code.
2. Makes every picture's and mask's grid thumbnail (timed; they are kept).
3. Serves the app with uvicorn on 127.0.0.1 and times GET /dataset (the first
   page, cold: the first request of the process) and then warm, page 20 and a tag
   filter. Goal: the first page under 1 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FOLDERS = {"chara": "chara", "red_dress": "chara_red_dress", "blue_uniform": "chara_blue_uniform"}
TAGS = ["smile", "solo", "simple_background", "white_background", "looking_at_viewer", "open_mouth", "hat",
        "sitting", "standing", "outdoors", "indoors", "holding", "flower", "bow", "ribbon", "jewelry"]
RECIPE = """[project]
name = "bench"
workdir = "work"

[[sources]]
kind = "folder"
path = "images"

[[concepts]]
name = "chara"
trigger = "chara"

  [[concepts.outfits]]
  name = "red_dress"
  trigger = "chara_red_dress"
  paths = ["red_dress/**"]

  [[concepts.outfits]]
  name = "blue_uniform"
  trigger = "chara_blue_uniform"
  paths = ["blue_uniform/**"]
"""


def _png(rng: random.Random, size: tuple[int, int], grey: bool = False) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("L" if grey else "RGB", size, 0 if grey else tuple(rng.randint(120, 255) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randint(10, size[0] // 3)
        d.ellipse([x - r, y - r, x + r, y + r], fill=255 if grey else tuple(rng.randint(0, 255) for _ in range(3)))
    out = BytesIO()
    im.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _picture(i: int, rng: random.Random, store, side: int) -> dict:
    folder = list(FOLDERS)[i % 3]
    size = (side + rng.randrange(0, side // 2), side + rng.randrange(0, side))
    pic, mask = store.put_bytes(_png(rng, size)), store.put_bytes(_png(rng, size, grey=True))
    tags = rng.sample(TAGS, 6) + [f"rare_thing_{i % 50}"]
    return {"i": i, "folder": folder, "name": f"{folder}/pic{i:05d}", "size": size, "hash": pic.sha256,
            "md5": pic.md5, "mask": mask.sha256, "tags": tags}


def build(base: Path, n: int, side: int) -> Path:
    """The recipe of a synthetic work dir with `n` pictures in the last training set."""
    from bakery.craft.prepare.bucket_report import bucket_report
    from storage import Catalog, ContentStore
    from storage.catalog import now

    (base / "images").mkdir(parents=True, exist_ok=True)
    recipe = base / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    work, rng = base / "work", random.Random(5)
    store = ContentStore(work / "store")
    pics = [_picture(i, rng, store, side) for i in range(n)]
    with Catalog.open(work) as cat:
        cat.start_run("bench0001", str(recipe.resolve()), "x", "{}", None)
        _fill(cat, pics, now())
        cat.finish_run("bench0001", "completed")
    rep = bucket_report({p["name"]: p["size"] for p in pics}, 512)
    (work / "reports").mkdir(exist_ok=True)
    (work / "reports" / "buckets.json").write_text(json.dumps({
        p.name: {"size": list(p.size), "kohya_bucket": list(p.choice.bucket), "bucket": list(p.final.bucket),
                 "kohya_resized": list(p.choice.resized), "downscale": p.downscale} for p in rep.placed}))
    return recipe


def _fill(cat, pics: list[dict], at) -> None:
    run = "bench0001"
    cat.add_images({"hash": p["hash"], "md5": p["md5"], "width": p["size"][0], "height": p["size"][1], "mode": "RGB",
                    "format": "PNG", "bytes": 0, "frames": 1, "created_at": at} for p in pics)
    cat.add_sources([{"image_hash": p["hash"], "location": f"/data/{p['name']}.png", "kind": "folder",
                      "name": p["name"], "source_kind": "fanart_hires", "sidecar": ", ".join(p["tags"]),
                      "fetched_at": at} for p in pics], run)
    cat.add_derivations([{"input_hash": p["hash"], "output_hash": p["mask"], "output_suffix": "", "stage": "masks",
                          "params": {"mode": "fast"}, "params_hash": "m", "code_version": "c", "created_at": at}
                         for p in pics], run)
    cat.add_mask_qa([{"image_hash": p["hash"], "mask_hash": p["mask"], "accepted": p["i"] % 17 != 0,
                      "reason": None if p["i"] % 17 else "nearly empty"} for p in pics], run)
    cat.add_tags({"image_hash": p["hash"], "tag": t, "category": "general", "origin": "tagger", "confidence": 0.9}
                 for p in pics for t in p["tags"][:3])
    cat.add_tag_counts({"tag": f"rare_thing_{k}", "posts": 40, "site": "bench"} for k in range(50))
    cat.add_train_captions(run, [{"folder": p["folder"], "name": p["name"].replace("/", "_"), "image_hash": p["hash"],
                                  "caption": ", ".join(["chara"] + ([FOLDERS[p["folder"]]] if p["folder"] != "chara"
                                                                    else []) + p["tags"][2:]),
                                  "repeats": 2, "mask_hash": p["mask"], "is_reg": False} for p in pics])
    cat.add_tag_stats(run, [{"concept": f, "phase": ph, "tag": t, "count": 1} for f in FOLDERS
                            for ph in ("before_prune", "after_prune") for t in TAGS])
    for stage in ("ingest", "convert", "dedupe", "masks", "buckets", "prune"):
        cat.record_stage(run, stage, status="ran", n_in=len(pics), n_out=len(pics), n_processed=len(pics), duration_s=1.0)


def timed_get(url: str) -> tuple[float, int]:
    import httpx

    start = time.perf_counter()
    answer = httpx.get(url, timeout=120)
    assert answer.status_code == 200, answer.text[-500:]
    return time.perf_counter() - start, len(answer.content)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=384, help="shortest side of the drawn pictures")
    ap.add_argument("--keep", type=Path, help="build the work dir here (kept) instead of a temp dir")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bakery-review-bench-"))
    try:
        t0 = time.perf_counter()
        recipe = build(base, args.n, args.size)
        print(f"work dir with {args.n} pictures: {time.perf_counter() - t0:.1f} s ({base})")
        serve_and_time(recipe, args.n)
    finally:
        if not args.keep:  # a 2,000-picture work dir is large
            shutil.rmtree(base, ignore_errors=True)


def serve_and_time(recipe: Path, n: int) -> None:
    from bakery.review import create_app
    from bakery.review.thumbs import make_thumbnails
    from storage import Catalog
    from tests.review_work import Served

    work = recipe.parent / "work"
    with Catalog.open(work, read_only=True) as cat:
        rows = cat.train_captions("bench0001")
    t0 = time.perf_counter()
    made = make_thumbnails(work, [r["image_hash"] for r in rows], masks=[r["mask_hash"] for r in rows])
    print(f"thumbnails: {made} made in {time.perf_counter() - t0:.1f} s (kept in {work / 'review/thumbs'})")
    with Served(create_app(recipe)) as served:
        cold, size = timed_get(served.url + "/dataset")
        warm = sorted(timed_get(served.url + "/dataset")[0] for _ in range(5))[2]
        page20 = timed_get(served.url + "/dataset?page=20")[0]
        tag = timed_get(served.url + "/dataset?tag=hat")[0]
    print(f"first dataset page ({n} pictures, 60 shown, {size // 1024} KiB): {cold * 1000:.0f} ms cold, "
          f"{warm * 1000:.0f} ms warm (median of 5); page 20 {page20 * 1000:.0f} ms; tag filter {tag * 1000:.0f} ms; "
          f"goal < 1000 ms: {'met' if cold < 1 else 'MISSED'}")
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
