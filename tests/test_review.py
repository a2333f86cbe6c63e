"""The review studio over real HTTP: views, edits through the edits API, and what it refuses to serve."""

from __future__ import annotations

import http.client
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bakery.craft.prepare.buckets import bucket_resolutions, select_bucket
from bakery.review import create_app, views
from tests.review_work import Served, demo_work, free_port, run_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, prefect_server):
    recipe = demo_work(tmp_path_factory.mktemp("review"))
    run_recipe(recipe)
    with Served(create_app(recipe)) as served:
        yield served, recipe


def get(studio, path: str, **kw) -> httpx.Response:
    return httpx.get(studio[0].url + path, timeout=30, **kw)


def post(studio, path: str, data: dict, **kw) -> httpx.Response:
    return httpx.post(studio[0].url + path, data=data, timeout=30, **kw)


def cards(html: str) -> list[str]:
    return re.findall(r'<div class="card" data-name="([^"]+)"', html)


def card_html(html: str, name: str) -> str:
    """One card's HTML: from its opening to the next card (or the end of the grid)."""
    start = html.index(f'<div class="card" data-name="{name}"')
    ends = [i for i in (html.find('<div class="card"', start + 10), html.find("</section>", start)) if i > 0]
    return html[start:min(ends)]


def test_dataset_shows_every_picture_as_it_will_be_trained(studio):
    page = get(studio, "/dataset")
    assert page.status_code == 200
    names = cards(page.text)
    # 5 per outfit, 2 extras kept (pose, the gif's 3 frames): every trained or held-out picture, once per folder
    assert "red_dress/red_dress_00" in names and "extras/pose" in names and "extras/wave0001" in names
    assert "extras/pose_resized" not in names  # dropped as a near-duplicate
    assert 'class="crop"' in page.text  # some picture loses a strip to the bucket crop
    assert 'class="mask"' in page.text and "/thumb/" in page.text
    card = card_html(page.text, "red_dress/red_dress_00")
    caption = re.sub(r"<form.*?</form>", "", card[card.index('class="caption"'):], flags=re.S)
    words = re.findall(r'<span class="(trigger|tag)">([^<]+)', caption)
    assert [w for k, w in words if k == "trigger"] == ["demo_chara", "demo_chara_red_dress"]
    assert words[0][0] == "trigger" and words[1][0] == "trigger"  # triggers first
    assert '<s class="pruned">red_dress</s>' in caption  # absorbed by the outfit trigger, shown struck through
    assert 'class="flag flag-small"' in card_html(page.text, "red_dress/red_dress_04")  # upscaled: too small


def test_dataset_filters_by_folder_tag_and_flag(studio):
    by_folder = cards(get(studio, "/dataset?folder=blue_uniform").text)
    assert by_folder and all(n.startswith("blue_uniform/") for n in by_folder)
    all_cards = cards(get(studio, "/dataset").text)
    tagged = get(studio, "/dataset?tag=white_background")
    assert 0 < len(cards(tagged.text)) < len(all_cards)
    assert re.search(r'data-tag="white_background">white_background</a> \d+', tagged.text)  # tag list with counts
    small = cards(get(studio, "/dataset?flag=small").text)
    assert "red_dress/red_dress_04" in small and "red_dress/red_dress_00" not in small
    assert get(studio, "/dataset?flag=nonsense").status_code == 400
    assert get(studio, "/dataset?page=x").status_code == 400


def test_picture_page_shows_provenance_with_parameters(studio):
    page = get(studio, "/dataset?folder=red_dress")
    sha = re.search(r'data-name="red_dress/red_dress_04" data-hash="([0-9a-f]{64})"', page.text).group(1)
    detail = get(studio, f"/picture/{sha}")
    assert detail.status_code == 200
    table = detail.text[detail.text.index('id="provenance"'):]
    assert "red_dress/red_dress_04" in table and "folder" in table  # the source file
    assert "<th>upscale</th>" in table  # its JPEG is kept byte for byte by convert: upscale is its first derivation
    assert "upscale factor" in detail.text
    assert get(studio, "/picture/" + "0" * 64).status_code == 404
    assert get(studio, "/picture/nothex").status_code == 400


