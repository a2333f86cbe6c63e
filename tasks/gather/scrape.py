"""Scrape: booru searches (Danbooru, Gelbooru) into the content store and the catalog.

The first link of the chain. Each booru source is searched page by page (newest
first); posts that pass the recipe's filters and can be downloaded are streamed
into the store (verified by md5) and recorded in `booru_posts` and `sources`
with their tags (category, origin `booru`). Posts already in the catalog are
not downloaded again, so an interrupted run resumes and a later run fetches only
new posts. The stage hands ingest a listing of the stored files, which then
flow through ingest/convert/dedupe like folder originals.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from bakery.craft.gather import booru as craft
from bakery.craft.gather import booru_http
from bakery.craft.gather.booru_http import BooruClient, BooruError, ClientSettings, DownloadSkipped
from bakery.craft.gather.ingest import SourceFile
from bakery.manifest import ImageRef, Skip, StageResult
from bakery.recipe import BooruSource, Recipe, ScrapeParams
from storage import Catalog, ContentStore, Digest
from storage.store import StreamRejected
from tasks import caching
from tasks.progress import StageProgress
from tasks.stage import RunInfo, Stage


class ScrapeError(RuntimeError):
    """A booru source cannot be used as configured; the message names the recipe key."""


@dataclass(frozen=True)
class BooruSpec:
    """One booru source of the recipe (no secrets: only where to find them)."""

    index: int  # position in `sources`, for messages
    kind: str
    base_url: str
    tags: str
    limit: int
    ratings: tuple[str, ...]
    min_score: int | None
    file_hosts: tuple[str, ...]
    user_env: str
    api_key_env: str
    secret_block: str | None
    source_kind: str
    page_size: int

    @classmethod
    def of(cls, index: int, s: BooruSource) -> "BooruSpec":
        return cls(index, s.kind, s.base_url, s.tags, s.limit, tuple(s.ratings), s.min_score, tuple(s.file_hosts),
                   s.user_env, s.api_key_env, s.secret_block, s.source_kind, s.page_size)

    @property
    def key(self) -> str:
        return f"sources[{self.index}]"


def booru_specs(recipe: Recipe) -> list[BooruSpec]:
    return [BooruSpec.of(i, s) for i, s in enumerate(recipe.sources) if s.kind in ("danbooru", "gelbooru")]


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow (tests, benchmarks)
        return logging.getLogger("bakery.scrape")


# -- credentials -------------------------------------------------------------------


def _parse_secret(value: object, spec: BooruSpec) -> tuple[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            user, sep, key = value.partition(":")
            if sep and user and key:
                return user, key
    if isinstance(value, dict):
        user = value.get("user") or value.get("login") or value.get("user_id")
        key = value.get("api_key")
        if user and key:
            return str(user), str(key)
    raise ScrapeError(
        f"{spec.key}.secret_block: the Secret '{spec.secret_block}' must hold "
        '{"user": ..., "api_key": ...} or "user:api_key"'
    )


def credentials(spec: BooruSpec) -> tuple[str, str] | None:
    """From the Prefect Secret block named in the recipe, else the environment; None = anonymous."""
    if spec.secret_block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(spec.secret_block).get()
        except ValueError:
            raise ScrapeError(f"{spec.key}.secret_block: no Prefect Secret block named '{spec.secret_block}'") from None
        return _parse_secret(value, spec)
    user, key = os.environ.get(spec.user_env, ""), os.environ.get(spec.api_key_env, "")
    if user and key:
        return user, key
    if user or key:
        missing = spec.api_key_env if user else spec.user_env
        raise ScrapeError(f"{spec.key}: environment variable {missing} is not set (its pair is)")
    return None


# -- one source ----------------------------------------------------------------------


@dataclass
class Taken:
    post: craft.Post
    image_hash: str
    md5: str
    size: int


@dataclass
class SourceOutcome:
    taken: list[Taken] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    listed: int = 0
    downloaded: int = 0
    tags: dict[str, list[str]] = field(default_factory=dict)  # image hash -> kept tags (sidecar order)


def _settings(params: ScrapeParams) -> ClientSettings:
    return ClientSettings(
        user_agent=params.user_agent, requests_per_second=params.requests_per_second,
        downloads_per_second=params.downloads_per_second, timeout_s=params.timeout_s, retries=params.retries,
        backoff_s=params.backoff_s, max_backoff_s=params.max_backoff_s, connections=params.downloads,
        proxy=params.proxy,
    )


def _categorise(post: craft.Post, known: dict[str, tuple[str, int | None]]) -> list[tuple[str, str]]:
    """Danbooru posts carry categories; Gelbooru's come from the tag API (else general)."""
    if post.kind == "danbooru":
        return list(post.tags)
    return [(t, known.get(t, ("general", None))[0]) for t, _ in post.tags]


