"""The recipe's gather sections: [project], [[sources]] (folders and booru searches), [scrape], [ingest], [convert]."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from bakery.recipe.base import NAME_PATTERN, _Section

# Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 178_956_970


# The guide's source-quality ranking for 2D characters, best first (rules.md §1).
SOURCE_KINDS = (
    "fanart_hires",
    "monochrome_hires",
    "concept_art",
    "monochrome_lowres",
    "screencap_hires",
    "art_3d",
    "colour_lowres",
    "ai",
    "screencap_lowres",
    "figure_photo",
    "shop_photo",
    "cosplay",
    "chibi",
    "unknown",
)
SourceKind = Literal[SOURCE_KINDS]  # type: ignore[valid-type]


class Project(_Section):
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "my_lora"
    # Relative paths are relative to the recipe file.
    workdir: Path = Path("work")


class FolderSource(_Section):
    kind: Literal["folder"] = "folder"
    path: Path
    recursive: bool = True
    # Where the images come from, in the guide's quality ranking (rules.md §1).
    source_kind: SourceKind = "unknown"


class _BooruSource(_Section):
    """A booru search (rules.md §1): the site's own tag syntax, newest posts first."""

    tags: str
    # Posts to take (after the ratings/min_score filters, usable files only).
    limit: Annotated[int, Field(gt=0, le=100_000)] = 200
    ratings: list[Literal["g", "s", "q", "e"]] = []  # [] = every rating
    min_score: int | None = None
    # Hosts (besides base_url's own) that files may come from; "*.example.com" covers subdomains.
    file_hosts: list[str] = []
    # Credentials: names of environment variables, or a Prefect Secret block whose value is
    # JSON {"user": ..., "api_key": ...} (or "user:api_key"). Never the secrets themselves.
    user_env: str = ""
    api_key_env: str = ""
    secret_block: str | None = None
    source_kind: SourceKind = "unknown"
    page_size: Annotated[int, Field(gt=0, le=200)] = 100

    @field_validator("tags")
    @classmethod
    def _tags_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty (the site's search, e.g. \"character_a absurdres\")")
        return " ".join(v.split())

    @field_validator("base_url", check_fields=False)
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"must not carry a query or fragment, got {v!r}")
        return v.rstrip("/")

    @field_validator("file_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+", host):
                raise ValueError(f"must be host names like 'cdn.donmai.us' or '*.donmai.us', got {host!r}")
        return [h.lower() for h in v]


class DanbooruSource(_BooruSource):
    kind: Literal["danbooru"] = "danbooru"
    base_url: str = "https://danbooru.donmai.us"
    file_hosts: list[str] = ["cdn.donmai.us", "*.donmai.us"]
    user_env: str = "DANBOORU_LOGIN"
    api_key_env: str = "DANBOORU_API_KEY"


class GelbooruSource(_BooruSource):
    kind: Literal["gelbooru"] = "gelbooru"
    base_url: str = "https://gelbooru.com"
    file_hosts: list[str] = ["*.gelbooru.com"]
    user_env: str = "GELBOORU_USER_ID"
    api_key_env: str = "GELBOORU_API_KEY"
    page_size: Annotated[int, Field(gt=0, le=100)] = 100


BOORU_KINDS = ("danbooru", "gelbooru")
BooruSource = DanbooruSource | GelbooruSource
Source = Annotated[FolderSource | DanbooruSource | GelbooruSource, Field(discriminator="kind")]


class ScrapeParams(_Section):
    """How booru sources are fetched (politeness and robustness), shared by all of them."""

    # Danbooru refuses clients without a browser-like User-Agent (rules.md §1).
    user_agent: str = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    )
    requests_per_second: Annotated[float, Field(gt=0, le=50)] = 2.0  # API calls (searches, tag lookups)
    downloads: Annotated[int, Field(gt=0, le=32)] = 4  # concurrent file downloads
    downloads_per_second: Annotated[float, Field(gt=0)] | None = 8.0  # None = only bounded by `downloads`
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    backoff_s: Annotated[float, Field(ge=0)] = 1.0  # first retry waits ~this (doubling, with jitter)
    max_backoff_s: Annotated[float, Field(ge=0)] = 60.0  # also the longest Retry-After honoured
    max_file_mb: Annotated[float, Field(gt=0)] = 256.0
    drop_meta: bool = True  # meta-category tags (highres, absurdres, commentary ...)
    drop_namespaced: bool = True  # `foo:bar` tags (not `:3`; character/copyright tags kept)
    fetch_tag_counts: bool = True  # post count (and category) of every tag, once per tag
    # True: every run asks the site for new posts; False: the stage is cached like the others.
    recheck: bool = True
    # An HTTP(S) proxy for every booru request, e.g. "http://127.0.0.1:3128" (the environment's
    # HTTP_PROXY etc. are not used, nor netrc files).
    proxy: str | None = None
    # Also write `<md5>.<ext>` + `<md5>.txt` (the guide's sidecar) here, Grabber-style.
    export_dir: Path | None = None


class IngestParams(_Section):
    max_pixels: Annotated[int, Field(gt=0)] = DEFAULT_MAX_PIXELS
    max_file_mb: Annotated[float, Field(gt=0)] = 256.0
    formats: list[Literal["PNG", "JPEG", "WEBP", "BMP", "GIF", "AVIF", "TIFF"]] = [
        "PNG",
        "JPEG",
        "WEBP",
        "BMP",
        "GIF",
        "AVIF",
    ]


class ConvertParams(_Section):
    # Working copies: speed over size (level 1 is ~5x faster than Pillow's 6).
    png_compress_level: Annotated[int, Field(ge=0, le=9)] = 1
