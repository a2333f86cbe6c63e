"""What the review studio reads: the catalog (read-only, in short windows) and the work dir's reports.

A `bakery run` may hold the catalog for writing between two requests (DuckDB
allows one writing process): a page then says so in one line instead of waiting.
Within this process one lock serialises catalog use, reading and editing alike
(DuckDB refuses two connections of one process with different modes).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb

from bakery.caption_sources import caption_settings, gather_sources
from bakery.craft.caption import tags as tags_craft
from bakery.manifest import ImageRef
from bakery.recipe import Recipe
from bakery.review import views
from storage import Catalog
from storage.catalog import INTERACTIVE_WAIT_S

CATALOG_LOCK = threading.RLock()


class CatalogBusy(RuntimeError):
    """The catalog cannot be opened now (a running bake holds it) or does not exist yet."""


@contextmanager
def reading(workdir: Path) -> Iterator[Catalog]:
    with CATALOG_LOCK:
        opened = Catalog.open(workdir, read_only=True, wait_s=INTERACTIVE_WAIT_S)
        try:
            cat = opened.__enter__()
        except FileNotFoundError:
            raise CatalogBusy(f"no catalog in {workdir} yet: run the recipe first (bakery run RECIPE)") from None
        except duckdb.IOException:
            raise CatalogBusy("the catalog is busy (a `bakery run` is writing it): reload when the run ends") from None
        try:
            yield cat
        finally:
            opened.__exit__(None, None, None)


def read_report(workdir: Path, relative: str) -> dict | None:
    path = workdir / relative
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def triggers_of(recipe: Recipe) -> list[str]:
    out = []
    for c in recipe.concepts:
        out += [c.trigger, *c.extra_triggers, *(o.trigger for o in c.outfits)]
    return out


@dataclass
class Dataset:
    run_id: str | None
    cards: list[views.Card]
    warnings: list[dict] = field(default_factory=list)  # the stage warnings of the run that built the set


_CACHE: dict = {}  # what was read at one state of the catalog and reports: {"stamp", "dataset", "sources", "edits"}


def _stamp(workdir: Path) -> tuple:
    """Changes whenever the catalog or a report the dataset view reads changes (a run, an edit)."""
    out = []
    for name in ("catalog.duckdb", "catalog.duckdb.wal", "reports/buckets.json", "reports/upscale.json"):
        try:
            st = (workdir / name).stat()
            out.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


def _cached(workdir: Path) -> dict:
    stamp = (str(workdir), _stamp(workdir))
    if _CACHE.get("stamp") != stamp:
        _CACHE.clear()
        _CACHE.update(stamp=stamp, dataset=None, sources={}, edits=None)
    return _CACHE


def load_dataset(workdir: Path, recipe: Recipe) -> Dataset:
    """Every picture of the last training set (held-out validation pictures too) as a card; read once per state of
    the catalog (cards are copied out, so a page may fill in their pruned tags)."""
    with CATALOG_LOCK:
        cache = _cached(workdir)
        if cache["dataset"] is None:
            cache["dataset"] = _read_dataset(workdir, recipe)
        ds = cache["dataset"]
    return Dataset(ds.run_id, [replace(c, flags=dict(c.flags)) for c in ds.cards], list(ds.warnings))


def _read_dataset(workdir: Path, recipe: Recipe) -> Dataset:
    with reading(workdir) as cat:
        runs = cat.runs_with("train_captions")
        if not runs:
            return Dataset(None, [])
        rows = [r for r in cat.train_captions(runs[0]) if not r["is_reg"]]
        held = [{**r, "repeats": 0, "mask_hash": None} for r in cat.validation_pictures(runs[0]) if r["held_out"]]
        hashes = sorted({r["image_hash"] for r in rows + held})
        names = cat.picture_names(hashes)
        sizes = {h: (r["width"], r["height"]) for h, r in cat.image_rows(hashes).items()}
        qa = {r["image_hash"]: r for r in cat.latest_mask_qa()}
        counts = cat.tag_post_counts(None)
        decided = views.decision_flags(cat.caption_decisions(runs[0]))
        warnings = cat.stage_warnings(runs[0])
    buckets = read_report(workdir, "reports/buckets.json") or {}
    upscaled = {u["name"]: u["factor"] for u in (read_report(workdir, "reports/upscale.json") or {}).get("upscaled", [])}
    triggers, caps = triggers_of(recipe), recipe.captions
    cards = []
    for r, is_held in [(r, False) for r in rows] + [(r, True) for r in held]:
        name = names.get(r["image_hash"], "")
        if name.replace("/", "_") != r["name"]:  # a name made unique (`pic0_png`) is not rebuilt: use the file name
            name = r["name"]
        cards.append(views.build_card(r, name, triggers, sizes.get(r["image_hash"]), buckets.get(name),
                                      upscaled.get(name), qa.get(r["image_hash"]), counts, caps.rare_tag_posts,
                                      caps.warn_caption_bytes, held=is_held))
        cards[-1].flags.update(decided.get(r["image_hash"], {}))
        views.warned_flag(cards[-1], warnings)
    return Dataset(runs[0], sorted(cards, key=lambda c: (c.folder, c.name)), warnings)


def active_edits(workdir: Path) -> list:
    """The edits the next run applies (a page's removed tags are theirs), read once per state of the catalog."""
    from bakery.edits import EditError
    from bakery.edits import active_edits as read_edits

    with CATALOG_LOCK:
        cache = _cached(workdir)
        if cache["edits"] is None:
            try:
                cache["edits"] = read_edits(workdir)
            except EditError as exc:  # only "catalog: ... in use by a running bake" comes from a read
                raise CatalogBusy(str(exc)) from None
        return cache["edits"]


def source_tags(workdir: Path, recipe: Recipe, hashes: Sequence[str]) -> dict[str, list[str]]:
    """Each picture's cleaned tags before pruning, read as the prune stage reads them (those of a page only: for
    thousands of pictures that is most of a page's time; kept until the catalog changes)."""
    with CATALOG_LOCK:
        known = _cached(workdir)["sources"]
        missing = sorted(set(hashes) - set(known))
        if missing:
            with reading(workdir) as cat:
                known.update(_cleaned_sources(cat, recipe, missing))
        return {h: known[h] for h in hashes if h in known}


def _cleaned_sources(cat: Catalog, recipe: Recipe, hashes: Sequence[str]) -> dict[str, list[str]]:
    settings = caption_settings(recipe.captions.model_dump(mode="json"))
    side, rows = gather_sources(cat, [ImageRef(h, h) for h in hashes])
    return {h: tags_craft.clean_tags(tags_craft.source_tags(side[h], rows[h], settings.sources, settings.merge,
                                                             settings.keep_namespaces), settings.clean) for h in side}


def provenance(workdir: Path, sha256: str) -> dict:
    """Where a picture came from: its sources and every derivation with its parameters (or why the chain stops)."""
    with reading(workdir) as cat:
        try:
            chain = cat.provenance(sha256)
        except LookupError as exc:
            return {"error": str(exc), "sources": [], "steps": []}
        booru = {}
        for site in {s["site"] for s in chain.sources if s.get("site")}:
            ids = [s["post_id"] for s in chain.sources if s.get("site") == site]
            booru.update({(site, pid): post for pid, post in cat.booru_posts(site, ids).items()})
    sources = [{**s, "post_url": (booru.get((s.get("site"), s.get("post_id"))) or {}).get("post_url")}
               for s in chain.sources]
    return {"error": None, "sources": sources, "steps": chain.steps, "origin": chain.origin_hash}


def load_decisions(workdir: Path) -> dict:
    """The last run's skips and warnings, the near-duplicate groups with the copy kept, the masks QA rejected,
    the screening's and special tags' decisions (rules.md §3, §10)."""
    with reading(workdir) as cat:
        run = cat.last_run()
        skips = cat.skips_for(run["run_id"]) if run else []
        warnings = cat.stage_warnings(run["run_id"]) if run else []
        screening = cat.caption_decisions()
        dupes = cat.near_duplicates()
        rejected = [r for r in cat.latest_mask_qa() if not r["accepted"]]
        names = cat.picture_names(sorted({h for d in dupes for h in (d["image_hash"], d["kept_hash"])}
                                         | {r["image_hash"] for r in rejected}))
    return {"run": run, "skips": skips, "warnings": warnings, "groups": views.duplicate_groups(dupes, names),
            "screening": screening,
            "rejected": [{**r, "name": names.get(r["image_hash"], "")} for r in rejected]}


def load_runs(workdir: Path, recipe_path: str) -> dict:
    """This recipe's runs (every run when the catalog knows none of it) with their stage tables."""
    with reading(workdir) as cat:
        runs = cat.runs_of(recipe_path) or cat.runs_of(None)
        stages = {r["run_id"]: cat.stage_table(r["run_id"]) for r in runs}
        warnings = {r["run_id"]: cat.stage_warnings(r["run_id"]) for r in runs}
        return {"runs": runs, "stages": stages, "warnings": warnings, "tag_runs": cat.runs_with("tag_stats"),
                "evaluations": cat.evaluation_reports()}


def tag_stats(workdir: Path, run_id: str) -> list[dict]:
    with reading(workdir) as cat:
        return cat.tag_stats(run_id)
