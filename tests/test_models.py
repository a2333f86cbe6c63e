"""`bakery models`: every model key listed; known defaults pulled from a hub (here a local one that answers as the
hub does) into the hub's cache, sha256 checked, a cut download resumed; `use` writes the key, comments kept."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bakery.models import DEFAULTS, ModelError, model_keys, pull
from bakery.recipe.edit import set_key
from bakery.recipe.model import load_recipe
from tests.hub_server import FakeHub

ROOT = Path(__file__).resolve().parent.parent
FACE = DEFAULTS["crops.face_model"]
FACE_KEY = f"{FACE.repo}/{FACE.files[0]}"
CONTENT = bytes(range(256)) * 4096  # 1 MiB, not all one byte: a resumed file with a hole would differ

RECIPE = """# my recipe
[project]
name = "chara"   # the name

[train]
# the base: an SD1.5 file
base_model = "old.safetensors"  # was this one
epochs = 4
"""


def _bakery(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakery.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_a_default_is_pulled_into_the_hub_cache_and_checked(tmp_path, monkeypatch):
    with FakeHub({FACE_KEY: CONTENT}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = pull("crops.face_model", cache_dir=tmp_path / "hub")
    assert path.read_bytes() == CONTENT and (tmp_path / "hub") in path.parents
    assert path.name == "model.onnx"


def test_a_cut_download_resumes_where_it_stopped(tmp_path, monkeypatch):
    big = CONTENT * 24  # 24 MiB cut at 12: past the hub client's 10 MiB chunk, so some of it was kept
    with FakeHub({FACE_KEY: big}, cut={FACE_KEY}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = pull("crops.face_model", cache_dir=tmp_path / "hub")
    gets = [r for r in hub.requests if r[0] == "GET"]
    assert len(gets) == 2 and gets[0][2] is None
    resumed_at = int(gets[1][2].removeprefix("bytes=").removesuffix("-"))  # the second asked for the rest only
    assert 0 < resumed_at <= len(big) // 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(big).hexdigest()


def test_a_file_whose_sha256_is_not_the_hubs_is_refused_and_removed(tmp_path, monkeypatch):
    with FakeHub({FACE_KEY: CONTENT}, lie={FACE_KEY}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ModelError, match=r"crops.face_model: .*sha256 .*not the hub's .*refused"):
            pull("crops.face_model", cache_dir=tmp_path / "hub")
    assert not [p for p in (tmp_path / "hub").rglob("*") if p.is_file() and p.name == "model.onnx"]


def test_a_pinned_sha256_wins_over_the_hubs(tmp_path, monkeypatch):
    up = DEFAULTS["upscale.model"]
    with FakeHub({f"{up.repo}/{up.files[0]}": CONTENT}) as hub:  # the hub's ETag matches, the pin does not
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ModelError, match="not pinned"):
            pull("upscale.model", cache_dir=tmp_path / "hub")


def test_a_base_model_is_never_pulled_without_being_named(tmp_path):
    with pytest.raises(ModelError, match="never pulled without being named"):
        pull("train.base_model", cache_dir=tmp_path)
    assert not any(k.startswith("train.") for k in DEFAULTS)


def test_pull_writes_an_unset_key_and_list_shows_every_key(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    with FakeHub({FACE_KEY: CONTENT}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub")}
        done = _bakery("models", "pull", str(recipe), "crops.face_model", env=env)
        assert done.returncode == 0, done.stderr
        listed = _bakery("models", "list", str(recipe), env=env)
    face = load_recipe(recipe).crops.face_model
    assert face.read_bytes() == CONTENT and (tmp_path / "hub") in face.parents
    assert recipe.read_text(encoding="utf-8").startswith(RECIPE)  # the user's text and comments kept
    for key in model_keys():
        assert key in listed.stdout
    assert "present, 1.0 MB" in listed.stdout and "MISSING" in listed.stdout  # face model; old.safetensors
    assert "not set" in listed.stdout and "deepghs/anime_person_detection" in listed.stdout


def test_use_writes_the_key_relative_to_the_recipe_and_keeps_comments(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "anime.safetensors").write_bytes(b"x")
    done = _bakery("models", "use", str(recipe), "train.base_model", str(tmp_path / "models" / "anime.safetensors"),
                   env={})
    assert done.returncode == 0, done.stderr
    assert recipe.read_text(encoding="utf-8") == RECIPE.replace(
        'base_model = "old.safetensors"  # was this one', 'base_model = "models/anime.safetensors"  # was this one')
    refused = _bakery("models", "use", str(recipe), "masks.checkpoint", str(tmp_path / "nothing.pth"), env={})
    assert refused.returncode == 1 and "does not exist" in refused.stderr
    assert "[masks]" not in recipe.read_text(encoding="utf-8")


def test_set_key_adds_a_section_and_refuses_what_it_cannot_edit_safely(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    set_key(recipe, "masks.checkpoint", "C:\\models\\ckpt_base.pth")
    assert load_recipe(recipe).masks.checkpoint.name.endswith("ckpt_base.pth")
    assert recipe.read_text(encoding="utf-8").startswith(RECIPE)
    dotted = 'train.base_model = "a.safetensors"\n'
    recipe.write_text(dotted, encoding="utf-8")
    with pytest.raises(ValueError, match="set it by hand"):
        set_key(recipe, "train.base_model", "b.safetensors")
    assert recipe.read_text(encoding="utf-8") == dotted


def test_pull_all_fetches_every_default_but_no_base_and_goes_on_past_a_refused_file(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    keys = [k for k in DEFAULTS if k in model_keys()]
    files = {f"{DEFAULTS[k].repo}/{f}": CONTENT + k.encode() for k in keys for f in DEFAULTS[k].files}
    with FakeHub(files) as hub:  # the upscaler's pinned sha256 is not this content's
        done = _bakery("models", "pull", str(recipe), "all",
                       env={"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert done.returncode == 1 and "upscale.model" in done.stderr and "not pinned" in done.stderr
    asked = {r[1] for r in hub.requests if not r[1].startswith("/")}  # files (the client's own API calls aside)
    assert asked == set(files)  # every default, and nothing else
    loaded = load_recipe(recipe)
    assert loaded.upscale.model is None and loaded.upscale.backend == "lanczos"
    assert (Path(loaded.autotag.model) / "model.onnx").is_file()  # the tagger's folder
    assert loaded.crops.halfbody_model.read_bytes() == CONTENT + b"crops.halfbody_model"
    assert loaded.train.base_model == str(tmp_path / "old.safetensors")  # untouched
