"""Prefect tasks: thin wrappers that call the craft functions and write the catalog.

One package per phase, as in bakery/craft: gather, prepare, caption, bake, taste, slider. Beside them, what every
stage shares: stage (how a stage runs), runinfo (what a run tells its stages), caching (cache keys), runlog,
progress, pool and image_workers (per-image work in processes or on Dask), report (run summaries); sweep and edits.
"""
