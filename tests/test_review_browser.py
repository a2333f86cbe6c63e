"""The review studio in a real browser (Debian's chromium + chromium-driver, driven by selenium).

Open the dataset, filter by a tag, edit tags, exclude a picture, keep a near-duplicate; then
`bakery run` again and check that the kohya export changed exactly as edited and that only the
stages the edits concern did work.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from bakery.kohya_export import export_kohya
from bakery.recipe import load_recipe
from bakery.review import create_app
from storage import Catalog
from tests.review_work import RECIPE, Served, demo_work, run_recipe

selenium = pytest.importorskip("selenium", reason="pip install selenium (the test extra)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (make browser)"),
]
# No masks here: the model is the slow part, and this test is about the edits.
NO_MASKS = re.sub(r"\[masks\]\n(?:[^\[\n][^\n]*\n)*", "", RECIPE)


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="bakery-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def exported(recipe: Path, out: Path) -> dict[tuple[str, str], bytes]:
    """(folder without its repeats, file) -> bytes of a kohya export of the recipe's last training set."""
    export_kohya(load_recipe(recipe), out, force=True)
    return {(p.parent.name.split("_", 1)[1], p.name): p.read_bytes() for p in (out / "img").rglob("*") if p.is_file()}


def submit(driver, form, wait_for: str | None = None) -> None:
    """Submit a form by its button and wait for the next page."""
    old = driver.find_element(By.TAG_NAME, "html")
    form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(driver, 30).until(lambda d: old != d.find_element(By.TAG_NAME, "html"))
    assert not driver.find_elements(By.ID, "error"), driver.find_element(By.ID, "error").text


def card(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f'div.card[data-name="{name}"]')


def edit_in_browser(driver, url: str) -> None:
    driver.get(url + "/dataset")
    everyone = len(driver.find_elements(By.CSS_SELECTOR, "div.card"))
    driver.find_element(By.CSS_SELECTOR, 'a[data-tag="white_background"]').click()  # filter by a tag
    WebDriverWait(driver, 30).until(lambda d: "tag=white_background" in d.current_url)
    tagged = driver.find_elements(By.CSS_SELECTOR, "div.card")
    assert 0 < len(tagged) < everyone
    names = [c.get_attribute("data-name") for c in tagged]
    assert all("white_background" in c.find_element(By.CSS_SELECTOR, ".caption").text for c in tagged)
    untag = next(n for n in names if n.startswith("red_dress/"))
    # edit a tag: remove it from one picture (its x button), add one to another
    submit(driver, card(driver, untag).find_element(By.XPATH, './/button[@data-remove="white_background"]/..'))
    assert "tag=white_background" in driver.current_url  # back on the filtered page
    driver.get(url + "/dataset?folder=blue_uniform")
    add = card(driver, "blue_uniform/blue_uniform_01").find_element(By.CSS_SELECTOR, "form.add-tags")
    add.find_element(By.NAME, "tags").send_keys("sun_hat")
    submit(driver, add)
    exclude = card(driver, "blue_uniform/blue_uniform_02").find_element(By.CSS_SELECTOR, "form.exclude")
    exclude.find_element(By.NAME, "reason").send_keys("blurry")
    submit(driver, exclude)
    driver.get(url + "/decisions")
    keep = driver.find_element(By.CSS_SELECTOR, 'div.dropped[data-name="extras/pose_resized"] form.keep')
    submit(driver, keep)
    driver.get(url + "/edits")
    rows = [(r.get_attribute("data-kind"), r.get_attribute("data-target"))
            for r in driver.find_elements(By.CSS_SELECTOR, "tr.edit")]
    assert rows == [("remove_tags", untag), ("add_tags", "blue_uniform/blue_uniform_01"),
                    ("exclude", "blue_uniform/blue_uniform_02"), ("keep_duplicate", "extras/pose_resized")]
    return untag


def test_review_edits_in_a_browser_change_the_next_run_exactly(tmp_path: Path, browser):
    recipe = demo_work(tmp_path / "demo")
    recipe.write_text(NO_MASKS, encoding="utf-8")
    run_recipe(recipe)
    before = exported(recipe, tmp_path / "before")
    with Served(create_app(recipe)) as served:
        untag = edit_in_browser(browser, served.url)
        run_id = run_recipe(recipe)  # the studio holds no catalog connection between requests
        browser.get(served.url + "/runs")  # the tag statistics' diff between the two runs
        diff = browser.find_element(By.ID, "tag-diff").text
        assert "sun_hat (1)" in diff and "white_background" in diff
        browser.get(served.url + "/dataset?folder=red_dress")  # the removed tag: the edit's, not pruning's
        caption = card(browser, untag).find_element(By.CSS_SELECTOR, ".caption")
        assert [s.text for s in caption.find_elements(By.CSS_SELECTOR, "s.removed")] == ["white_background"]
        assert "white_background" not in [s.text for s in caption.find_elements(By.CSS_SELECTOR, "s.pruned")]
    after = exported(recipe, tmp_path / "after")

    flat = lambda name: name.replace("/", "_")  # noqa: E731 - the picture's file name in its kohya folder
    untagged, tagged = ("red_dress", flat(untag) + ".txt"), ("blue_uniform", "blue_uniform_blue_uniform_01.txt")
    gone = {k for k in before if k[1].startswith("blue_uniform_blue_uniform_02.")}
    new = {k for k in after if k[1].startswith("extras_pose_resized.")}
    assert gone and new and not gone & set(after) and not new & set(before)
    assert set(after) == (set(before) - gone) | new
    changed = {k for k in after if k in before and after[k] != before[k]}
    assert changed == {untagged, tagged}  # every other file byte for byte the same
    assert "white_background" in before[untagged].decode() and "white_background" not in after[untagged].decode()
    assert after[tagged].decode().strip().endswith("sun_hat") or "sun_hat" in after[tagged].decode().split(", ")

    with Catalog.open(recipe.parent / "work", read_only=True) as cat:
        stages = {s["stage"]: s for s in cat.stage_table(run_id)}
    assert stages["ingest"]["status"] == stages["convert"]["status"] == "cached"
    assert stages["dedupe"]["status"] == "ran" and stages["prune"]["status"] == "ran"
    for stage in ("alpha", "trim", "upscale", "autotag"):  # per-picture work: only the kept near-duplicate is new
        assert stages[stage]["n_processed"] <= 1, stage
    assert stages["buckets"]["n_in"] == stages["dedupe"]["n_out"]  # its report is over the set (no picture work)
