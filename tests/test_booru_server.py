"""The fake booru itself behaves: paging, faults, odd posts, UA checks, counters."""

from __future__ import annotations

import hashlib
import socket
import time

import httpx
import pytest

from tests.booru_server import (
    BROWSER_UA,
    HOSTILE_URLS,
    FakeBooru,
    Fault,
    make_posts,
    special_posts,
)

H = {"User-Agent": BROWSER_UA}
GEL = {"page": "dapi", "s": "post", "q": "index", "json": "1"}


@pytest.fixture(scope="module")
def posts():
    return make_posts(45, seed=3, size=(96, 64))


@pytest.fixture(scope="module")
def odd():
    return special_posts()


def test_danbooru_paging_and_cursor(posts):
    with FakeBooru(posts=posts) as booru, httpx.Client(base_url=booru.base_url, headers=H) as c:
        pages = [c.get("/posts.json", params={"tags": "test_character", "page": n, "limit": 20}).json() for n in (1, 2, 3, 4)]
        assert [len(p) for p in pages] == [20, 20, 5, 0]
        ids = [p["id"] for page in pages for p in page]
        assert ids == sorted((p.id for p in posts), reverse=True)  # newest first
        first = pages[0][0]
        for key in ("md5", "file_ext", "file_url", "large_file_url", "preview_file_url", "rating", "score",
                    "image_width", "image_height", "tag_string_general", "tag_string_character", "created_at"):
            assert key in first
        below = c.get("/posts.json", params={"tags": "test_character", "page": f"b{ids[19]}", "limit": 20}).json()
        assert [p["id"] for p in below] == ids[20:40]
        above = c.get("/posts.json", params={"page": f"a{ids[25]}", "limit": 3}).json()
        assert [p["id"] for p in above] == ids[22:25]
        filtered = c.get("/posts.json", params={"tags": "tag_1 score:>20 -smile rating:g", "limit": 200}).json()
        assert filtered and all("tag_1" in p["tag_string"].split() and p["score"] > 20 for p in filtered)
        assert booru.counts["danbooru_posts"] == booru.counts["page"] == 7
        assert all(ua == BROWSER_UA for ua in booru.user_agents)


def test_gelbooru_paging_tags_and_auth_recorded(posts, odd):
    with FakeBooru(posts=posts + list(odd.values())) as booru, httpx.Client(headers=H) as c:
        q = {**GEL, "tags": "test_character", "limit": 20, "api_key": "k", "user_id": "7"}
        pages = [c.get(booru.gelbooru_url, params={**q, "pid": pid}).json() for pid in range(4)]
        assert [len(p.get("post", [])) for p in pages] == [20, 20, 5, 0]
        assert "post" not in pages[3] and pages[3]["@attributes"] == {"limit": 20, "offset": 60, "count": 45}
        p = pages[0]["post"][0]
        assert p["rating"] == "general" and p["image"] == f"{p['md5']}.png"
        assert booru.log[0].auth == {"api_key": "k", "user_id": "7"}
        # Gelbooru HTML-escapes tags in post JSON; the tag API takes the real names.
        weird = c.get(booru.gelbooru_url, params={**GEL, "tags": "yoshida_(kyouko) café_(place)"}).json()["post"][0]
        assert "hands_on_another&#039;s_head" in weird["tags"].split() and ":3" in weird["tags"].split()
        tags = c.get(booru.gelbooru_url, params={**GEL, "s": "tag", "names": "yoshida_(kyouko) :3 ^_^ nope"}).json()
        assert {t["name"]: t["type"] for t in tags["tag"]} == {"yoshida_(kyouko)": 4, ":3": 0, "^_^": 0}
        dan = c.get(booru.base_url + "/tags.json", params={"search[name_comma]": "café_(place),test_artist"}).json()
        assert {t["name"]: (t["category"], t["post_count"]) for t in dan} == {"café_(place)": (3, 1), "test_artist": (1, 58)}