def test_decisions_show_skips_duplicates_side_by_side(studio):
    page = get(studio, "/decisions").text
    group = page[page.index('data-kept="extras/pose"'):]
    assert 'data-name="extras/pose_resized"' in group and 'data-name="extras/pose_copy"' in group
    assert "notes.pdf" in page and "not an image" in page  # ingest's skip with its reason


def test_runs_show_stage_tables_and_the_prefect_link(studio, monkeypatch):
    monkeypatch.setenv("PREFECT_UI_URL", "http://127.0.0.1:4200")
    page = get(studio, "/runs").text
    assert re.search(r"<td>prune</td><td class=\"status\">ran</td>", page)
    assert 'id="prefect" href' not in page and 'href="http://127.0.0.1:4200"' in page
    assert get(studio, "/runs?a=nope&b=nope").status_code == 400


def test_edits_are_stored_listed_and_undone(studio):
    made = post(studio, "/edits", {"kind": "add_tags", "target": "red_dress/red_dress_00", "tags": "hat, sun_hat",
                                   "reason": "visible hat", "next": "/dataset"})
    assert made.status_code == 303 and made.headers["location"] == "/dataset"
    listed = get(studio, "/edits").text
    row = re.search(r'<tr class="edit" data-kind="add_tags" data-target="red_dress/red_dress_00"><td>(\d+)</td>', listed)
    assert row and "visible hat" in listed and "sun_hat" in listed
    crop = {"kind": "crop", "target": "red_dress/red_dress_00", "x0": "0.1", "y0": "0", "x1": "0.9", "y1": "0.5"}
    assert post(studio, "/edits", crop).status_code == 303
    assert 'data-kind="crop" data-target="red_dress/red_dress_00"' in get(studio, "/edits").text
    sha = re.search(r'data-name="red_dress/red_dress_00" data-hash="([0-9a-f]{64})"', get(studio, "/dataset").text)
    own = get(studio, f"/picture/{sha.group(1)}").text
    assert "visible hat" in own[own.index('id="picture-edits"'):]  # the picture's page lists its edits
    undone = post(studio, f"/edits/{row.group(1)}/undo", {"next": "/edits"})
    assert undone.status_code == 303
    assert re.search(r'<tr class="edit undone" data-kind="add_tags"', get(studio, "/edits").text)


@pytest.mark.parametrize("form, says", [
    ({"kind": "add_tags", "target": "red_dress/red_dress_00", "tags": "a|b"}, "has a &#39;|&#39;"),
    ({"kind": "add_tags", "target": "red_dress/red_dress_00", "tags": " , "}, "tags: give at least one tag"),
    ({"kind": "move", "target": "red_dress/red_dress_00", "folder": "../x"}, "is not a folder name"),
    ({"kind": "crop", "target": "red_dress/red_dress_00", "x0": "0", "y0": "0", "x1": "2", "y1": "1"}, "outside 0..1"),
    ({"kind": "crop", "target": "red_dress/red_dress_00", "x0": "a"}, "must be numbers"),
    ({"kind": "exclude", "target": "no/such_picture"}, "target"),
    ({"kind": "burn", "target": "red_dress/red_dress_00"}, "kind: unknown edit"),
])
def test_a_bad_edit_gets_a_clear_400(studio, form, says):
    answer = post(studio, "/edits", form)
    assert answer.status_code == 400
    assert says in re.search(r'<p class="error" id="error">(.*?)</p>', answer.text, re.S).group(1)


