"""Caption stage costs: tag rules, catalog look-ups, WD14 preprocessing + inference.

    .venv/bin/python benchmarks/captions.py [--n 5000] [--tagger-n 200]

1. craft: N synthetic captions (35 tags from a Danbooru-like vocabulary) through
   clean -> layout -> prune (semi-static concept + outfit) -> caption text.
2. catalog: N images, each with an original (source + sidecar), a convert
   derivation and 20 booru tags in a real DuckDB file; time the prune stage's
   look-up of every image's caption sources (ancestors, sidecars, tags).
3. tagger: a WD14-format ONNX model with the real 448 px input (tiny network,
   so this measures the preprocessing and onnxruntime overhead, not a ViT) on
   M images of 768x1024, batch 8, against a bare decode loop.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from bakery.craft.caption import prune as P  # noqa: E402
from bakery.craft.caption import tags as T  # noqa: E402

VOCAB = (
    ["1girl", "solo", "smile", "open_mouth", "closed_mouth", "looking_at_viewer", "simple_background",
     "white_background", "outdoors", "sky", "cloud", "tree", "blush", "holding", "sitting", "standing", "umbrella",
     "meme", "uncensored", "shirt", "skirt", "hair", "circlet", "tiara", "large_breasts", "black_footwear"]
    + [f"{c}_{k}" for c in ("red", "blue", "green", "white", "black", "blonde", "brown", "pink")
       for k in ("hair", "eyes", "shirt", "skirt", "vest", "ribbon", "bow", "dress")]
    + ["long_hair", "short_hair", "twintails", "ponytail", "bangs", "ahoge", "long_sleeves", "frills", "plaid"]
)


def bench_craft(n: int) -> dict[str, float]:
    rng = random.Random(1)
    names = [f"chara/{'outfit1/' if i % 2 else ''}img{i:05d}" for i in range(n)]
    raw = {name: ", ".join(rng.sample(VOCAB, 35)) for name in names}
    concept = P.ConceptSpec("CharaA", "CharaA", paths=("chara/*",),
                            outfits=(P.OutfitSpec("Outfit1", "Outfit1", ("chara/outfit1/*",)),))
    t0 = time.perf_counter()
    rules = T.CleanRules()
    cleaned = {k: T.clean_tags(T.parse_caption(v), rules) for k, v in raw.items()}
    t1 = time.perf_counter()
    group_rules, members, _ = P.layout([concept], names)
    out = 0
    for rule in group_rules:
        res = P.prune_group(rule, {m: cleaned[m] for m in members[rule.folder]})
        out += sum(len(P.build_caption(rule, tags)) for tags in res.captions.values())
    t2 = time.perf_counter()
    return {"n": n, "clean_s": t1 - t0, "prune_s": t2 - t1, "images_per_s": n / (t2 - t0)}


def bench_catalog(n: int) -> dict[str, float]:
    from bakery.caption_sources import gather_sources
    from bakery.manifest import ImageRef
    from storage import Catalog

    with tempfile.TemporaryDirectory() as tmp, Catalog.open(Path(tmp)) as cat:
        rng = random.Random(2)
        origs = [f"{i:064x}" for i in range(n)]
        conv = [f"{i + 10**9:064x}" for i in range(n)]
        cat.add_sources([{"image_hash": o, "location": f"/x/{i}.png", "kind": "folder", "name": f"img{i}",
                          "sidecar": ", ".join(rng.sample(VOCAB, 20))} for i, o in enumerate(origs)], "r")
        cat.add_derivations([{"input_hash": o, "output_hash": c, "output_suffix": "", "stage": "convert",
                              "params": "{}", "params_hash": "p", "code_version": "c"} for o, c in zip(origs, conv)], "r")
        cat.replace_tags("booru", origs, [{"image_hash": o, "tag": t, "category": "general", "confidence": None}
                                          for o in origs for t in rng.sample(VOCAB, 20)])
        t0 = time.perf_counter()
        side, rows = gather_sources(cat, [ImageRef(f"img{i}", c) for i, c in enumerate(conv)])
        dt = time.perf_counter() - t0
        assert len(side) == n and all(rows[c] for c in conv)
    return {"n": n, "gather_s": dt, "images_per_s": n / dt}


def bench_tagger(m: int) -> dict[str, float]:
    from bakery.craft.caption import wd14
    from tests.wd14_model import write_tiny_wd14

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_wd14(Path(tmp) / "m", size=448)
        rng = random.Random(3)
        paths = []
        for i in range(m):
            p = Path(tmp) / f"{i}.png"
            Image.new("RGB", (768, 1024), tuple(rng.randrange(256) for _ in range(3))).save(p, compress_level=1)
            paths.append(p)
        t0 = time.perf_counter()
        for p in paths:
            with Image.open(p) as im:
                im.load()
        decode = time.perf_counter() - t0
        tagger = wd14.WD14Tagger(folder)
        t0 = time.perf_counter()
        for i in range(0, m, 64):
            ims = []
            for p in paths[i : i + 64]:
                with Image.open(p) as im:
                    im.load()
                    ims.append(im.copy())
            probs = tagger.predict(ims, batch_size=8)
            for row in probs:
                wd14.select(row, tagger.tags, wd14.Thresholds())
        total = time.perf_counter() - t0
    return {"m": m, "decode_only_s": decode, "tag_s": total, "images_per_s": m / total,
            "providers": ",".join(tagger.providers)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--tagger-n", type=int, default=200)
    args = ap.parse_args()
    for name, result in (("craft", bench_craft(args.n)), ("catalog", bench_catalog(args.n)),
                         ("tagger", bench_tagger(args.tagger_n))):
        print(name, " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
