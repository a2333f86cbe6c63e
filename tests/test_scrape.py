"""Scrape against a real HTTP server on 127.0.0.1 (tests/booru_server.py): paging, faults, odd posts, resume."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest

from bakery.craft.gather import booru as craft
from bakery.craft.gather.booru_http import BooruClient, ClientSettings, RateLimiter, retry_after_s
from bakery.recipe import RecipeError, parse_recipe, stage_params_json
from storage import Catalog, ContentStore
from tasks.gather.scrape import ScrapeError, booru_specs, scrape
from tests.booru_server import BROWSER_UA, FakeBooru, Fault, is_browser_ua, make_post, make_posts, special_posts

FAST = {"requests_per_second": 50, "downloads_per_second": None, "backoff_s": 0.01, "max_backoff_s": 5}


# The per-image stages a booru-only recipe without concepts runs after scrape.
PER_IMAGE = ("ingest", "convert", "dedupe", "alpha", "trim", "upscale", "crops", "masks", "buckets")

def recipe(tmp: Path, sources: list[dict], **scrape_params):
    return parse_recipe({"project": {"workdir": "work"}, "sources": sources, "scrape": {**FAST, **scrape_params}}, tmp)


def run_scrape(tmp: Path, sources: list[dict], run_id: str = "r1", **scrape_params):
    r = recipe(tmp, sources, **scrape_params)
    return scrape.fn(booru_specs(r), stage_params_json(r.scrape), str(r.workdir), run_id, None)


def rows(tmp: Path, sql: str, params=()) -> list[dict]:
    with Catalog.open(tmp / "work", read_only=True) as cat:
        return cat.rows(sql, params)


def assert_store_intact(tmp: Path) -> None:
    """Every stored object holds exactly the bytes its name says; no temp file left behind."""
    store = ContentStore(tmp / "work" / "store")
    objects = [p for p in store.root.rglob("*") if p.is_file() and p.parent.name != "tmp"]
    assert objects
    for p in objects:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
    assert not any((store.root / "tmp").glob("*"))


def by_post(skips) -> dict[str, str]:
    return {s.subject.rsplit("/", 1)[-1].rsplit("=", 1)[-1]: s.reason for s in skips}


def test_recipe_booru_sources_validate(tmp_path: Path):
    r = recipe(tmp_path, [{"kind": "danbooru", "tags": "  character_a   absurdres ", "limit": 400, "ratings": ["g", "s"],
                           "min_score": 5}, {"kind": "gelbooru", "tags": "x"}])
    dan, gel = r.sources
    assert dan.tags == "character_a absurdres" and dan.base_url == "https://danbooru.donmai.us"
    assert "cdn.donmai.us" in dan.file_hosts and gel.base_url == "https://gelbooru.com"
    assert (dan.user_env, gel.api_key_env) == ("DANBOORU_LOGIN", "GELBOORU_API_KEY")
    assert r.scrape.requests_per_second == 50 and parse_recipe({}, tmp_path).scrape.requests_per_second == 2.0
    with pytest.raises(RecipeError) as err:
        parse_recipe({"sources": [
            {"kind": "danbooru", "tags": " "},
            {"kind": "gelbooru", "tags": "a", "base_url": "file:///etc", "page_size": 150, "ratings": ["x"]},
            {"kind": "danbooru", "tags": "a", "path": "x", "limit": 0, "file_hosts": ["a b"]},
        ], "scrape": {"retries": -1, "downloads": 0, "api_key": "secret"}}, tmp_path)
    problems = "\n".join(err.value.problems)
    for key in ("sources[0].tags: must not be empty", "sources[1].base_url: must be an http(s) URL",
                "sources[1].page_size: must be <= 100", "sources[1].ratings[0]: must be one of",
                "sources[2].path: unknown key", "sources[2].limit: must be > 0", "sources[2].file_hosts: must be host",
                "scrape.retries: must be >= 0", "scrape.downloads: must be > 0", "scrape.api_key: unknown key"):
        assert key in problems


def test_pure_rules_urls_tags_sidecars():
    base = "https://danbooru.donmai.us"
    hosts = ["cdn.donmai.us", "*.donmai.us"]
    assert craft.url_problem("https://cdn.donmai.us/original/a.png", base, hosts) is None
    assert craft.url_problem("https://raikou4.donmai.us/a.png", base, hosts) is None
    for bad, why in [("https://evildonmai.us/a.png", "foreign host"), ("https://cdn.donmai.us@evil.com/a", "foreign host"),
                     ("ftp://cdn.donmai.us/a.png", "scheme 'ftp'"), ("file:///etc/passwd", "scheme 'file'"),
                     ("http://169.254.169.254/", "foreign host"), ("http://[::1]/a.png", "foreign host"),
                     ("//cdn.donmai.us/a.png", "scheme '(none)'")]:
        assert why in (craft.url_problem(bad, base, hosts) or ""), bad
    assert craft.keep_tag(":3", "general", True, True) and craft.keep_tag("re:zero", "copyright", True, True)
    assert not craft.keep_tag("artist:foo", "general", True, True) and craft.keep_tag("artist:foo", "general", True, False)
    assert not craft.keep_tag("absurdres", "meta", True, True) and craft.keep_tag("absurdres", "meta", False, True)
    assert craft.sidecar_text(["long hair", "yoshida_(kyouko)", "^_^"]) == "long_hair, yoshida_(kyouko), ^_^"
    assert craft.rare_tags({"a": ("general", 499), "b": ("general", 500), "c": ("general", None)}) == ["a"]
    gel = craft.parse_gelbooru({"id": 5, "md5": "ab" * 16, "image": "x.JPG", "file_url": "https://img3.gelbooru.com/x.jpg",
                                "rating": "sensitive", "score": "7", "tags": "a&#039;s :&lt;"}, "https://gelbooru.com")
    assert (gel.file_ext, gel.rating, gel.score, [t for t, _ in gel.tags]) == ("jpg", "s", 7, ["a's", ":<"])
    assert gel.post_url == "https://gelbooru.com/index.php?page=post&s=view&id=5"
    old_style = craft.parse_gelbooru({"id": 6, "md5": "cd" * 16, "file_url": "//img3.gelbooru.com/images/x.png"},
                                     "https://gelbooru.com")
    assert old_style.file_url == "https://img3.gelbooru.com/images/x.png" and old_style.file_ext == "png"
    assert craft.precheck(old_style, "https://gelbooru.com", ["*.gelbooru.com"]) is None


def test_danbooru_paging_tags_and_every_kind_of_skip(tmp_path: Path):
    odd = special_posts()
    namespaced = make_post(5000, size=(64, 48), general=["1girl", "series:thing", ":3"], meta=["highres"], rating="s")
    posts = make_posts(25, size=(64, 48)) + list(odd.values()) + [namespaced]
    with FakeBooru(posts=posts) as booru:
        src = {"kind": "danbooru", "tags": "1girl", "base_url": booru.base_url, "page_size": 10, "limit": 1000,
               "source_kind": "fanart_hires"}
        result = run_scrape(tmp_path, [src])
        assert booru.counts["danbooru_posts"] == 4  # 39 posts: 10 + 10 + 10 + 9
        assert all(is_browser_ua(ua) for ua in booru.user_agents)
        assert [r.query["page"] for r in booru.log if r.kind == "danbooru_posts"][:2] == ["1", "b9004"]
        requests_before = booru.counts["total"]
        booru.reset_counts()
        rerun = run_scrape(tmp_path, [src], run_id="r2")
        rerun_counts = booru.counts.copy()
        assert not booru.errors

    reasons = by_post(result.skips)
    expected = {
        "deleted": "no downloadable file", "corrupt": "md5 mismatch", "mp4": "not an image: .mp4 (video)",
        "ugoira": "not an image: .zip", "swf": "not an image: .swf", "foreign": "foreign host evil.example.invalid",
        "metadata": "foreign host 169.254.169.254", "file_scheme": "URL scheme 'file' not allowed",
        "redirect": "redirect refused: foreign host evil.example.invalid",
    }
    assert set(reasons) == {str(odd[k].id) for k in expected}
    for name, reason in expected.items():
        assert reason in reasons[str(odd[name].id)], (name, reasons[str(odd[name].id)])
    assert result.n_in == 39 and result.n_processed == len(result.images) == 25 + 4 + 1
    assert booru.attempts[odd["corrupt"].id] == 1  # a checksum failure is not retried
    assert_store_intact(tmp_path)

    site = craft.site_of(booru.base_url)
    post_row = rows(tmp_path, "SELECT * FROM booru_posts WHERE post_id = ?", [str(posts[3].id)])[0]
    assert post_row["site"] == site and post_row["kind"] == "danbooru" and post_row["md5"] == posts[3].md5
    assert post_row["post_url"] == f"{booru.base_url}/posts/{posts[3].id}"
    assert post_row["file_url"] == booru.file_url(posts[3]) and post_row["score"] == 3 and post_row["rating"] == "g"
    assert post_row["fetched_at"] is not None and post_row["run_id"] == "r1"
    source = rows(tmp_path, "SELECT * FROM sources WHERE image_hash = ?", [post_row["image_hash"]])[0]
    assert (source["kind"], source["location"], source["source_kind"]) == ("danbooru", post_row["post_url"], "fanart_hires")

    def tags_of(post) -> dict[str, str]:
        found = rows(tmp_path, """SELECT t.tag, t.category, t.origin FROM tags t JOIN booru_posts p ON p.image_hash = t.image_hash
                                  WHERE p.post_id = ?""", [str(post.id)])
        assert {r["origin"] for r in found} == {"booru"}
        return {r["tag"]: r["category"] for r in found}

    odd_tags = tags_of(odd["odd_tags"])
    assert odd_tags["yoshida_(kyouko)"] == "character" and odd_tags["café_(place)"] == "copyright"
    assert odd_tags[":3"] == odd_tags["^_^"] == odd_tags["hands_on_another's_head"] == "general"
    assert odd_tags["test_artist"] == "artist"
    first = tags_of(posts[0])
    assert "highres" not in first and first["test_character"] == "character"  # meta dropped by default
    assert set(tags_of(namespaced)) == {"1girl", ":3"}  # `series:thing` dropped, `:3` is a real tag

    # Post counts: once per tag, stored for the rare-tag check.
    counts = {r["tag"]: (r["category"], r["post_count"]) for r in rows(tmp_path, "SELECT * FROM booru_tags")}
    assert counts["1girl"] == ("general", 39) and counts["yoshida_(kyouko)"] == ("character", 1)
    assert booru.counts["danbooru_tags"] <= 4

    # The listing for ingest: stored files, the guide's sidecar, the post as subject.
    listing = {f.location: f for f in result.payload}
    odd_file = listing[f"{booru.base_url}/posts/{odd['odd_tags'].id}"]
    assert odd_file.kind == "danbooru" and odd_file.name == odd["odd_tags"].md5
    assert Path(odd_file.path).read_bytes() == odd["odd_tags"].data
    assert "yoshida_(kyouko), " in odd_file.sidecar and ":3" in odd_file.sidecar.split(", ")

    # Re-run: every post is in the catalog, so nothing is downloaded again.
    assert rerun.n_processed == 0 and len(rerun.images) == 30
    # only the two that failed after a request are tried again (corrupt, redirect); tags are known
    assert rerun_counts["image"] == 2 and rerun_counts["danbooru_tags"] == 0
    assert rerun_counts["total"] == 4 + 2 < requests_before


def test_limit_filters_and_gelbooru_with_credentials(tmp_path: Path, monkeypatch, caplog):
    secret = "s3cr3t-api-key"
    posts = make_posts(16, size=(48, 40), rating=lambda i: "gsqe"[i % 4])
    odd = special_posts()["odd_tags"]
    odd.score = 99
    with FakeBooru(posts=posts + [odd], require_auth=("77", secret)) as booru:
        src = {"kind": "gelbooru", "tags": "1girl", "base_url": booru.base_url, "ratings": ["g", "s"], "min_score": 4,
               "limit": 5, "page_size": 4}
        monkeypatch.setenv("GELBOORU_USER_ID", "77")
        monkeypatch.delenv("GELBOORU_API_KEY", raising=False)
        with pytest.raises(ScrapeError, match="GELBOORU_API_KEY is not set"):
            run_scrape(tmp_path, [src])
        monkeypatch.setenv("GELBOORU_API_KEY", secret)
        caplog.set_level(logging.DEBUG)
        result = run_scrape(tmp_path, [src])
        api = [r for r in booru.log if r.kind.startswith("gelbooru")]
        assert api and all(r.auth == {"user_id": "77", "api_key": secret} for r in api)

    # ratings g/s and score >= 4, newest first, up to the limit: odd (99), then ids with i in 13, 12, 9, 8
    taken = {p["post_id"] for p in rows(tmp_path, "SELECT post_id FROM booru_posts")}
    assert taken == {str(odd.id)} | {str(posts[i].id) for i in (13, 12, 9, 8)}
    assert len(result.images) == 5 and booru.counts["gelbooru_posts"] == 3  # stopped at the limit
    tags = {r["tag"]: r["category"] for r in rows(
        tmp_path, "SELECT tag, category FROM tags WHERE image_hash = (SELECT image_hash FROM booru_posts WHERE post_id = ?)",
        [str(odd.id)])}
    # Gelbooru posts carry no categories and escape HTML: both come right through the tag API
    assert tags["yoshida_(kyouko)"] == "character" and tags["hands_on_another's_head"] == "general"
    assert tags["test_artist"] == "artist" and "ä_ö_ü" in tags and "rock&roll" in tags

    # Credentials never reach the logs, the catalog or the results.
    assert secret not in caplog.text
    assert secret not in repr(result)
    assert secret.encode() not in (tmp_path / "work" / "catalog.duckdb").read_bytes()


def test_retry_after_backoff_and_rate_limit(tmp_path: Path):
    posts = make_posts(6, size=(48, 40))
    faults = {"danbooru_posts": [429], "/tags.json": [500, 500], posts[0].id: [503], posts[1].id: ["truncate"]}
    with FakeBooru(posts=posts, faults=faults) as booru:  # 429/503 carry Retry-After: 1
        started = time.monotonic()
        result = run_scrape(tmp_path, [{"kind": "danbooru", "tags": "1girl", "base_url": booru.base_url}])
        elapsed = time.monotonic() - started
        assert not booru.pending_faults()
        assert booru.attempts[posts[0].id] == 2 and booru.attempts[posts[1].id] == 2
        assert [r.status for r in booru.log if r.kind == "danbooru_posts"] == [429, 200]
    assert elapsed >= 2.0  # two Retry-After: 1 honoured (backoff_s alone would be ~0.01 s)
    assert len(result.images) == 6 and not result.skips
    assert_store_intact(tmp_path)

    # The request rate: 5 API calls at 10/s take >= 0.4 s; an HTTP-date Retry-After is understood.
    with FakeBooru(posts=posts) as booru:
        settings = ClientSettings(user_agent=BROWSER_UA, requests_per_second=10)
        with BooruClient("danbooru", booru.base_url, settings) as client:
            started = time.monotonic()
            for _ in range(5):
                client.api("/posts.json", {"limit": 1})
            assert time.monotonic() - started >= 0.39
    # Errors the site explains are not retried, and say what the site said.
    with FakeBooru(posts=posts, max_tags=2) as booru:
        with pytest.raises(ScrapeError, match="HTTP 422: You cannot search for more than 2 tags"):
            run_scrape(tmp_path, [{"kind": "danbooru", "tags": "a b c", "base_url": booru.base_url}])
        with pytest.raises(ScrapeError, match="HTTP 403.*User-Agent"):
            run_scrape(tmp_path, [{"kind": "danbooru", "tags": "a", "base_url": booru.base_url}], user_agent="python-httpx")
        assert booru.counts["danbooru_posts"] == 2
    assert retry_after_s("3") == 3.0 and retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_s("soon") is None
    limiter = RateLimiter(4)
    started = time.monotonic()
    for _ in range(3):
        limiter.acquire()
    assert 0.45 <= time.monotonic() - started < 1.0


def test_crash_mid_download_then_resume_and_incremental(tmp_path: Path):
    posts = make_posts(12, size=(48, 40))
    # retries = 1: two broken attempts exhaust a post (the connection closes mid-body, or at once)
    faults = {posts[3].id: ["truncate", "truncate"], posts[7].id: ["drop", Fault(200, truncate=100)]}
    src = {"kind": "danbooru", "tags": "1girl", "page_size": 5}
    with FakeBooru(posts=posts, faults=faults) as booru:
        src["base_url"] = booru.base_url
        first = run_scrape(tmp_path, [src], "r1", retries=1)
        assert {s.subject.rsplit("/", 1)[-1] for s in first.skips} == {str(posts[3].id), str(posts[7].id)}
        assert all("download failed" in s.reason for s in first.skips)
        assert len(first.images) == 10
        assert_store_intact(tmp_path)  # the half files never reached the store

        second = run_scrape(tmp_path, [src], "r2", retries=1, export_dir=str(tmp_path / "export"))
        assert second.n_processed == 2 and len(second.images) == 12 and not second.skips
        exported = sorted(p.name for p in (tmp_path / "export").iterdir())
        assert exported == sorted([f"{p.md5}.png" for p in posts] + [f"{p.md5}.txt" for p in posts])
        caption = (tmp_path / "export" / f"{posts[0].md5}.txt").read_text(encoding="utf-8")
        assert caption.startswith("1girl, long_hair, solo, tag_0, test_character, test_series, test_artist")
        assert (tmp_path / "export" / f"{posts[0].md5}.png").read_bytes() == posts[0].data
        assert {p.id: booru.attempts[p.id] for p in posts} == {p.id: 3 if p in (posts[3], posts[7]) else 1 for p in posts}

        # The listing itself breaks on page 2 (a crash of the run): page 1 is kept ...
        new = make_posts(7, seed=5, size=(48, 40), start_id=2001)
        booru.add_posts(new)
        booru.add_fault("/posts.json?page=b2003", 500, 500)
        with pytest.raises(ScrapeError, match=r"sources\[0\].*HTTP 500.*gave up after 2 attempts"):
            run_scrape(tmp_path, [src], "r3", retries=1)
        assert len(rows(tmp_path, "SELECT * FROM booru_posts")) == 12 + 5
        # ... and the next run fetches only what is new.
        booru.reset_counts()
        third = run_scrape(tmp_path, [src], "r4", retries=1)
        assert third.n_processed == 2 and len(third.images) == 19
        assert booru.counts["image"] == 2 and sorted(booru.attempts) == [2001, 2002]
    assert_store_intact(tmp_path)
    n = rows(tmp_path, "SELECT count(*) AS n, count(DISTINCT post_id) AS d FROM booru_posts")[0]
    assert n == {"n": 19, "d": 19}
    assert rows(tmp_path, "SELECT count(*) AS n FROM sources")[0]["n"] == 19


@pytest.mark.usefixtures("prefect_server")
def test_bake_flow_scrapes_first_and_downloads_flow_into_ingest(tmp_path: Path):
    """A real Prefect run: booru posts (credentials from a Secret block) join a folder's images."""
    from prefect.blocks.system import Secret

    from flows.bake import bake_lora
    from tests.images import gradient

    Secret(value={"user": "me", "api_key": "k3y-from-block"}).save("booru-test-creds", overwrite=True)
    posts = make_posts(6, size=(64, 48))
    odd = special_posts()
    images = tmp_path / "images"
    images.mkdir()
    gradient(60, 40, seed=1).save(images / "mine.png")
    (images / "also_on_booru.png").write_bytes(posts[0].data)  # the same file from both sources
    with FakeBooru(posts=posts + [odd["deleted"], odd["mp4"]], require_auth=("me", "k3y-from-block")) as booru:
        recipe = tmp_path / "recipe.toml"
        recipe.write_text(
            '[project]\nname = "t"\nworkdir = "work"\n\n'
            '[[sources]]\nkind = "folder"\npath = "images"\n\n'
            f'[[sources]]\nkind = "danbooru"\ntags = "1girl"\nbase_url = "{booru.base_url}"\n'
            'secret_block = "booru-test-creds"\nsource_kind = "fanart_hires"\n\n'
            "[scrape]\nrequests_per_second = 50\ndownloads_per_second = 200\n\n[runtime]\nworkers = 2\n",
            encoding="utf-8",
        )
        first = bake_lora(str(recipe))
        booru.reset_counts()
        second = bake_lora(str(recipe))
        second_counts = booru.counts.copy()

    work = tmp_path / "work"
    with Catalog.open(work, read_only=True) as cat:
        st = {s["stage"]: s for s in cat.stage_table(first)}
        assert {k: v["status"] for k, v in st.items()} == {"scrape": "ran", **{s: "ran" for s in PER_IMAGE}}
        assert (st["scrape"]["n_in"], st["scrape"]["n_out"], st["scrape"]["n_processed"], st["scrape"]["n_skipped"]) == (8, 6, 6, 2)
        assert {s["reason"].split(":")[0] for s in cat.skips_for(first) if s["stage"] == "scrape"} == {
            "no downloadable file (deleted, banned or restricted", "not an image"}
        assert (st["ingest"]["n_in"], st["ingest"]["n_out"]) == (8, 7)  # 2 files + 6 downloads, one shared
        assert st["dedupe"]["n_out"] == 7
        shared = cat.rows("SELECT kind FROM sources WHERE image_hash = (SELECT image_hash FROM booru_posts WHERE post_id = ?)"
                          " ORDER BY kind", [str(posts[0].id)])
        assert [r["kind"] for r in shared] == ["danbooru", "folder"]  # no folder row for the store copy
        h = cat.rows("SELECT image_hash FROM booru_posts WHERE post_id = ?", [str(posts[1].id)])[0]["image_hash"]
        converted = cat.rows("SELECT output_hash FROM derivations WHERE stage = 'convert' AND input_hash = ?", [h])
        chain = cat.provenance(converted[0]["output_hash"])
        assert [(s["kind"], s["post_id"]) for s in chain.sources] == [("danbooru", str(posts[1].id))]
        again = {s["stage"]: s for s in cat.stage_table(second)}
        # The site is asked again (new posts?), nothing is downloaded, the rest comes from cache.
        assert {k: v["status"] for k, v in again.items()} == {"scrape": "ran", **{s: "cached" for s in PER_IMAGE}}
        assert again["scrape"]["n_processed"] == 0
    assert second_counts["image"] == 0 and second_counts["danbooru_posts"] == 1
    assert b"k3y-from-block" not in (work / "catalog.duckdb").read_bytes()


