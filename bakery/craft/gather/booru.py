"""Boorus (Danbooru, Gelbooru): what a post says, which posts and tags to keep (rules.md §1).

Pure functions over the sites' JSON: no HTTP, no Prefect, no catalog. The HTTP
client is bakery/craft/gather/booru_http.py; the scrape task wires both to storage.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

# Files we take; anything else (mp4, webm, zip = ugoira, swf) is skipped with its kind.
IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "gif", "webp", "avif", "bmp"})
NON_IMAGE = {"mp4": "video", "webm": "video", "mkv": "video", "zip": "ugoira (zip of frames)", "swf": "flash"}

# Tag category numbers, the same on both sites (Gelbooru adds 6 = deprecated).
CATEGORIES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta", 6: "general"}
DANBOORU_TAG_FIELDS = ("general", "character", "copyright", "artist", "meta")
RATINGS = {
    "g": "g", "general": "g",
    "s": "s", "sensitive": "s", "safe": "s",
    "q": "q", "questionable": "q",
    "e": "e", "explicit": "e",
}
# `foo:bar` namespaces (Grabber/gallery-dl style and booru metatag-like tags). `:3` has none.
NAMESPACED = re.compile(r"^[a-z][a-z0-9_]*:.+$")


@dataclass(frozen=True)
class Post:
    kind: str  # danbooru | gelbooru
    post_id: str
    post_url: str
    md5: str | None
    file_url: str | None
    file_ext: str | None
    rating: str | None  # g | s | q | e
    score: int | None
    width: int | None
    height: int | None
    source: str
    # (tag, category); Gelbooru posts carry no categories: "general" until the tag API says more.
    tags: tuple[tuple[str, str], ...]


def site_of(base_url: str) -> str:
    """The site's identity in the catalog: host[:port], lower case."""
    return urlsplit(base_url).netloc.lower()


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _absolute(url: object, base_url: str) -> str | None:
    """Protocol-relative (`//img.site/x`) and relative URLs resolved against the site; others as given."""
    if not url:
        return None
    return urljoin(base_url + "/", str(url))


def _ext(name: str | None) -> str | None:
    if not name:
        return None
    path = urlsplit(name).path if "://" in name else name
    _, dot, ext = path.rpartition(".")
    return ext.lower() if dot and ext and "/" not in ext else None


def parse_danbooru(d: dict, base_url: str) -> Post:
    tags = tuple(
        (t, field) for field in DANBOORU_TAG_FIELDS for t in (d.get(f"tag_string_{field}") or "").split()
    )
    if not tags:  # an older or trimmed shape: tag_string only
        tags = tuple((t, "general") for t in (d.get("tag_string") or "").split())
    post_id = str(d["id"])
    return Post(
        kind="danbooru",
        post_id=post_id,
        post_url=f"{base_url}/posts/{post_id}",
        md5=(d.get("md5") or None),
        file_url=_absolute(d.get("file_url"), base_url),
        file_ext=(d.get("file_ext") or _ext(d.get("file_url")) or None),
        rating=RATINGS.get(str(d.get("rating") or "").lower()),
        score=_int(d.get("score")),
        width=_int(d.get("image_width")),
        height=_int(d.get("image_height")),
        source=str(d.get("source") or ""),
        tags=tags,
    )


def parse_gelbooru(d: dict, base_url: str) -> Post:
    # Gelbooru HTML-escapes tags in its API output (hands_on_another&#039;s_head).
    tags = tuple((html.unescape(t), "general") for t in str(d.get("tags") or "").split())
    post_id = str(d["id"])
    file_url = _absolute(d.get("file_url"), base_url)
    return Post(
        kind="gelbooru",
        post_id=post_id,
        post_url=f"{base_url}/index.php?page=post&s=view&id={post_id}",
        md5=(d.get("md5") or None),
        file_url=file_url,
        file_ext=_ext(d.get("image")) or _ext(file_url),
        rating=RATINGS.get(str(d.get("rating") or "").lower()),
        score=_int(d.get("score")),
        width=_int(d.get("width")),
        height=_int(d.get("height")),
        source=str(d.get("source") or ""),
        tags=tags,
    )


PARSERS = {"danbooru": parse_danbooru, "gelbooru": parse_gelbooru}


def wanted(post: Post, ratings: list[str] | tuple[str, ...], min_score: int | None) -> bool:
    """The recipe's filters: rating in `ratings` (empty = any), score >= min_score."""
    if ratings and post.rating not in ratings:
        return False
    return min_score is None or (post.score is not None and post.score >= min_score)


def host_allowed(host: str, base_url: str, file_hosts: list[str] | tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    if host == (urlsplit(base_url).hostname or "").lower():
        return True
    for pattern in file_hosts:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def url_problem(url: str, base_url: str, file_hosts: list[str] | tuple[str, ...]) -> str | None:
    """Why a URL the site returned must not be followed (None: it may be)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"malformed URL {url!r}"
    if parts.scheme not in ("http", "https"):
        return f"URL scheme {parts.scheme or '(none)'!r} not allowed (http/https only): {url}"
    if not host:
        return f"URL without a host: {url}"
    if not host_allowed(host, base_url, file_hosts):
        return f"foreign host {host} (not the site or its file_hosts): {url}"
    return None


def precheck(post: Post, base_url: str, file_hosts: list[str] | tuple[str, ...]) -> str | None:
    """Why a post cannot be downloaded, decided from its JSON alone (None: it can)."""
    if not post.file_url:
        return "no downloadable file (deleted, banned or restricted: no file_url)"
    ext = (post.file_ext or "").lower()
    if ext not in IMAGE_EXTS:
        what = NON_IMAGE.get(ext, "unknown file type")
        return f"not an image: .{ext or '?'} ({what})"
    if not post.md5 or not re.fullmatch(r"[0-9a-fA-F]{32}", post.md5):
        return "no md5 in the post: the download could not be verified"
    return url_problem(post.file_url, base_url, file_hosts)


def keep_tag(tag: str, category: str, drop_meta: bool, drop_namespaced: bool) -> bool:
    if drop_meta and category == "meta":
        return False
    if drop_namespaced and category not in ("character", "copyright") and NAMESPACED.match(tag):
        return False
    return True


def sidecar_text(tags: list[str] | tuple[str, ...]) -> str:
    """The guide's caption sidecar: tags comma + space separated, spaces inside a tag as `_`."""
    return ", ".join("_".join(t.split()) for t in tags)


# rules.md §9: a Danbooru tag with fewer posts is weakly known by the model.
RARE_TAG_POSTS = 500


def rare_tags(counts: dict[str, tuple[str, int | None]], threshold: int = RARE_TAG_POSTS) -> list[str]:
    """Tags whose known post count is under `threshold` (unknown counts are not flagged)."""
    return sorted(t for t, (_, n) in counts.items() if n is not None and n < threshold)


def file_name(post: Post) -> str:
    """`<md5>.<ext>`, the name boorus and Grabber give a file."""
    return f"{(post.md5 or '').lower()}.{(post.file_ext or 'bin').lower()}"