def _download(client: BooruClient, store: ContentStore, post: craft.Post, max_bytes: int) -> Digest | Skip:
    def sink(chunks):  # noqa: ANN001, ANN202
        return store.put_stream(chunks, expected_md5=post.md5, max_bytes=max_bytes)

    try:
        return client.download(post.file_url or "", sink, max_bytes)
    except (DownloadSkipped, StreamRejected) as exc:
        return Skip(post.post_url, str(exc))
    except BooruError as exc:  # retries ran out: the next run tries again
        return Skip(post.post_url, f"download failed: {exc}")


def _fetch_tag_counts(posts: list[craft.Post], all_tags: list[str], known_tags: dict[str, tuple[str, int | None]],
                      spec: BooruSpec, client: BooruClient) -> list[dict]:
    """Category and post count of each tag not known yet (added to `known_tags`); their `booru_tags` rows."""
    missing = [t for t in all_tags if t not in known_tags]
    if not missing:
        return []
    site, rows = craft.site_of(spec.base_url), []
    info = client.tag_info(missing)
    from_posts = {t: c for p in posts for t, c in p.tags}
    for t in missing:
        category, count = info.get(t, (from_posts.get(t, "general"), None))
        if spec.kind == "danbooru" and t in from_posts:
            category = from_posts[t]  # the post's own category is authoritative
        known_tags[t] = (category, count)
        rows.append({"site": site, "tag": t, "category": category, "post_count": count})
    return rows


def _take_page(
    posts: list[craft.Post], spec: BooruSpec, params: ScrapeParams, client: BooruClient, run: RunInfo,
    out: SourceOutcome, progress: StageProgress,
) -> None:
    site, store = craft.site_of(spec.base_url), run.store
    all_tags = sorted({t for p in posts for t, _ in p.tags})
    with Catalog.open(run.catalog) as cat:
        known_posts = cat.booru_posts(site, [p.post_id for p in posts])
        known_tags = cat.booru_tag_counts(site, all_tags)
    new_tag_rows = _fetch_tag_counts(posts, all_tags, known_tags, spec, client) if params.fetch_tag_counts else []

    def fetch(post: craft.Post) -> Digest | Skip:
        row = known_posts.get(post.post_id)
        if row and store.has(row["image_hash"]):
            return Digest(row["image_hash"], row["md5"], store.path(row["image_hash"]).stat().st_size)
        return _download(client, store, post, int(params.max_file_mb * 2**20))

    with ThreadPoolExecutor(max_workers=params.downloads) as pool:
        results = list(pool.map(fetch, posts))

    post_rows, source_rows, tag_rows, page_hashes = [], [], [], []
    for post, result in zip(posts, results):
        progress.advance()
        if isinstance(result, Skip):
            out.skips.append(result)
            continue
        kept = [t for t, c in _categorise(post, known_tags) if craft.keep_tag(t, c, params.drop_meta, params.drop_namespaced)]
        categories = dict(_categorise(post, known_tags))
        out.taken.append(Taken(post, result.sha256, result.md5, result.size))
        out.tags[result.sha256] = kept
        page_hashes.append(result.sha256)
        tag_rows += [{"image_hash": result.sha256, "tag": t, "category": categories[t], "origin": "booru"} for t in kept]
        if post.post_id in known_posts and known_posts[post.post_id]["image_hash"] == result.sha256:
            continue
        out.downloaded += 1
        post_rows.append({
            "site": site, "post_id": post.post_id, "kind": spec.kind, "image_hash": result.sha256, "md5": result.md5,
            "post_url": post.post_url, "file_url": post.file_url, "file_ext": post.file_ext, "score": post.score,
            "rating": post.rating, "width": post.width, "height": post.height, "source": post.source,
        })
        source_rows.append({
            "image_hash": result.sha256, "location": post.post_url, "kind": spec.kind, "name": result.md5,
            "source_kind": spec.source_kind, "site": site, "post_id": post.post_id,
            "sidecar": craft.sidecar_text(kept),
            "extra": {"file_url": post.file_url, "score": post.score, "rating": post.rating, "md5": post.md5,
                      "file_ext": post.file_ext, "source": post.source, "search": spec.tags},
        })
    # One write per page: an interrupted run keeps every page it finished.
    with Catalog.open(run.catalog) as cat:
        cat.add_booru_tags(new_tag_rows)
        cat.add_booru_posts(post_rows, run.run_id)
        cat.add_sources(source_rows, run.run_id)
        cat.replace_tags("booru", page_hashes, tag_rows)  # the site's current tags, this recipe's drops


