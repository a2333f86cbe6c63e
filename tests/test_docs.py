"""The documentation builds without a broken link, and the README's links and first recipe hold."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from bakery.recipe import parse_recipe

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_docs_build_strict(tmp_path):
    # From the repository root: mkdocs.yml is there, and the pages' snippets name files relative to it.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_readme_links_point_at_files():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "the README links to its docs pages"
    broken = [t for t in targets if not re.match(r"[a-z]+:|#", t) and not (ROOT / t.split("#")[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_readme_first_recipe_parses(tmp_path):
    block = re.search(r"## A first real recipe.*?```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    recipe = parse_recipe(tomllib.loads(block), tmp_path)
    assert [c.name for c in recipe.concepts] == ["CharaA"]
    assert recipe.concepts[0].outfits[0].trigger == "navy_serafuku"
    assert recipe.train.profile == "sd15_8gb"
