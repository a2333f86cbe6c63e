#!/usr/bin/env python
"""Benchmark the scrape stage against the local fake booru (tests/booru_server.py).

    .venv/bin/python benchmarks/scrape.py [--posts 500] [--kb 200] [--downloads 4] [--json out.json]

1. Makes N posts of about KB KiB each (PNG with noise, seeded) and serves them
   from a FakeBooru on 127.0.0.1 (Danbooru API shape by default, --kind gelbooru).
2. First run: the scrape task (its function body, no Prefect server) into a
   fresh work dir with `downloads` concurrent downloads. Reports posts/s, MB/s,
   and the requests the server saw: it must be posts + pages + tag-API batches
   (no repeated downloads, no wasted calls).
3. Re-run on the same work dir: must make 0 image requests (only the pages and
   no tag lookups: their counts are stored).

The API rate defaults to the recipe's (2 requests/s); the download rate is
unlimited unless --dps is given (the recipe's default is 8/s, which would bound
the figure to 8 posts/s), so the figure measures the client and the store.
Exit code 1 when a request count is not what it must be.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bakery.recipe import parse_recipe, stage_params_json  # noqa: E402
from tasks.gather.scrape import booru_specs, scrape  # noqa: E402
from tests.booru_server import FakeBooru, make_posts  # noqa: E402


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--posts", type=int, default=500)
    ap.add_argument("--kb", type=float, default=200.0, help="approximate file size (KiB)")
    ap.add_argument("--downloads", type=int, default=4, help="concurrent downloads (scrape.downloads)")
    ap.add_argument("--rps", type=float, default=2.0, help="API requests per second (scrape.requests_per_second)")
    ap.add_argument("--dps", type=float, default=None, help="downloads per second (default: unlimited)")
    ap.add_argument("--page-size", type=int, default=100)
    ap.add_argument("--kind", choices=("danbooru", "gelbooru"), default="danbooru")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds the server adds to every request")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def _run_twice(args: argparse.Namespace, posts: list, work: Path) -> list[tuple]:
    """The scrape task twice on one work dir: (result, seconds, the server's request counts) each."""
    with FakeBooru(posts=posts, latency=args.latency) as booru:
        scrape_params = {"downloads": args.downloads, "requests_per_second": args.rps,
                         "downloads_per_second": args.dps or None}
        recipe = parse_recipe({
            "project": {"workdir": "work"},
            "sources": [{"kind": args.kind, "tags": "1girl", "base_url": booru.base_url, "limit": args.posts,
                         "page_size": args.page_size}],
            "scrape": scrape_params,
        }, work)
        specs, params_json = booru_specs(recipe), stage_params_json(recipe.scrape)
        runs = []
        for run_id in ("bench-1", "bench-2"):
            booru.reset_counts()
            started = time.monotonic()
            result = scrape.fn(specs, params_json, str(recipe.workdir), run_id, None)
            runs.append((result, time.monotonic() - started, booru.counts.copy()))
        return runs


def _report(args: argparse.Namespace, total_mb: float, runs: list[tuple]) -> dict:
    (first, first_s, c1), (_, second_s, c2) = runs
    page_kind, tags_kind = f"{args.kind}_posts", f"{args.kind}_tags"
    figures = {
        "posts": args.posts, "mean_kib": round(total_mb * 1024 / args.posts, 1), "downloads": args.downloads,
        "api_rps": args.rps, "download_rps": args.dps,
        "first_s": round(first_s, 2), "posts_per_s": round(args.posts / first_s, 1),
        "mb_per_s": round(total_mb / first_s, 1),
        "first_requests": c1["total"], "first_pages": c1[page_kind], "first_images": c1["image"],
        "first_tag_calls": c1[tags_kind],
        "rerun_s": round(second_s, 2), "rerun_requests": c2["total"], "rerun_pages": c2[page_kind],
        "rerun_images": c2["image"], "rerun_tag_calls": c2[tags_kind],
        "taken": len(first.images), "skipped": len(first.skips),
    }
    print(f"first run: {first_s:.2f} s = {figures['posts_per_s']} posts/s, {figures['mb_per_s']} MB/s "
          f"({args.downloads} concurrent downloads, API {args.rps}/s)")
    print(f"  requests: {c1['total']} = {c1['image']} images + {c1[page_kind]} pages + {c1[tags_kind]} tag lookups")
    print(f"re-run: {second_s:.2f} s, requests: {c2['total']} = {c2['image']} images + {c2[page_kind]} pages "
          f"+ {c2[tags_kind]} tag lookups")
    pages = math.ceil(args.posts / args.page_size)
    figures["checks"] = {
        "every post taken": len(first.images) == args.posts and not first.skips,
        "first run requests = posts + pages + tag lookups": (
            c1["image"] == args.posts and c1[page_kind] == pages and c1["total"] == args.posts + pages + c1[tags_kind]
        ),
        "re-run: 0 image requests, 0 tag lookups": c2["image"] == 0 and c2[tags_kind] == 0 and c2["total"] == pages,
    }
    for name, passed in figures["checks"].items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    return figures


def main() -> int:
    args = _args()
    t = time.monotonic()
    posts = make_posts(args.posts, seed=7, payload_kb=args.kb)
    total_mb = sum(len(p.data) for p in posts) / 2**20
    print(f"made {len(posts)} posts, {total_mb:.1f} MB (mean {total_mb * 1024 / len(posts):.0f} KiB) "
          f"in {time.monotonic() - t:.1f} s")
    work = Path(tempfile.mkdtemp(prefix="bakery-bench-scrape-"))
    try:
        figures = _report(args, total_mb, _run_twice(args, posts, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
