"""The craft: plain functions, one package per phase of the chain, no Prefect and no catalog.

gather (scrape, ingest, convert, names, animation) -> prepare (dedupe, alpha, trim, upscale, framing and
detectors, masks, buckets) -> caption (autotag, tags, prune, trainset, repeats, tag stats) -> bake (the loop, the
base-model families, the networks, kohya files, regularisation) -> taste (rendering, judges, ranking, reports,
trigger check). Beside the chain: slider (LECO), sweep, edits.
"""
