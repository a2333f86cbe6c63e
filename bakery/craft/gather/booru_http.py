"""A polite, robust HTTP client for booru APIs and their file CDNs.

- a browser-like User-Agent (Danbooru refuses others), timeouts;
- retries with exponential backoff and jitter on 429, 5xx and connection errors,
  honouring `Retry-After` (seconds or an HTTP date), capped at `max_backoff_s`;
- a request rate for API calls and another for downloads (thread-safe);
- paging (Danbooru: page 1 then `b<lowest id>` cursors; Gelbooru: `pid`);
- downloads streamed into a caller's sink, redirects followed only to allowed hosts.

Credentials go in an Authorization header (Danbooru) or query parameters
(Gelbooru's API only). They never appear in an error message: messages name the
URL without its query. No Prefect, no catalog: the scrape task wires this up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from bakery.craft.gather.booru import CATEGORIES, url_problem

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
TAG_BATCH = 100  # names per tag-API request

# httpx logs every request URL at INFO, query included (Gelbooru's api_key rides there).
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


class BooruError(RuntimeError):
    """The site could not be used (after retries); the message is safe to show and log."""


class DownloadSkipped(Exception):
    """This file is not taken; the message is the reason (recorded as a skip)."""


def redact(url: str) -> str:
    """A URL without its query (credentials ride there on Gelbooru)."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


@dataclass(frozen=True)
class ClientSettings:
    user_agent: str
    requests_per_second: float | None = 2.0
    downloads_per_second: float | None = 8.0
    timeout_s: float = 30.0
    retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    connections: int = 4
    proxy: str | None = None


class RateLimiter:
    """At most `rate` acquisitions per second, spaced evenly, shared by threads."""

    def __init__(self, rate: float | None, sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._sleep = sleep

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)  # api / download attempts
    retries: int = 0
    waits: list = field(default_factory=list)  # (reason, seconds) slept before a retry
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def waited(self, reason: str, seconds: float) -> None:
        with self._lock:
            self.retries += 1
            self.waits.append((reason, seconds))