def test_serves_no_file_outside_the_work_dir(studio, tmp_path):
    served, recipe = studio
    work = recipe.parent / "work"
    secret = tmp_path / "secret.txt"
    secret.write_text("secret", encoding="utf-8")
    (work / "reports" / "out_link").unlink(missing_ok=True)
    (work / "reports" / "out_link").symlink_to(secret)
    (work / "reports" / "in_link").unlink(missing_ok=True)
    (work / "reports" / "in_link").symlink_to(work / "reports" / "buckets.md")
    assert get(studio, "/files/reports/buckets.md").status_code == 200
    assert get(studio, "/files/reports/in_link").status_code == 200
    for raw in ("/files/reports/out_link", "/files/..%2frecipe.toml", "/files/%2e%2e/%2e%2e/recipe.toml",
                "/files/reports/%2e%2e%2f%2e%2e%2frecipe.toml", "/files/%2Fetc%2Fpasswd", "/files//etc/passwd",
                f"/files/{secret}", "/files/reports", "/files/..%5crecipe.toml", "/thumb/..%2f..%2frecipe.toml/256",
                "/thumb/" + "a" * 64 + "/999", "/files/%00"):
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        conn.request("GET", raw)  # sent as written: no client normalises the dots away
        answer = conn.getresponse()
        body = answer.read()
        assert answer.status in (400, 404), raw
        assert b"secret" not in body and b"[project]" not in body and b"root:" not in body, raw


def test_a_form_posted_from_another_site_is_refused(studio):
    answer = post(studio, "/edits", {"kind": "exclude", "target": "red_dress/red_dress_00"},
                  headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403
    assert post(studio, "/edits/1/undo", {}, headers={"Origin": "http://evil.example"}).status_code == 403


def test_thumbnails_are_made_once_and_kept(studio):
    served, recipe = studio
    sha = re.search(r'data-hash="([0-9a-f]{64})"', get(studio, "/dataset").text).group(1)
    assert get(studio, f"/thumb/{sha}/256").headers["content-type"] == "image/jpeg"
    kept = recipe.parent / "work" / "review" / "thumbs" / sha[:2] / f"{sha}-256.jpg"
    made_at = kept.stat().st_mtime_ns
    assert get(studio, f"/thumb/{sha}/256").status_code == 200
    assert kept.stat().st_mtime_ns == made_at
    mask = re.search(r'/thumb/([0-9a-f]{64})/256\?mask=1', get(studio, "/dataset").text).group(1)
    overlay = get(studio, f"/thumb/{mask}/256?mask=1")
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).mode == "L"  # the mask's greyscale, for the overlay


def test_bakery_review_binds_localhost_by_default(studio):
    _, recipe = studio
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bakery.cli", "review", str(recipe), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/runs", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "bakery review did not start"
                time.sleep(0.3)
        assert answer.status_code == 200
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- the pure view models ------------------------------------------------------------------
def test_split_caption_and_pruned_tags():
    head, body = views.split_caption("chara, chara_red ||| smile, solo", ["chara", "chara_red"])
    assert head == ["chara", "chara_red"] and body == ["smile", "solo"]
    assert views.split_caption("smile, chara", ["chara"]) == ([], ["smile", "chara"])  # triggers only lead
    assert views.pruned_tags(["red_dress", "smile", "Long Hair"], ["smile"], ["chara"]) == ["red_dress", "Long Hair"]


def test_tags_an_edit_removed_are_not_called_pruned():
    from datetime import datetime, timezone

    from bakery.craft.edits import Edit

    def card(name: str, h: str, kept: list[str]) -> views.Card:
        return views.Card(name, name.replace("/", "_"), "red", 2, h * 64, None, "", ["chara_red"], kept)

    a, b, other = card("red/a", "a", ["smile", "hat"]), card("red/b", "b", ["solo"]), card("red/c", "c", ["smile"])
    sources = {"a" * 64: ["red_dress", "smile", "frown"], "b" * 64: ["red_dress", "smile", "solo"],
               "c" * 64: ["red_dress", "smile"]}
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    edits = [Edit(1, "remove_tags", "red/a", {"tags": ["frown"]}, "", now),
             Edit(2, "add_tags", "red/a", {"tags": ["hat"]}, "", now),
             Edit(3, "replace_tag", "red", {"old": "smile", "new": ""}, "", now)]  # bulk: every red picture
    views.fill_dropped([a, b, other], [a, b], sources, edits)
    assert a.removed == ["frown"] and a.pruned == ["red_dress"]  # smile still in a's caption (before the re-run)
    assert b.removed == ["smile"] and b.pruned == ["red_dress"]
    assert other.removed == other.pruned == []  # not shown: left as it was
    views.fill_dropped([a, b, other], [a], sources, [])  # undone: frown was pruned after all
    assert a.removed == [] and a.pruned == ["red_dress", "frown"]


