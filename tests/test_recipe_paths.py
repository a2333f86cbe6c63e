"""Every path key of the recipe is resolved against the recipe's folder, whatever the shell's working folder, in
one place (bakery/recipe/paths.py); hub ids and "tiny" stay as written."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from bakery.recipe.model import Recipe, load_recipe
from bakery.recipe.paths import MODEL_REFS, path_keys

MODEL_WORDS = ("model", "vae", "encoder", "tokenizer", "adapter", "checkpoint")


def _set(data: dict, key: str, value: str) -> None:
    section, name = key.split(".")
    if section == "sources":
        data.setdefault("sources", []).append({"kind": "folder", "path": value})
    else:
        data.setdefault(section, {})[name] = value


def _toml(data: dict) -> str:
    lines = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines += [f"[[{section}]]"] + [f'{k} = "{v}"' for k, v in item.items()]
        else:
            lines += [f"[{section}]"] + [f'{k} = "{v}"' for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _value(recipe: Recipe, key: str):
    section, name = key.split(".")
    node = getattr(recipe, section)
    return getattr(node[0] if isinstance(node, list) else node, name)


def test_every_path_key_is_resolved_against_the_recipe_folder_from_another_working_folder(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    data: dict = {}
    keys = path_keys(Recipe)
    for i, key in enumerate(keys):
        relative = f"models/k{i}_{key.replace('.', '_')}.safetensors"
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_bytes(b"x")
        _set(data, key, relative)
    (project / "recipe.toml").write_text(_toml(data), encoding="utf-8")
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(Path("..") / "project" / "recipe.toml")
    for i, key in enumerate(keys):
        value = Path(str(_value(recipe, key)))
        assert value.is_absolute() and value.is_file(), key
        assert value == (project / f"models/k{i}_{key.replace('.', '_')}.safetensors").resolve(), key
    assert {"train.base_model", "train.vae", "train.text_encoder", "train.llm_adapter", "train.t5_tokenizer",
            "project.workdir", "sources.path", "autotag.model", "masks.checkpoint", "upscale.model",
            "crops.face_model", "crops.person_model"} <= set(keys)


@pytest.mark.parametrize("written, expected", [
    ("tiny", "tiny"),
    ("runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),  # a hub id stays a hub id
    ("models/anime.safetensors", "{project}/models/anime.safetensors"),   # the README's example, not there yet
    ("./sd15", "{project}/sd15"),
    ("sub/folder/model", "{project}/sub/folder/model"),
])
def test_a_model_key_is_a_path_or_a_hub_id(tmp_path, monkeypatch, written, expected):
    (tmp_path / "recipe.toml").write_text(f'[train]\nbase_model = "{written}"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path.parent)
    recipe = load_recipe(tmp_path / "recipe.toml")
    assert recipe.train.base_model == expected.format(project=tmp_path.resolve())


def test_a_hub_id_shaped_folder_beside_the_recipe_is_the_folder(tmp_path, monkeypatch):
    (tmp_path / "org" / "tagger").mkdir(parents=True)
    (tmp_path / "recipe.toml").write_text('[autotag]\nmodel = "org/tagger"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path.parent)
    assert load_recipe(tmp_path / "recipe.toml").autotag.model == str((tmp_path / "org" / "tagger").resolve())


def test_a_variants_model_is_resolved_too(tmp_path, monkeypatch):
    (tmp_path / "recipe.toml").write_text(
        '[train]\nbase_model = "a.safetensors"\n[[variants]]\nname = "b"\n'
        'base_model = "b.safetensors"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path.parent)
    recipe = load_recipe(tmp_path / "recipe.toml")
    assert recipe.for_variant("b").train.base_model == str(tmp_path.resolve() / "b.safetensors")


def _str_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        args = typing.get_args(field.annotation) or (field.annotation,)
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):
                keys += _str_keys(a, f"{prefix}{name}.")
        if str in args:
            keys.append(f"{prefix}{name}")
    return keys


def test_no_model_key_escapes_resolution():
    """A new str key that names a model must join MODEL_REFS (or be typed Path)."""
    model_like = [k for k in _str_keys(Recipe) if any(w in k.split(".")[-1] for w in MODEL_WORDS)]
    assert set(model_like) <= set(MODEL_REFS), set(model_like) - set(MODEL_REFS)