class BooruClient:
    def __init__(
        self,
        kind: str,
        base_url: str,
        settings: ClientSettings,
        credentials: tuple[str, str] | None = None,
        file_hosts: list[str] | tuple[str, ...] = (),
        sleep: Callable[[float], None] = time.sleep,
    ):
        if kind not in ("danbooru", "gelbooru"):
            raise ValueError(f"unknown booru kind {kind!r}")
        self.kind, self.base_url, self.settings = kind, base_url.rstrip("/"), settings
        self.file_hosts = tuple(file_hosts)
        self._credentials = credentials
        self._sleep = sleep
        self._api_rate = RateLimiter(settings.requests_per_second, sleep)
        self._dl_rate = RateLimiter(settings.downloads_per_second, sleep)
        self.stats = Stats()
        limits = httpx.Limits(max_connections=settings.connections + 2, max_keepalive_connections=settings.connections + 2)
        self._http = httpx.Client(
            headers={"User-Agent": settings.user_agent, "Accept": "application/json, */*;q=0.5"},
            timeout=httpx.Timeout(settings.timeout_s, connect=min(settings.timeout_s, 10.0)),
            limits=limits,
            follow_redirects=False,  # redirects are checked against the allowed hosts first
            trust_env=False,  # no proxy or netrc credentials from the environment: the recipe says
            proxy=settings.proxy,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "BooruClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- retries ---------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff_s * (2**attempt)
        return min(base * random.uniform(0.5, 1.5), self.settings.max_backoff_s)

    def _wait(self, attempt: int, reason: str, retry_after: float | None = None) -> None:
        delay = self._backoff(attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.settings.max_backoff_s))
        self.stats.waited(reason, delay)
        if delay > 0:
            self._sleep(delay)

    def _with_retries(self, what: str, url: str, attempt_fn: Callable[[], T]) -> T:
        """Run `attempt_fn` until it returns; it raises _Retry to ask for another go."""
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return attempt_fn()
            except _Retry as retry:
                if attempt == attempts - 1:
                    raise BooruError(f"{what} {redact(url)}: {retry.reason} (gave up after {attempts} attempts)") from None
                self._wait(attempt, retry.reason, retry.retry_after)
        raise AssertionError("unreachable")

    # -- API -------------------------------------------------------------------
    def _auth_params(self) -> dict[str, str]:
        if self.kind == "gelbooru" and self._credentials:
            return {"user_id": self._credentials[0], "api_key": self._credentials[1]}
        return {}

    def _auth(self) -> httpx.Auth | None:
        if self.kind == "danbooru" and self._credentials:
            return httpx.BasicAuth(*self._credentials)
        return None

    def api(self, path: str, params: dict[str, Any]) -> Any:
        """GET an API endpoint and decode its JSON, with retries."""
        url = self.base_url + path
        query = {**params, **self._auth_params()}

        def attempt() -> Any:
            self._api_rate.acquire()
            self.stats.count("api")
            try:
                resp = self._http.get(url, params=query, auth=self._auth() or httpx.USE_CLIENT_DEFAULT)
            except httpx.TransportError as exc:
                raise _Retry(f"connection error ({type(exc).__name__})") from None
            if resp.status_code in RETRY_STATUSES:
                raise _Retry(f"HTTP {resp.status_code}", retry_after_s(resp.headers.get("Retry-After")))
            if resp.status_code != 200:
                raise BooruError(f"GET {redact(url)}: HTTP {resp.status_code}{_hint(resp)}")
            try:
                return resp.json()
            except ValueError:
                raise _Retry("response is not valid JSON (truncated?)") from None

        return self._with_retries("GET", url, attempt)

    def pages(self, tags: str, page_size: int) -> Iterator[list[dict[str, Any]]]:
        """Pages of raw post dicts, newest first, until the results end (close the generator to stop)."""
        if self.kind == "danbooru":
            page: str = "1"
            while True:
                batch = self.api("/posts.json", {"tags": tags, "page": page, "limit": page_size})
                if not isinstance(batch, list):
                    raise BooruError(f"GET {self.base_url}/posts.json: expected a list of posts, got {type(batch).__name__}")
                if batch:
                    yield batch
                if len(batch) < page_size:
                    return
                page = f"b{min(int(p['id']) for p in batch)}"  # a cursor: stable while new posts arrive
        else:
            pid = 0
            while True:
                doc = self.api("/index.php", {"page": "dapi", "s": "post", "q": "index", "json": "1",
                                              "tags": tags, "pid": pid, "limit": page_size})
                batch = doc.get("post", []) if isinstance(doc, dict) else doc  # old API: a bare list
                if isinstance(batch, dict):
                    batch = [batch]
                if batch:
                    yield batch
                if len(batch) < page_size:
                    return
                pid += 1

    def tag_info(self, names: list[str]) -> dict[str, tuple[str, int]]:
        """tag -> (category, post count) for the tags the site knows, in batches."""
        found: dict[str, tuple[str, int]] = {}
        names = list(dict.fromkeys(names))
        if self.kind == "danbooru":
            plain = [n for n in names if "," not in n]
            batches = [("search[name_comma]", ",".join(plain[i : i + TAG_BATCH])) for i in range(0, len(plain), TAG_BATCH)]
            batches += [("search[name]", n) for n in names if "," in n]
            for key, value in batches:
                for t in self.api("/tags.json", {key: value, "limit": 1000}) or []:
                    found[str(t["name"])] = (CATEGORIES.get(int(t.get("category", 0)), "general"), int(t.get("post_count", 0)))
        else:
            import html

            for i in range(0, len(names), TAG_BATCH):
                doc = self.api("/index.php", {"page": "dapi", "s": "tag", "q": "index", "json": "1",
                                              "names": " ".join(names[i : i + TAG_BATCH]), "limit": 1000})
                items = doc.get("tag", []) if isinstance(doc, dict) else doc
                for t in items or []:
                    found[html.unescape(str(t["name"]))] = (CATEGORIES.get(int(t.get("type", 0)), "general"),
                                                           int(t.get("count", 0)))
        return found

    # -- downloads -------------------------------------------------------------
    def download(self, url: str, sink: Callable[[Iterator[bytes]], T], max_bytes: int | None = None) -> T:
        """Stream a file into `sink(chunks)` (which stores it or raises); retried as a whole.

        Raises DownloadSkipped for a file that must not be taken (a redirect off the
        allowed hosts, a 404, too large) and BooruError when retries run out.
        """

        def attempt() -> T:
            target = url
            for _ in range(MAX_REDIRECTS + 1):
                self._dl_rate.acquire()
                self.stats.count("download")
                try:
                    with self._http.stream("GET", target) as resp:
                        if resp.is_redirect:
                            location = resp.headers.get("Location", "")
                            target = urljoin(target, location)
                            problem = url_problem(target, self.base_url, self.file_hosts)
                            if problem:
                                raise DownloadSkipped(f"redirect refused: {problem}")
                            continue
                        if resp.status_code in RETRY_STATUSES:
                            raise _Retry(f"HTTP {resp.status_code}", retry_after_s(resp.headers.get("Retry-After")))
                        if resp.status_code != 200:
                            raise DownloadSkipped(f"download answered HTTP {resp.status_code}")
                        length = resp.headers.get("Content-Length")
                        if max_bytes is not None and length and length.isdigit() and int(length) > max_bytes:
                            raise DownloadSkipped(f"file too large: {int(length) / 2**20:.1f} MB")
                        return sink(resp.iter_bytes(CHUNK))
                except httpx.TransportError as exc:  # before or during the body: the sink kept nothing
                    raise _Retry(f"connection error ({type(exc).__name__})") from None
            raise DownloadSkipped(f"more than {MAX_REDIRECTS} redirects")

        return self._with_retries("download", url, attempt)


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def _hint(resp: httpx.Response) -> str:
    """The site's own error message (never the request), plus what to do for auth errors."""
    message = ""
    try:
        body = resp.json()
        if isinstance(body, dict):
            message = str(body.get("message") or body.get("error") or "")[:200]
    except ValueError:
        pass
    hint = ""
    if resp.status_code in (401, 403):
        hint = " (check the credentials and the User-Agent: Danbooru refuses non-browser clients)"
    return (f": {message}" if message else "") + hint