def test_crop_fractions_follow_kohyas_centre_crop():
    resos = bucket_resolutions(512)
    choice = select_bucket(1920, 1080, resos)  # 683x384 -> 640x384: 21 px off each side
    x0, y0, x1, y1 = views.crop_fractions((1920, 1080), choice.bucket, choice.resized)
    assert (y0, y1) == (0.0, 1.0) and x0 == pytest.approx(21 / 683) and x1 == pytest.approx(661 / 683)
    assert views.crop_fractions((512, 512), (512, 512), (512, 512)) == (0.0, 0.0, 1.0, 1.0)


def test_keep_box_is_drawn_where_it_lies_on_the_picture_shown():
    choice = select_bucket(1920, 1080, bucket_resolutions(512))  # 683x384 -> 640x384
    keep = (0.0, 0.2, 0.05, 0.4)  # at the left edge: the crop moves left to keep it
    assert views.keep_fractions((1920, 1080), choice.bucket, choice.resized, keep) == keep  # the picture as it was
    x0, y0, x1, y1 = views.keep_fractions(choice.bucket, choice.bucket, choice.resized, keep)  # buckets pre-cropped it
    assert (x0, y0, y1) == (0.0, pytest.approx(0.2), pytest.approx(0.4)) and x1 == pytest.approx(0.05 * 683 / 640)
    centred = views.keep_fractions(choice.bucket, choice.bucket, choice.resized, (0.45, 0.4, 0.55, 0.6))
    assert centred[0] == pytest.approx((0.45 * 683 - 21) / 640)  # no shift needed: kohya's centre crop


def test_paging_filters_and_links():
    many = [views.Card(f"p{i:04d}", f"p{i:04d}", "a" if i % 2 else "b", 3, "0" * 64, None, "t, x", ["t"], ["x"])
            for i in range(2000)]
    page = views.paginate(views.filter_cards(many, views.Filters(folder="a")), 7)
    assert page.total == 1000 and page.pages == 17 and len(page.items) == views.PER_PAGE
    assert views.paginate(many, 99).number == 34 and views.paginate([], 3).pages == 1
    assert views.Filters("a", "x y", "", 1).query(page=2) == "?folder=a&tag=x+y&page=2"
    assert views.tag_counts(many[:3]) == [("x", 3)]
    assert views.folder_counts(many[:3]) == [("a", "3_a", 1), ("b", "3_b", 2)]


def test_prefect_dashboard_address():
    assert views.prefect_ui({}) is None
    assert views.prefect_ui({"PREFECT_API_URL": "http://h:4200/api"}) == "http://h:4200"
    assert views.prefect_ui({"PREFECT_UI_URL": "http://ui/", "PREFECT_API_URL": "http://h/api"}) == "http://ui"


def test_a_running_bake_holding_the_catalog_gives_a_busy_page_not_a_hang(studio):
    _, recipe = studio
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom storage import Catalog\n"
         f"with Catalog.open({str(recipe.parent / 'work')!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        answer = get(studio, "/decisions")
        assert answer.status_code == 503 and "the catalog is busy" in answer.text
    finally:
        holder.kill()
        holder.wait()
    assert get(studio, "/decisions").status_code == 200  # free again: nothing kept it open
