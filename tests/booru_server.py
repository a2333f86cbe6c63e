"""A local fake booru (Danbooru + Gelbooru APIs and their file CDN) for tests and benchmarks.

Standard library HTTP server on 127.0.0.1 with an ephemeral port, in a daemon thread:

    posts = make_posts(45, seed=0)
    with FakeBooru(posts=posts, faults={"danbooru_posts": [429]}) as booru:
        httpx.get(booru.base_url + "/posts.json", params={"tags": "1girl", "page": 1},
                  headers={"User-Agent": BROWSER_UA})
        booru.counts["page"], booru.downloads, booru.log[-1].user_agent

Both APIs share one host: Danbooru at ``base_url`` (``/posts.json``, ``/tags.json``), Gelbooru at
``base_url + "/index.php"`` (``?page=dapi&s=post|tag&q=index&json=1``). Originals are served at
``/data/<md5>.<ext>``, previews at ``/data/preview/<md5>.jpg``, samples at ``/data/sample/sample-<md5>.<jpg|webm>``.

Faults (``faults={key: [entry, ...]}``) are queues: each matching request consumes the next entry,
and once a key's queue is empty requests are served normally. Keys, most specific first:
  * an int post id: downloads of that post's original file;
  * "/path?k=v&...": that path with (at least) those query values, e.g. "/posts.json?page=2";
  * "/path": any request to that path;
  * a request kind: "danbooru_posts", "danbooru_post", "danbooru_counts", "danbooru_tags",
    "gelbooru_posts", "gelbooru_tags", "image", "preview", "sample", "other";
  * a group: "page" (both post lists), "tag" (both tag APIs), "api" (any API call),
    "download" (image, preview, sample);
  * "any".
Entries: an int status (429 and 503 carry ``Retry-After``; 200 means "serve normally"),
"truncate" (full Content-Length, half the body, then the connection closes), "drop" (close without
answering), or a ``Fault(...)`` for delays, custom bodies and truncation points.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import re
import socket
import struct
import threading
import time
import traceback
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)

# Tag categories, same ints on both sites.
GENERAL, ARTIST, COPYRIGHT, CHARACTER, META = 0, 1, 3, 4, 5
CATEGORY_FIELDS = {
    GENERAL: "general",
    ARTIST: "artist",
    COPYRIGHT: "copyright",
    CHARACTER: "character",
    META: "meta",
}
GELBOORU_RATING = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}
_RATING_ALIASES = {
    "g": "g", "general": "g",
    "s": "s", "sensitive": "s", "safe": "s",
    "q": "q", "questionable": "q",
    "e": "e", "explicit": "e",
}
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "zip": "application/zip",
    "swf": "application/x-shockwave-flash",
}
IMAGE_EXTS = {"png", "jpg", "jpeg", "gif", "webp"}
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP"}
# Metatags we evaluate; others in _IGNORED_METATAGS are accepted and ignored. Any other
# "prefix:rest" is an ordinary tag (":3", "re:zero_..." are real tags).
_METATAGS = {"rating", "score", "id", "md5", "width", "height"}
_IGNORED_METATAGS = {
    "order", "sort", "status", "limit", "user", "fav", "pool", "parent", "source", "date", "age",
    "filetype", "is", "has", "search", "ordfav", "random", "approver", "commenter", "noter",
}
KIND_GROUP = {
    "danbooru_posts": "page",
    "gelbooru_posts": "page",
    "danbooru_tags": "tag",
    "gelbooru_tags": "tag",
    "image": "download",
    "preview": "download",
    "sample": "download",
}
API_KINDS = {"danbooru_posts", "danbooru_post", "danbooru_counts", "danbooru_tags", "gelbooru_posts", "gelbooru_tags"}


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT = _Omit()  # in FakePost.extra / danbooru_extra / gelbooru_extra: drop that key from the JSON


def is_browser_ua(user_agent: str | None) -> bool:
    return bool(user_agent) and "Mozilla/5.0" in user_agent


# --------------------------------------------------------------------------- media bytes


def _base_picture(seed: int, width: int, height: int) -> np.ndarray:
    """A picture with structure (gradient + shapes), perceptually different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (x / max(width, 1)) * np.cos(angle) + (y / max(height, 1)) * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.integers(0, 256, (2, 3)).astype(np.float32)
    img = c0 * (1 - t)[..., None] + c1 * t[..., None]
    for _ in range(int(rng.integers(4, 9))):
        color = rng.integers(0, 256, 3).astype(np.float32)
        if rng.random() < 0.5:
            x0, x1 = sorted(rng.integers(0, width, 2))
            y0, y1 = sorted(rng.integers(0, height, 2))
            img[y0 : y1 + 1, x0 : x1 + 1] = color
        else:
            cx, cy = rng.integers(0, width), rng.integers(0, height)
            r = rng.integers(max(min(width, height) // 10, 2), max(min(width, height) // 3, 3))
            img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = color
    return img.clip(0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, ext: str) -> bytes:
    out = io.BytesIO()
    img = Image.fromarray(arr, "RGB")
    fmt = _PIL_FORMAT[ext]
    if fmt == "JPEG":
        img.save(out, fmt, quality=90)
    elif fmt == "WEBP":
        img.save(out, fmt, quality=90)
    elif fmt == "GIF":
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(out, fmt)
    else:
        img.save(out, fmt)
    return out.getvalue()


def _noisy(arr: np.ndarray, amp: int, seed: int) -> np.ndarray:
    if amp <= 0:
        return arr
    noise = np.random.default_rng(seed + 7919).integers(-amp, amp + 1, arr.shape, dtype=np.int16)
    return (arr.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)


_AMP_CACHE: dict[tuple, tuple[int, tuple[int, int]]] = {}
_AMP_LOCK = threading.Lock()


def _calibrate(size: tuple[int, int], ext: str, payload_kb: float) -> tuple[int, tuple[int, int]]:
    """Noise amplitude (and canvas size) that makes an image of about payload_kb KiB."""
    key = (size, ext, payload_kb)
    with _AMP_LOCK:
        if key in _AMP_CACHE:
            return _AMP_CACHE[key]
    target = payload_kb * 1024
    w, h = size
    for _ in range(6):
        base = _base_picture(12345, w, h)
        if len(_encode(_noisy(base, 128, 1), ext)) >= target * 0.95:
            break
        scale = (target / max(len(_encode(_noisy(base, 128, 1), ext)), 1)) ** 0.5 * 1.1
        w, h = int(w * scale) + 1, int(h * scale) + 1
    lo, hi = 0, 128
    for _ in range(8):
        mid = (lo + hi) // 2
        if len(_encode(_noisy(base, mid, 1), ext)) < target:
            lo = mid + 1
        else:
            hi = mid
    result = (hi, (w, h))
    with _AMP_LOCK:
        _AMP_CACHE[key] = result
    return result


def render_image(
    seed: int, size: tuple[int, int] = (320, 240), ext: str = "png", payload_kb: float | None = None
) -> tuple[bytes, tuple[int, int]]:
    """Encoded image bytes (png/jpg/gif/webp) and its (width, height).

    payload_kb: add noise (and grow the canvas if needed) so the file is about that many KiB.
    """
    ext = ext.lower()
    w, h = size
    amp = 0
    if payload_kb:
        amp, (w, h) = _calibrate((w, h), ext, float(payload_kb))
    arr = _noisy(_base_picture(seed, w, h), amp, seed)
    return _encode(arr, ext), (w, h)


def fake_media(ext: str, seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """Plausible bytes for non-image posts: mp4/webm headers, an ugoira zip of jpg frames, an swf header."""
    rng = np.random.default_rng(seed)
    pad = rng.bytes(4096)
    if ext == "mp4":
        ftyp = b"ftypisom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41"
        return struct.pack(">I", len(ftyp) + 4) + ftyp + struct.pack(">I", len(pad) + 8) + b"free" + pad
    if ext == "webm":
        return b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm" + pad
    if ext == "swf":
        body = bytes([10]) + pad
        return b"FWS" + body[:1] + struct.pack("<I", len(body) + 7) + body[1:]
    if ext == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for k in range(3):
                frame, _ = render_image(seed * 10 + k, (max(size[0] // 2, 8), max(size[1] // 2, 8)), "jpg")
                zf.writestr(f"{k:06d}.jpg", frame)
        return buf.getvalue()
    raise ValueError(f"no fake media for extension {ext!r}")


# --------------------------------------------------------------------------- posts


@dataclass
class FakePost:
    """One post. Mutate freely before starting the server (or call FakeBooru.add_posts after)."""

    id: int
    data: bytes  # the real file; md5 is computed from it
    file_ext: str = "png"
    width: int = 0
    height: int = 0
    general: list[str] = field(default_factory=list)
    character: list[str] = field(default_factory=list)
    copyright: list[str] = field(default_factory=list)
    artist: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    rating: str = "g"  # Danbooru letter g/s/q/e (Gelbooru gets general/sensitive/questionable/explicit)
    score: int = 0
    source: str = ""
    created_at: datetime | None = None  # default: derived from id
    md5: str = ""  # default: md5(data)
    # Danbooru omits md5/file_url/large_file_url/preview_file_url (banned / gold-only posts);
    # Gelbooru gets file_url/sample_url/preview_url "".
    restricted: bool = False
    is_deleted: bool = False
    is_banned: bool = False
    served_data: bytes | None = None  # bytes actually served instead of data (corrupt download)
    # None: {base}/data/<md5>.<ext>. Any string is emitted verbatim, with "{base}" replaced by the
    # server's base_url; if it points at our host, the file is served at that path.
    file_url: str | None = None
    redirect_to: str | None = None  # our file path answers 302 to this ("{base}" replaced)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into both JSON shapes (OMIT drops)
    danbooru_extra: dict[str, Any] = field(default_factory=dict)
    gelbooru_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.file_ext = self.file_ext.lower()
        if not self.md5:
            self.md5 = hashlib.md5(self.data).hexdigest()
        if self.created_at is None:
            tz = timezone(timedelta(hours=-5))
            self.created_at = datetime(2024, 1, 1, tzinfo=tz) + timedelta(hours=self.id % 100_000, seconds=self.id % 61)
        if self.rating not in GELBOORU_RATING:
            self.rating = _RATING_ALIASES[self.rating]

    @property
    def tags(self) -> list[str]:
        """All tags, sorted, like tag_string."""
        return sorted({*self.general, *self.character, *self.copyright, *self.artist, *self.meta})

    @property
    def tag_string(self) -> str:
        return " ".join(self.tags)

    def tags_by_category(self) -> dict[int, list[str]]:
        return {cat: sorted(set(getattr(self, name))) for cat, name in CATEGORY_FIELDS.items()}

    @property
    def body(self) -> bytes:
        """What the server sends for the original file."""
        return self.data if self.served_data is None else self.served_data


def _pick(value: Any, i: int) -> Any:
    return value(i) if callable(value) else value


def make_post(
    post_id: int,
    *,
    seed: int | None = None,
    size: tuple[int, int] = (320, 240),
    file_ext: str = "png",
    payload_kb: float | None = None,
    **fields: Any,
) -> FakePost:
    """One post with real bytes for file_ext (png/jpg/gif/webp images; mp4/webm/zip/swf fakes)."""
    seed = post_id if seed is None else seed
    ext = file_ext.lower()
    if ext in IMAGE_EXTS:
        data, (w, h) = render_image(seed, size, ext, payload_kb)
    else:
        data, (w, h) = fake_media(ext, seed, size), size
    fields.setdefault("width", w)
    fields.setdefault("height", h)
    return FakePost(id=post_id, data=data, file_ext=ext, **fields)


def make_posts(
    n: int,
    seed: int = 0,
    size: tuple[int, int] | Callable[[int], tuple[int, int]] = (320, 240),
    *,
    start_id: int = 1001,
    file_ext: str | Callable[[int], str] = "png",
    payload_kb: float | None = None,
    **overrides: Any,
) -> list[FakePost]:
    """n posts with ids start_id.. start_id+n-1, distinct images (seed + i) and default tags.

    Every override (and size / file_ext) may be a value or a callable of the index i, e.g.
    rating=lambda i: "gsqe"[i % 4]. Default tags: general ["1girl", "solo", "smile"|"long_hair",
    f"tag_{i % 5}"], character ["test_character"], copyright ["test_series"], artist ["test_artist"],
    meta ["highres"] for even i; rating "g"; score i.
    """
    posts = []
    for i in range(n):
        fields: dict[str, Any] = {
            "general": ["1girl", "solo", "smile" if i % 2 else "long_hair", f"tag_{i % 5}"],
            "character": ["test_character"],
            "copyright": ["test_series"],
            "artist": ["test_artist"],
            "meta": ["highres"] if i % 2 == 0 else [],
            "score": i,
            "source": f"https://www.pixiv.net/artworks/{100000 + seed * 1000 + i}",
        }
        fields.update({k: _pick(v, i) for k, v in overrides.items()})
        posts.append(
            make_post(
                start_id + i,
                seed=seed * 100_003 + i,
                size=_pick(size, i),
                file_ext=_pick(file_ext, i),
                payload_kb=payload_kb,
                **fields,
            )
        )
    return posts


HOSTILE_URLS = {
    "foreign": "http://evil.example.invalid/x.png",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "file_scheme": "file:///etc/passwd",
}
ODD_TAGS = ["yoshida_(kyouko)", ":3", "^_^", "café_(place)", "hands_on_another's_head", ":<", "c++", "k-on!", "rock&roll", "\"quotes\"", "ä_ö_ü", "星"]


def special_posts(start_id: int = 9001, seed: int = 9) -> dict[str, FakePost]:
    """The awkward cases, by name, ids start_id.. in this order:

    deleted (restricted: no md5/file_url in Danbooru), corrupt (served bytes != md5), mp4, ugoira (zip),
    swf, odd_tags (parentheses, unicode, punctuation, HTML-special chars), foreign / metadata /
    file_scheme (file_url on another host, the cloud metadata address, file:///etc/passwd),
    redirect (our file_url answers 302 to a foreign host), webp, gif, big (1200x900, has a sample).
    """
    names = ["deleted", "corrupt", "mp4", "ugoira", "swf", "odd_tags", "foreign", "metadata",
             "file_scheme", "redirect", "webp", "gif", "big"]
    ids = {name: start_id + k for k, name in enumerate(names)}
    common = {"character": ["special_character"], "copyright": ["test_series"], "artist": ["test_artist"]}

    def post(name: str, **kw: Any) -> FakePost:
        kw.setdefault("general", ["1girl", "special", name])
        for k, v in common.items():
            kw.setdefault(k, list(v))
        return make_post(ids[name], seed=seed * 1000 + ids[name], **kw)

    out = {
        "deleted": post("deleted", restricted=True, is_deleted=True, is_banned=True),
        "corrupt": post("corrupt"),
        "mp4": post("mp4", file_ext="mp4", meta=["video", "animated", "sound"]),
        "ugoira": post("ugoira", file_ext="zip", meta=["ugoira", "animated"]),
        "swf": post("swf", file_ext="swf", meta=["flash", "animated"]),
        "odd_tags": post("odd_tags", general=["1girl", "special", "odd_tags", *ODD_TAGS[1:3], *ODD_TAGS[4:]],
                         character=["yoshida_(kyouko)"], copyright=["café_(place)"]),
        "foreign": post("foreign", file_url=HOSTILE_URLS["foreign"]),
        "metadata": post("metadata", file_url=HOSTILE_URLS["metadata"]),
        "file_scheme": post("file_scheme", file_url=HOSTILE_URLS["file_scheme"]),
        "redirect": post("redirect", redirect_to=HOSTILE_URLS["foreign"]),
        "webp": post("webp", file_ext="webp"),
        "gif": post("gif", file_ext="gif"),
        "big": post("big", size=(1200, 900), file_ext="jpg"),
    }
    corrupt = out["corrupt"]
    corrupt.served_data = corrupt.data[: len(corrupt.data) // 2] + bytes(len(corrupt.data) - len(corrupt.data) // 2)
    return out


# --------------------------------------------------------------------------- faults & records


@dataclass
class Fault:
    """One injected misbehaviour.

    status: HTTP status to answer (200 = serve the real response, possibly delayed/truncated).
    retry_after: Retry-After header (default: 1 for 429/503, else none).
    delay: seconds to sleep before answering.
    truncate: for a 200/206 answer (a download, or an API page: broken JSON), send the full
        Content-Length but only this many bytes (an int) or this fraction of the body (a float
        in [0, 1)), then close the connection.
    drop: close the connection without any response.
    """

    status: int = 500
    retry_after: str | int | None = None
    delay: float = 0.0
    truncate: float | int | None = None
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    @classmethod
    def of(cls, entry: int | str | Fault) -> Fault:
        if isinstance(entry, Fault):
            return entry
        if isinstance(entry, int):
            return cls(status=entry)
        if entry == "truncate":
            return cls(status=200, truncate=0.5)
        if entry == "drop":
            return cls(drop=True)
        if entry in ("ok", "pass"):
            return cls(status=200)
        raise ValueError(f"unknown fault entry {entry!r}")

    def describe(self) -> str:
        if self.drop:
            return "drop"
        if self.truncate is not None:
            return "truncate"
        return str(self.status) if self.status != 200 else ("delay" if self.delay else "ok")


class RequestLine(NamedTuple):
    method: str
    path: str
    query: dict[str, str]


@dataclass
class Record:
    """Everything about one request, in booru.log."""

    method: str
    path: str
    query: dict[str, str]  # last value of each parameter
    raw_query: str
    kind: str
    user_agent: str | None
    headers: dict[str, str]
    auth: dict[str, str]  # login / api_key / user_id from the query, basic_user / basic_password
    post_id: int | None = None
    status: int | None = None  # None: dropped without answer
    fault: str | None = None  # describe() of the injected fault, if any
    bytes_sent: int = 0
    complete: bool = False  # the whole body went out


SCENARIOS = ("clean", "rate_limited", "flaky", "crashy")


def scenario_faults(scenario: str | None, posts: Iterable[FakePost]) -> dict[Any, list]:
    """Faults for a named scenario; combine names with '+', e.g. "rate_limited+crashy".

    clean: none. rate_limited: the first request of each API kind gets 429 (Retry-After: 1).
    flaky: each API kind answers 500 twice, each post's file 500 once. crashy: each post's first
    download is truncated mid-body.
    """
    faults: dict[Any, list] = {}
    posts = list(posts)
    for name in (scenario or "clean").split("+"):
        name = name.strip()
        if name == "clean":
            continue
        if name == "rate_limited":
            for kind in ("danbooru_posts", "gelbooru_posts", "danbooru_tags", "gelbooru_tags"):
                faults.setdefault(kind, []).append(429)
        elif name == "flaky":
            for kind in ("danbooru_posts", "gelbooru_posts", "danbooru_tags", "gelbooru_tags"):
                faults.setdefault(kind, []).extend([500, 500])
            for p in posts:
                faults.setdefault(p.id, []).append(500)
        elif name == "crashy":
            for p in posts:
                faults.setdefault(p.id, []).append("truncate")
        else:
            raise ValueError(f"unknown scenario {name!r}; known: {SCENARIOS}")
    return faults


# --------------------------------------------------------------------------- the server


def _php_escape(s: str) -> str:
    """PHP htmlspecialchars(ENT_QUOTES), as Gelbooru applies to tags in its API output."""
    return s.replace("&", "&amp;").replace('"', "&quot;").replace("'", "&#039;").replace("<", "&lt;").replace(">", "&gt;")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _compare(spec: str, value: int) -> bool:
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", spec)
    if m:
        return int(m[1]) <= value <= int(m[2])
    m = re.fullmatch(r"(>=|<=|>|<)?(-?\d+)", spec)
    if not m:
        return True  # unparseable: ignore, like a lenient booru
    n = int(m[2])
    return {">=": value >= n, "<=": value <= n, ">": value > n, "<": value < n, None: value == n}[m[1]]


def _tag_id(name: str) -> int:
    return int(hashlib.md5(name.encode("utf-8")).hexdigest()[:7], 16)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    booru: FakeBooru

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        self.booru._error(traceback.format_exc())


class FakeBooru:
    """Danbooru + Gelbooru + file CDN on one local port. Use as a context manager.

    posts: FakePost objects (ids must be unique).
    scenario: a name from SCENARIOS (combine with '+'), expanded with scenario_faults().
    faults: {key: [entries]} (see the module docstring); merged over the scenario's, key by key.
    require_browser_ua: families that answer 403 unless the User-Agent contains "Mozilla/5.0":
        any of "danbooru" (its API), "gelbooru" (its API), "files" (downloads); True = all, False = none.
    require_auth: False; True = API calls need credentials (Danbooru: login+api_key query params or
        HTTP basic; Gelbooru: api_key+user_id); a (user, key) tuple = they must equal these. 401 otherwise.
    latency: seconds added to every request. bandwidth_kbps: throttle bodies (KiB/s per connection).
    gelbooru_escape_tags: Gelbooru's API HTML-escapes tags (hands_on_another&#039;s_head, :&lt;); True by default.
    max_tags: Danbooru's "cannot search for more than N tags" (422); None = unlimited.
    extra_tags: {name: category} known to the tag APIs even if no post has them (post_count 0).
    """

    def __init__(
        self,
        posts: Iterable[FakePost] = (),
        *,
        scenario: str | None = None,
        faults: Mapping[Any, Iterable[int | str | Fault]] | None = None,
        require_browser_ua: bool | Iterable[str] = ("danbooru",),
        require_auth: bool | tuple[str, str] = False,
        latency: float = 0.0,
        bandwidth_kbps: float | None = None,
        gelbooru_escape_tags: bool = True,
        max_tags: int | None = None,
        extra_tags: Mapping[str, int] | None = None,
        retry_after: str | int = 1,
    ) -> None:
        self.posts: dict[int, FakePost] = {}
        self._lock = threading.RLock()
        self._files: dict[str, tuple[str, FakePost]] = {}
        self._derived: dict[str, bytes] = {}
        self._faults: dict[Any, deque[Fault]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.base_url = ""
        if require_browser_ua is True:
            require_browser_ua = ("danbooru", "gelbooru", "files")
        elif require_browser_ua is False:
            require_browser_ua = ()
        self.require_browser_ua = set(require_browser_ua)
        self.require_auth = require_auth
        self.latency = latency
        self.bandwidth_kbps = bandwidth_kbps
        self.gelbooru_escape_tags = gelbooru_escape_tags
        self.max_tags = max_tags
        self.extra_tags = dict(extra_tags or {})
        self.retry_after = retry_after
        self.errors: list[str] = []
        self.reset_counts()
        self.add_posts(posts)
        merged = scenario_faults(scenario, self.posts.values())
        merged.update({k: list(v) for k, v in (faults or {}).items()})
        for key, entries in merged.items():
            self.add_fault(key, *entries)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeBooru:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.booru = self
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        self._rebuild_files()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-booru", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # idle keep-alive connections would otherwise linger
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeBooru:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- configuration

    @property
    def gelbooru_url(self) -> str:
        return self.base_url + "/index.php"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add_posts(self, posts: Iterable[FakePost]) -> None:
        with self._lock:
            for post in posts:
                if post.id in self.posts:
                    raise ValueError(f"duplicate post id {post.id}")
                self.posts[post.id] = post
            self._rebuild_files()

    def add_fault(self, key: Any, *entries: int | str | Fault) -> None:
        """Queue faults for a key (appends to any already queued)."""
        with self._lock:
            self._faults.setdefault(key, deque()).extend(Fault.of(e) for e in entries)

    def pending_faults(self) -> dict[Any, int]:
        with self._lock:
            return {k: len(q) for k, q in self._faults.items() if q}

    def reset_counts(self) -> None:
        """Forget requests and counters (posts and pending faults stay)."""
        with getattr(self, "_lock", threading.RLock()):
            self.counts: Counter[str] = Counter()
            self.requests: list[RequestLine] = []
            self.log: list[Record] = []
            self.attempts: Counter[int] = Counter()  # original-file requests per post id, any outcome
            self.downloads: Counter[int] = Counter()  # original files fully sent (200/206) per post id

    @property
    def user_agents(self) -> list[str | None]:
        return [r.user_agent for r in self.log]

    # ----------------------------------------------------------------- URLs

    def _resolve(self, url: str) -> str:
        return url.replace("{base}", self.base_url)

    def file_path(self, post: FakePost) -> str:
        return f"/data/{post.md5}.{post.file_ext}"

    def file_url(self, post: FakePost) -> str:
        return self._resolve(post.file_url) if post.file_url is not None else self.base_url + self.file_path(post)

    def preview_url(self, post: FakePost) -> str:
        return f"{self.base_url}/data/preview/{post.md5}.jpg"

    def sample_url(self, post: FakePost) -> str | None:
        if post.file_ext == "zip":
            return f"{self.base_url}/data/sample/sample-{post.md5}.webm"
        if post.file_ext in IMAGE_EXTS and post.width > 850:
            return f"{self.base_url}/data/sample/sample-{post.md5}.jpg"
        return None

    def _rebuild_files(self) -> None:
        with self._lock:
            files: dict[str, tuple[str, FakePost]] = {}
            for post in self.posts.values():
                files.setdefault(f"/data/preview/{post.md5}.jpg", ("preview", post))
                sample = self.sample_url(post)
                if sample:
                    files.setdefault(urlsplit(sample).path, ("sample", post))
                files.setdefault(self.file_path(post), ("image", post))
                if post.file_url is not None and self.base_url:
                    parts = urlsplit(self._resolve(post.file_url))
                    if f"{parts.scheme}://{parts.netloc}" == self.base_url:
                        files[parts.path] = ("image", post)
            self._files = files

    # ----------------------------------------------------------------- JSON shapes

    def danbooru_json(self, post: FakePost) -> dict[str, Any]:
        cats = post.tags_by_category()
        created = post.created_at.isoformat(timespec="milliseconds")
        file_url = self.file_url(post)
        sample = self.sample_url(post) if post.file_url is None else None
        preview = self.preview_url(post) if post.file_url is None else file_url
        d: dict[str, Any] = {
            "id": post.id,
            "created_at": created,
            "uploader_id": 1,
            "score": post.score,
            "source": post.source,
            "md5": post.md5,
            "last_comment_bumped_at": None,
            "rating": post.rating,
            "image_width": post.width,
            "image_height": post.height,
            "tag_string": post.tag_string,
            "fav_count": max(post.score, 0),
            "file_ext": post.file_ext,
            "last_noted_at": None,
            "parent_id": None,
            "has_children": False,
            "approver_id": None,
            "tag_count_general": len(cats[GENERAL]),
            "tag_count_artist": len(cats[ARTIST]),
            "tag_count_character": len(cats[CHARACTER]),
            "tag_count_copyright": len(cats[COPYRIGHT]),
            "file_size": len(post.data),
            "up_score": max(post.score, 0),
            "down_score": min(post.score, 0),
            "is_pending": False,
            "is_flagged": False,
            "is_deleted": post.is_deleted,
            "tag_count": len(post.tags),
            "updated_at": created,
            "is_banned": post.is_banned,
            "pixiv_id": None,
            "last_commented_at": None,
            "has_active_children": False,
            "bit_flags": 0,
            "tag_count_meta": len(cats[META]),
            "has_large": sample is not None,
            "has_visible_children": False,
            "media_asset": {
                "id": post.id + 5_000_000,
                "created_at": created,
                "updated_at": created,
                "md5": post.md5,
                "file_ext": post.file_ext,
                "file_size": len(post.data),
                "image_width": post.width,
                "image_height": post.height,
                "duration": 2.0 if post.file_ext in ("mp4", "webm", "zip") else None,
                "status": "active",
                "file_key": hashlib.sha1(post.md5.encode()).hexdigest()[:9],
                "is_public": True,
                "pixel_hash": post.md5,
                "variants": [
                    {"type": "180x180", "url": preview, "width": 180, "height": 180, "file_ext": "jpg"},
                    {"type": "original", "url": file_url, "width": post.width, "height": post.height,
                     "file_ext": post.file_ext},
                ],
            },
            "tag_string_general": " ".join(cats[GENERAL]),
            "tag_string_character": " ".join(cats[CHARACTER]),
            "tag_string_copyright": " ".join(cats[COPYRIGHT]),
            "tag_string_artist": " ".join(cats[ARTIST]),
            "tag_string_meta": " ".join(cats[META]),
            "file_url": file_url,
            "large_file_url": sample or file_url,
            "preview_file_url": preview,
        }
        if post.restricted:
            for key in ("md5", "file_url", "large_file_url", "preview_file_url"):
                d.pop(key)
            d["media_asset"].pop("md5")
            d["media_asset"]["variants"] = []
        return self._apply_extra(d, post.extra, post.danbooru_extra)

    def gelbooru_json(self, post: FakePost) -> dict[str, Any]:
        file_url = self.file_url(post)
        sample = self.sample_url(post) if post.file_url is None and post.file_ext in IMAGE_EXTS else None
        preview = self.preview_url(post) if post.file_url is None else file_url
        tags = post.tags
        if self.gelbooru_escape_tags:
            tags = [_php_escape(t) for t in tags]
        pw, ph = self._thumb_size(post, 250)
        d: dict[str, Any] = {
            "id": post.id,
            "created_at": post.created_at.strftime("%a %b %d %H:%M:%S %z %Y"),
            "score": post.score,
            "width": post.width,
            "height": post.height,
            "md5": post.md5,
            "directory": f"{post.md5[:2]}/{post.md5[2:4]}",
            "image": f"{post.md5}.{post.file_ext}",
            "rating": GELBOORU_RATING[post.rating],
            "source": post.source,
            "change": int(post.created_at.timestamp()),
            "owner": "danbooru",
            "creator_id": 6498,
            "parent_id": 0,
            "sample": 1 if sample else 0,
            "preview_height": ph,
            "preview_width": pw,
            "tags": " ".join(tags),
            "title": "",
            "has_notes": "false",
            "has_comments": "false",
            "file_url": file_url,
            "preview_url": preview,
            "sample_url": sample or "",
            "sample_height": round(post.height * 850 / post.width) if sample else 0,
            "sample_width": 850 if sample else 0,
            "status": "deleted" if post.is_deleted else "active",
            "post_locked": 0,
            "has_children": "false",
        }
        if post.restricted:
            d.update(file_url="", preview_url="", sample_url="")
        return self._apply_extra(d, post.extra, post.gelbooru_extra)

    def _apply_extra(self, d: dict[str, Any], *extras: Mapping[str, Any]) -> dict[str, Any]:
        for extra in extras:
            for key, value in extra.items():
                if value is OMIT:
                    d.pop(key, None)
                else:
                    d[key] = self._resolve(value) if isinstance(value, str) else value
        return d

    @staticmethod
    def _thumb_size(post: FakePost, box: int) -> tuple[int, int]:
        w, h = max(post.width, 1), max(post.height, 1)
        s = min(box / w, box / h, 1.0)
        return max(round(w * s), 1), max(round(h * s), 1)

    def tag_table(self) -> dict[str, tuple[int, int]]:
        """name -> (category, post_count) over all posts (first category seen wins) and extra_tags."""
        table: dict[str, list[int]] = {name: [cat, 0] for name, cat in self.extra_tags.items()}
        for post in self.posts.values():
            seen: set[str] = set()
            for cat, names in post.tags_by_category().items():
                for name in names:
                    entry = table.setdefault(name, [cat, 0])
                    if name not in seen:
                        entry[1] += 1
                        seen.add(name)
        return {k: (v[0], v[1]) for k, v in table.items()}

    # ----------------------------------------------------------------- search

    def search(self, tags: str) -> list[FakePost]:
        """Posts matching a tag query, newest (highest id) first.

        Plain tags must all be present, "-tag" absent, "~a ~b" at least one, "*" wildcards work;
        rating:g / rating:g,s / -rating:e (letters or full names), score:>N (>=, <, <=, N, A..B),
        id:, width:, height:, md5: are evaluated; order:/sort:/status: etc. are ignored.
        """
        must, must_not, any_of, metas = [], [], [], []
        for term in tags.split():
            neg = term.startswith("-") and len(term) > 1
            tilde = term.startswith("~") and len(term) > 1
            if neg or tilde:
                term = term[1:]
            prefix, sep, rest = term.partition(":")
            if sep and prefix.lower() in _IGNORED_METATAGS:
                continue
            if sep and prefix.lower() in _METATAGS:
                metas.append((neg, prefix.lower(), rest.lower()))
                continue
            term = term.lower()
            (must_not if neg else any_of if tilde else must).append(term)

        def has(post_tags: set[str], pattern: str) -> bool:
            if "*" in pattern:
                return any(fnmatch.fnmatchcase(t, pattern) for t in post_tags)
            return pattern in post_tags

        def meta_ok(post: FakePost, name: str, value: str) -> bool:
            if name == "rating":
                return post.rating in {_RATING_ALIASES.get(v, v) for v in value.split(",")}
            if name == "md5":
                return post.md5 == value
            return _compare(value, {"score": post.score, "id": post.id, "width": post.width,
                                    "height": post.height}[name])

        out = []
        for post in sorted(self.posts.values(), key=lambda p: p.id, reverse=True):
            pt = set(post.tags)
            if not all(has(pt, t) for t in must):
                continue
            if any(has(pt, t) for t in must_not):
                continue
            if any_of and not any(has(pt, t) for t in any_of):
                continue
            if not all(meta_ok(post, name, value) != neg for neg, name, value in metas):
                continue
            out.append(post)
        return out

    @staticmethod
    def plain_tag_count(tags: str) -> int:
        """Search terms that are not metatags (what Danbooru's tag limit counts)."""
        count = 0
        for term in tags.split():
            prefix, sep, _ = term.lstrip("-~").partition(":")
            if not (sep and prefix.lower() in _METATAGS | _IGNORED_METATAGS):
                count += 1
        return count

    # ----------------------------------------------------------------- bookkeeping

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def _take_fault(self, rec: Record) -> Fault | None:
        keys: list[Any] = []
        if rec.kind == "image" and rec.post_id is not None:
            keys.append(rec.post_id)
        with self._lock:
            for key in self._faults:
                if isinstance(key, str) and key.startswith("/") and "?" in key:
                    path, _, q = key.partition("?")
                    want = {k: v[-1] for k, v in parse_qs(q, keep_blank_values=True).items()}
                    if path == rec.path and all(rec.query.get(k) == v for k, v in want.items()):
                        keys.append(key)
            keys += [rec.path, rec.kind, KIND_GROUP.get(rec.kind)]
            if rec.kind in API_KINDS:
                keys.append("api")
            keys.append("any")
            for key in keys:
                queue = self._faults.get(key)
                if queue:
                    return queue.popleft()
        return None

    def _file_body(self, kind: str, post: FakePost) -> tuple[bytes, str]:
        if kind == "image":
            return post.body, CONTENT_TYPES.get(post.file_ext, "application/octet-stream")
        key = f"{kind}:{post.id}"
        with self._lock:
            cached = self._derived.get(key)
        if cached is None:
            if kind == "sample" and post.file_ext == "zip":
                cached = fake_media("webm", post.id)
            else:
                if post.file_ext in IMAGE_EXTS:
                    img = Image.open(io.BytesIO(post.data)).convert("RGB")
                else:
                    img = Image.new("RGB", (post.width or 64, post.height or 64), (90, 90, 90))
                if kind == "preview":
                    img.thumbnail((180, 180))
                else:
                    img = img.resize((850, max(round(img.height * 850 / img.width), 1)))
                out = io.BytesIO()
                img.save(out, "JPEG", quality=85)
                cached = out.getvalue()
            with self._lock:
                self._derived[key] = cached
        ctype = "video/webm" if kind == "sample" and post.file_ext == "zip" else "image/jpeg"
        return cached, ctype


# --------------------------------------------------------------------------- the handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    timeout = 15  # idle keep-alive connections give up after this
    server: _Server
    rec: Record
    _truncate: float | int | None = None

    # --- quiet, robust plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.booru._lock:
            self.server.booru._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        with self.server.booru._lock:
            self.server.booru._conns.discard(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError):
            pass

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        self._drain()
        self._dispatch(head=False)

    def _drain(self) -> None:
        length = _int(self.headers.get("Content-Length"), 0)
        if length:
            self.rfile.read(length)

    # --- dispatch

    def _dispatch(self, head: bool) -> None:
        booru = self.server.booru
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        kind, post = self._classify(parts.path, query)
        auth = {k: query[k] for k in ("login", "api_key", "user_id") if k in query}
        basic = self.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(basic[6:].strip()).decode("utf-8").partition(":")
                auth.update(basic_user=user, basic_password=pw)
            except Exception:  # noqa: BLE001
                auth["basic_invalid"] = basic
        self._truncate = None
        self.rec = rec = Record(
            method=self.command,
            path=parts.path,
            query=query,
            raw_query=parts.query,
            kind=kind,
            user_agent=self.headers.get("User-Agent"),
            headers=dict(self.headers.items()),
            auth=auth,
            post_id=post.id if post is not None else None,
        )
        with booru._lock:
            booru.log.append(rec)
            booru.requests.append(RequestLine(rec.method, rec.path, rec.query))
            booru.counts[kind] += 1
            booru.counts["total"] += 1
            if kind in KIND_GROUP:
                booru.counts[KIND_GROUP[kind]] += 1
            if kind == "image" and post is not None:
                booru.attempts[post.id] += 1
        try:
            if booru.latency:
                time.sleep(booru.latency)
            self._answer(kind, post, head)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a bug in the fake: record it and answer 500
            booru._error(traceback.format_exc())
            self.close_connection = True
            if rec.status is None:
                try:
                    self._send(500, b"fake booru crashed", "text/plain")
                except OSError:
                    pass

    def _classify(self, path: str, query: dict[str, str]) -> tuple[str, FakePost | None]:
        booru = self.server.booru
        if path == "/posts.json":
            return "danbooru_posts", None
        m = re.fullmatch(r"/posts/(\d+)\.json", path)
        if m:
            return "danbooru_post", booru.posts.get(int(m[1]))
        if path == "/tags.json":
            return "danbooru_tags", None
        if path == "/counts/posts.json":
            return "danbooru_counts", None
        if path == "/index.php" and query.get("page") == "dapi" and query.get("q") == "index":
            if query.get("s") == "post":
                return "gelbooru_posts", None
            if query.get("s") == "tag":
                return "gelbooru_tags", None
        with booru._lock:
            hit = booru._files.get(path)
        if hit:
            return hit
        return "other", None

    def _family(self, kind: str) -> str:
        if kind.startswith("danbooru"):
            return "danbooru"
        if kind.startswith("gelbooru"):
            return "gelbooru"
        return "files"

    def _answer(self, kind: str, post: FakePost | None, head: bool) -> None:
        booru = self.server.booru
        rec = self.rec
        family = self._family(kind)
        if family in booru.require_browser_ua and not is_browser_ua(rec.user_agent):
            booru.counts["rejected"] += 1
            body = (b"<!DOCTYPE html><html><head><title>Access denied</title></head><body>"
                    b"<h1>403 Forbidden</h1><p>Sorry, you have been blocked.</p></body></html>")
            return self._send(403, body, "text/html; charset=UTF-8", head=head)
        if kind in API_KINDS and booru.require_auth and not self._auth_ok(family):
            booru.counts["unauthorized"] += 1
            if family == "danbooru":
                return self._json(401, {"success": False, "error": "SessionLoader::AuthenticationFailure",
                                        "message": "AuthenticationFailure", "backtrace": []}, head)
            return self._send(401, b"Missing authentication. Go to api access credentials on your account settings "
                              b"page and copy the API key and user ID.", "text/plain", head=head)

        fault = booru._take_fault(rec)
        if fault is not None:
            rec.fault = fault.describe()
            booru.counts["faulted"] += 1
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self._hangup()
                return
            if fault.status != 200 or fault.body is not None:
                headers = dict(fault.headers)
                retry = fault.retry_after
                if retry is None and fault.status in (429, 503):
                    retry = booru.retry_after
                if retry is not None:
                    headers["Retry-After"] = str(retry)
                if fault.body is not None:
                    return self._send(fault.status, fault.body, headers.pop("Content-Type", "text/plain"), headers, head)
                if kind in API_KINDS:
                    msg = "Too many requests" if fault.status == 429 else "Internal server error"
                    return self._json(fault.status, {"success": False, "error": f"HTTP {fault.status}",
                                                     "message": msg}, head, headers)
                text = f"<html><body><h1>{fault.status}</h1></body></html>".encode()
                return self._send(fault.status, text, "text/html", headers, head)
            self._truncate = fault.truncate

        if kind == "danbooru_posts":
            return self._danbooru_posts(head)
        if kind == "danbooru_post":
            if post is None:
                return self._json(404, {"success": False, "error": "ActiveRecord::RecordNotFound",
                                        "message": "That record was not found."}, head)
            return self._json(200, booru.danbooru_json(post), head)
        if kind == "danbooru_counts":
            n = len(booru.search(self.rec.query.get("tags", "")))
            return self._json(200, {"counts": {"posts": n}}, head)
        if kind == "danbooru_tags":
            return self._danbooru_tags(head)
        if kind == "gelbooru_posts":
            return self._gelbooru_posts(head)
        if kind == "gelbooru_tags":
            return self._gelbooru_tags(head)
        if kind in ("image", "preview", "sample") and post is not None:
            return self._file(kind, post, head)
        booru.counts["not_found"] += 1
        return self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html", head=head)

    def _auth_ok(self, family: str) -> bool:
        auth, want = self.rec.auth, self.server.booru.require_auth
        if family == "danbooru":
            pairs = [(auth.get("login"), auth.get("api_key")), (auth.get("basic_user"), auth.get("basic_password"))]
        else:
            pairs = [(auth.get("user_id"), auth.get("api_key"))]
        if isinstance(want, tuple):
            return any(p == (str(want[0]), str(want[1])) for p in pairs)
        return any(a and b for a, b in pairs)

    # --- APIs

    def _danbooru_posts(self, head: bool) -> None:
        booru, q = self.server.booru, self.rec.query
        tags = q.get("tags", "")
        if booru.max_tags is not None and booru.plain_tag_count(tags) > booru.max_tags:
            return self._json(422, {"success": False, "error": "PostQuery::TagLimitError",
                                    "message": f"You cannot search for more than {booru.max_tags} tags at a time."}, head)
        limit = min(max(_int(q.get("limit"), 20), 1), 200)
        page = q.get("page", "1").strip()
        posts = booru.search(tags)
        m = re.fullmatch(r"([ab])(\d+)", page)
        if m:
            cursor = int(m[2])
            if m[1] == "b":
                chosen = [p for p in posts if p.id < cursor][:limit]
            else:
                chosen = [p for p in posts if p.id > cursor][-limit:]
        else:
            n = max(_int(page, 1), 1)
            if n > 1000:
                return self._json(410, {"success": False, "error": "PaginationExtension::PaginationError",
                                        "message": "You cannot go beyond page 1000. Try narrowing your search terms, "
                                                   "or upgrade your account to go beyond page 1000."}, head)
            chosen = posts[(n - 1) * limit : n * limit]
        return self._json(200, [booru.danbooru_json(p) for p in chosen], head)

    def _danbooru_tags(self, head: bool) -> None:
        booru, q = self.server.booru, self.rec.query
        table = booru.tag_table()
        names: list[str] | None = None
        if "search[name_comma]" in q:
            names = [n.strip().lower() for n in q["search[name_comma]"].split(",") if n.strip()]
        elif "search[name]" in q:
            names = [q["search[name]"].strip().lower()]
        elif "search[name_matches]" in q:
            names = [q["search[name_matches]"].strip().lower()]
        if names is None:
            matched = list(table)
        else:
            matched = [t for t in table if any(fnmatch.fnmatchcase(t, n) if "*" in n else t == n for n in names)]
        limit = min(max(_int(q.get("limit"), 20), 1), 1000)
        page = max(_int(q.get("page"), 1), 1)
        matched.sort(key=_tag_id, reverse=True)  # Danbooru's default order: id desc
        chosen = matched[(page - 1) * limit : page * limit]
        stamp = "2020-01-01T00:00:00.000-05:00"
        out = [{"id": _tag_id(n), "name": n, "post_count": table[n][1], "category": table[n][0],
                "created_at": stamp, "updated_at": stamp, "is_deprecated": False, "words": n.split("_")}
               for n in chosen]
        return self._json(200, out, head)

    def _gelbooru_posts(self, head: bool) -> None:
        booru, q = self.server.booru, self.rec.query
        posts = booru.search(q.get("tags", ""))
        if "id" in q:
            posts = [p for p in posts if str(p.id) == q["id"].strip()]
        limit = min(max(_int(q.get("limit"), 100), 1), 100)
        pid = max(_int(q.get("pid"), 0), 0)
        chosen = posts[pid * limit : (pid + 1) * limit]
        attrs = {"limit": limit, "offset": pid * limit, "count": len(posts)}
        items = [booru.gelbooru_json(p) for p in chosen]
        if q.get("json") == "1":
            doc: dict[str, Any] = {"@attributes": attrs}
            if items:
                doc["post"] = items
            return self._json(200, doc, head)
        root = ET.Element("posts", {k: str(v) for k, v in attrs.items()})
        for item in items:
            el = ET.SubElement(root, "post")
            for k, v in item.items():
                ET.SubElement(el, k).text = str(v)
        return self._xml(root, head)

    def _gelbooru_tags(self, head: bool) -> None:
        booru, q = self.server.booru, self.rec.query
        table = booru.tag_table()
        if "names" in q:  # space separated
            names = [n for n in dict.fromkeys(w.lower() for w in q["names"].split()) if n in table]
        elif "name" in q:
            names = [n for n in [q["name"].strip().lower()] if n in table]
        elif "name_pattern" in q:  # SQL LIKE: % any run, _ one character
            pat = q["name_pattern"].lower().replace("%", "*").replace("_", "?")
            names = [n for n in table if fnmatch.fnmatchcase(n, pat)]
        else:
            names = sorted(table, key=_tag_id, reverse=True)
        limit = min(max(_int(q.get("limit"), 100), 1), 1000)
        pid = max(_int(q.get("pid"), 0), 0)
        chosen = names[pid * limit : (pid + 1) * limit]
        esc = _php_escape if booru.gelbooru_escape_tags else (lambda s: s)
        items = [{"id": _tag_id(n), "name": esc(n), "count": table[n][1], "type": table[n][0], "ambiguous": 0}
                 for n in chosen]
        attrs = {"limit": limit, "offset": pid * limit, "count": len(names)}
        if q.get("json") == "1":
            doc: dict[str, Any] = {"@attributes": attrs}
            if items:
                doc["tag"] = items
            return self._json(200, doc, head)
        root = ET.Element("tags", {"type": "array", **{k: str(v) for k, v in attrs.items()}})
        for item in items:
            el = ET.SubElement(root, "tag")
            for k, v in item.items():
                ET.SubElement(el, k).text = str(v)
        return self._xml(root, head)

    # --- files

    def _file(self, kind: str, post: FakePost, head: bool) -> None:
        booru = self.server.booru
        if kind == "image" and post.redirect_to:
            location = booru._resolve(post.redirect_to)
            return self._send(302, b"", "text/html", {"Location": location}, head)
        body, ctype = booru._file_body(kind, post)
        etag = '"' + hashlib.md5(body).hexdigest() + '"'
        if self.headers.get("If-None-Match") == etag:
            return self._send(304, b"", ctype, {"ETag": etag}, head=True)
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "max-age=31536000",
                   "Last-Modified": post.created_at.strftime("%a, %d %b %Y %H:%M:%S GMT")}
        status, total = 200, len(body)
        rng = self.headers.get("Range", "")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if m and (m[1] or m[2]):
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), total - 1) if m[2] else total - 1
            else:
                start, end = max(total - int(m[2]), 0), total - 1
            if start >= total or start > end:
                return self._send(416, b"", ctype, {"Content-Range": f"bytes */{total}"}, head)
            body = body[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        self._send(status, body, ctype, headers, head)
        if kind == "image" and not head and self.rec.complete:
            with booru._lock:
                booru.downloads[post.id] += 1

    # --- writing

    def _json(self, status: int, obj: Any, head: bool, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", headers, head)

    def _xml(self, root: ET.Element, head: bool) -> None:
        body = b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="utf-8", xml_declaration=False)
        self._send(200, body, "text/xml; charset=utf-8", None, head)

    def _hangup(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        rec = self.rec
        rec.status = status
        truncate_at = None
        if self._truncate is not None and status in (200, 206):
            cut = self._truncate
            cut = int(len(body) * cut) if isinstance(cut, float) else int(cut)
            truncate_at = min(max(cut, 0), max(len(body) - 1, 0))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if head or status == 304:
            rec.complete = True
            return
        data = body if truncate_at is None else body[:truncate_at]
        rate = self.server.booru.bandwidth_kbps
        chunk = 64 * 1024
        for i in range(0, len(data), chunk):
            piece = data[i : i + chunk]
            self.wfile.write(piece)
            rec.bytes_sent += len(piece)
            if rate:
                self.wfile.flush()
                time.sleep(len(piece) / (rate * 1024))
        self.wfile.flush()
        if truncate_at is not None:
            self._hangup()
        else:
            rec.complete = True