def scrape_source(spec: BooruSpec, params: ScrapeParams, run: RunInfo, progress: StageProgress) -> SourceOutcome:
    out = SourceOutcome()
    parse = craft.PARSERS[spec.kind]
    with BooruClient(spec.kind, spec.base_url, _settings(params), credentials(spec), spec.file_hosts) as client:
        pages = client.pages(spec.tags, spec.page_size)
        try:
            for raw_page in pages:
                batch: list[craft.Post] = []
                seen = {t.post.post_id for t in out.taken}
                for raw in raw_page:
                    out.listed += 1
                    try:
                        post = parse(raw, spec.base_url)
                    except (KeyError, TypeError, ValueError):
                        out.skips.append(Skip(f"{spec.base_url} ({spec.tags})", "malformed post in the API answer"))
                        continue
                    if post.post_id in seen or not craft.wanted(post, spec.ratings, spec.min_score):
                        continue
                    reason = craft.precheck(post, spec.base_url, spec.file_hosts)
                    if reason:
                        out.skips.append(Skip(post.post_url, reason))
                        continue
                    seen.add(post.post_id)
                    batch.append(post)
                    if len(out.taken) + len(batch) >= spec.limit:
                        break
                if batch:
                    _take_page(batch, spec, params, client, run, out, progress)
                if len(out.taken) >= spec.limit:
                    break
        except BooruError as exc:
            raise ScrapeError(f"{spec.key} ({spec.kind} '{spec.tags}'): {exc}") from None
        finally:
            pages.close()
        stats = client.stats
    _logger().info(
        "%s %s '%s': %d posts listed, %d taken (%d downloaded), %d skipped; %d API calls, %d downloads, %d retries",
        spec.kind, craft.site_of(spec.base_url), spec.tags, out.listed, len(out.taken), out.downloaded,
        len(out.skips), stats.requests["api"], stats.requests["download"], stats.retries,
    )
    return out


def export(params: ScrapeParams, run: RunInfo, files: dict[str, SourceFile]) -> None:
    """`<md5>.<ext>` + `<md5>.txt` (the guide's sidecar) for every taken post, Grabber-style."""
    folder = Path(params.export_dir or "")
    folder.mkdir(parents=True, exist_ok=True)
    with Catalog.open(run.catalog) as cat:
        exts = {r["image_hash"]: r["file_ext"] for r in cat.rows(
            "SELECT image_hash, file_ext FROM booru_posts WHERE image_hash IN (SELECT unnest(?))", [list(files)])}
    for h, f in files.items():
        target = folder / f"{f.md5}.{exts.get(h) or 'bin'}"
        if not target.exists():
            shutil.copyfile(f.path, target)
        (folder / f"{f.md5}.txt").write_text((f.sidecar or "") + "\n", encoding="utf-8")


@task(name="scrape")
def scrape(inputs: list[BooruSpec], params_json: str, workdir: str, run_id: str, workers: int | None) -> StageResult:
    """Every booru source into the store; returns the images and (payload) ingest's listing."""
    params = ScrapeParams.model_validate_json(params_json)
    run = RunInfo(run_id, workdir, workers)
    images: set[ImageRef] = set()
    files: dict[str, SourceFile] = {}
    skips: list[Skip] = []
    listed = downloaded = 0
    with StageProgress("scrape", sum(s.limit for s in inputs)) as progress:
        for spec in inputs:
            out = scrape_source(spec, params, run, progress)
            skips += out.skips
            listed += out.listed
            downloaded += out.downloaded
            for t in out.taken:
                images.add(ImageRef(t.md5, t.image_hash))
                files.setdefault(t.image_hash, SourceFile(
                    path=str(run.store.path(t.image_hash)), name=t.md5, sha256=t.image_hash, md5=t.md5, size=t.size,
                    source_kind=spec.source_kind, sidecar=craft.sidecar_text(out.tags[t.image_hash]),
                    kind=spec.kind, location=t.post.post_url,
                ))
    if params.export_dir:
        export(params, run, files)
    return StageResult(images=sorted(images), skips=skips, n_in=listed, n_processed=downloaded,
                       payload=sorted(files.values(), key=lambda f: f.name))


SCRAPE = Stage("scrape", scrape, caching.code_version(craft, booru_http, sys.modules[__name__]))