def test_429_then_500s_then_success(posts):
    faults = {"danbooru_posts": [429], "/posts.json?page=2": [500, 500], posts[0].id: [Fault(503, retry_after=2)]}
    with FakeBooru(posts=posts, faults=faults) as booru, httpx.Client(base_url=booru.base_url, headers=H) as c:
        r = c.get("/posts.json", params={"page": 1})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert c.get("/posts.json", params={"page": 1}).status_code == 200
        assert [c.get("/posts.json", params={"page": 2}).status_code for _ in range(3)] == [500, 500, 200]
        url = booru.file_url(posts[0])
        r = c.get(url)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert c.get(url).content == posts[0].data
        assert booru.counts["faulted"] == 4 and booru.attempts[posts[0].id] == 2 and booru.downloads[posts[0].id] == 1
        assert not booru.pending_faults()


def test_odd_posts(posts, odd):
    with FakeBooru(posts=list(odd.values())) as booru, httpx.Client(base_url=booru.base_url, headers=H) as c:
        by_id = {p["id"]: p for p in c.get("/posts.json", params={"limit": 100}).json()}
        deleted = by_id[odd["deleted"].id]
        assert "file_url" not in deleted and "md5" not in deleted
        assert {by_id[odd[k].id]["file_ext"] for k in ("mp4", "ugoira", "swf")} == {"mp4", "zip", "swf"}
        for name, url in HOSTILE_URLS.items():
            assert by_id[odd[name].id]["file_url"] == url
        corrupt = by_id[odd["corrupt"].id]
        body = c.get(corrupt["file_url"]).content
        assert hashlib.md5(body).hexdigest() != corrupt["md5"]
        r = c.get(by_id[odd["redirect"].id]["file_url"])
        assert r.status_code == 302 and r.headers["Location"] == HOSTILE_URLS["foreign"]
        mp4 = c.get(by_id[odd["mp4"].id]["file_url"])
        assert mp4.headers["Content-Type"] == "video/mp4" and hashlib.md5(mp4.content).hexdigest() == odd["mp4"].md5
        png = c.get(booru.file_url(odd["odd_tags"]))
        assert png.headers["Content-Type"] == "image/png" and int(png.headers["Content-Length"]) == len(png.content)
        assert "yoshida_(kyouko)" in by_id[odd["odd_tags"].id]["tag_string_character"]


def test_truncated_download_then_complete(posts):
    post = posts[1]
    with FakeBooru(posts=posts, faults={post.id: ["truncate", "truncate"]}) as booru, httpx.Client(headers=H) as c:
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                c.get(booru.file_url(post))
        assert c.get(booru.file_url(post)).content == post.data
        # `downloads` is bumped after the body is sent (racy to read here); attempts and counts are not.
        assert booru.attempts[post.id] == 3 and booru.counts["image"] == 3


def test_user_agent_and_auth(posts):
    with FakeBooru(posts=posts[:3], require_auth=("me", "secret")) as booru, httpx.Client(base_url=booru.base_url) as c:
        assert c.get("/posts.json").status_code == 403  # python-httpx UA
        assert booru.counts["rejected"] == 1
        assert c.get("/posts.json", headers=H).status_code == 401
        ok = c.get("/posts.json", params={"login": "me", "api_key": "secret"}, headers=H)
        assert ok.status_code == 200
        assert c.get("/posts.json", auth=("me", "secret"), headers=H).status_code == 200
        assert booru.log[-1].auth["basic_user"] == "me"
        # the file CDN and Gelbooru don't check the UA by default
        assert c.get(ok.json()[0]["file_url"]).status_code == 200
        assert booru.log[0].user_agent.startswith("python-httpx")


def test_counts_reset_and_prompt_stop(posts):
    booru = FakeBooru(posts=posts[:2], scenario="crashy").start()
    c = httpx.Client(headers=H)
    try:
        urls = [booru.file_url(p) for p in posts[:2]]
        for url in urls:
            with pytest.raises(httpx.RemoteProtocolError):
                c.get(url)
        assert [c.get(u).status_code for u in urls] == [200, 200]
        booru.reset_counts()
        c.get(urls[0])
        assert booru.counts == {"image": 1, "download": 1, "total": 1} and booru.requests[0][0] == "GET"
    finally:
        t = time.monotonic()
        booru.stop()  # with a keep-alive connection still open
        assert time.monotonic() - t < 1.5
        c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(booru.base_url.rsplit(":", 1)[1])), timeout=0.5)
    assert not booru.errors