KILLABLE = """
import sys
from pathlib import Path
from tests.test_scrape import run_scrape
run_scrape(Path(sys.argv[1]), [{"kind": "danbooru", "tags": "1girl", "base_url": sys.argv[2], "page_size": 5}],
           run_id=sys.argv[3], downloads=2)
"""


def test_killed_run_resumes_without_duplicates(tmp_path: Path):
    """SIGKILL in the middle of downloading: the store holds no half file, the next run finishes the job."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    posts = make_posts(20, size=(48, 40))
    with FakeBooru(posts=posts, bandwidth_kbps=40) as booru:  # ~0.15 s a file
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tmp_path), booru.base_url, "r1"], env=env, cwd=root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while sum(booru.attempts.values()) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # page 1 (5 posts) is recorded once page 2's downloads start
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        before = sum(booru.attempts.values())
        assert 8 <= before < 20
        store = ContentStore(tmp_path / "work" / "store")
        for p in store.root.rglob("*"):
            if p.is_file() and p.parent.name != "tmp":
                assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
        recorded = {r["post_id"] for r in rows(tmp_path, "SELECT post_id FROM booru_posts")}
        assert len(recorded) >= 5

        booru.bandwidth_kbps = None
        booru.reset_counts()
        result = run_scrape(tmp_path, [{"kind": "danbooru", "tags": "1girl", "base_url": booru.base_url, "page_size": 5}], "r2")
        assert len(result.images) == 20 and not result.skips
        assert not recorded & {str(i) for i in booru.attempts}  # recorded posts are not fetched again
        assert result.n_processed == 20 - len(recorded)
    n = rows(tmp_path, "SELECT count(*) AS n, count(DISTINCT post_id) AS d, count(DISTINCT image_hash) AS h FROM booru_posts")
    assert n == [{"n": 20, "d": 20, "h": 20}]
    assert rows(tmp_path, "SELECT count(*) AS n FROM sources")[0]["n"] == 20
