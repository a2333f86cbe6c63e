"""The recipe model: guide defaults, and errors that name the key and the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bakery.recipe import Recipe, RecipeError, load_recipe, parse_recipe, starter_recipe_text
from bakery.recipe.paths import resolve_paths


def problems(data: dict) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, Path("."))
    return info.value.problems


def test_defaults_follow_the_guide():
    r = Recipe()
    assert r.buckets.resolution == 512 and (r.buckets.min_side, r.buckets.max_side, r.buckets.step) == (256, 1024, 64)
    assert (r.train.network_dim, r.train.network_alpha, r.train.epochs) == (32, 16.0, 8)
    assert r.train.optimizer == "prodigy" and r.train.effective_learning_rate == 1.0
    assert r.train.model_copy(update={"optimizer": "adamw"}).effective_learning_rate == 1e-4
    assert r.ingest.max_pixels == 178_956_970
    assert r.evaluate.weights == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_bad_value_names_key_path_and_reason():
    assert problems({"train": {"network_dim": -4}}) == ["train.network_dim: must be > 0, got -4"]


def test_unknown_keys_are_refused_with_their_path():
    assert problems({"train": {"netwrok_dim": 8}}) == ["train.netwrok_dim: unknown key"]
    assert problems({"sources": [{"kind": "folder", "path": "x", "recurse": True}]}) == [
        "sources[0].recurse: unknown key"
    ]


def test_every_problem_is_listed_at_once():
    found = problems({"train": {"epochs": 0, "optimizer": "sgd"}, "buckets": {"resolution": 500}})
    assert "train.epochs: must be > 0, got 0" in found
    assert any(p.startswith("train.optimizer: must be one of") and "'sgd'" in p for p in found)
    assert any(p.startswith("buckets: ") and "multiple of step" in p for p in found)


def test_missing_required_key_and_bad_trigger():
    assert problems({"concepts": [{"name": "a"}]}) == ["concepts[0].trigger: required key is missing"]
    assert problems({"concepts": [{"name": "a", "trigger": "x, y"}]}) == [
        "concepts[0].trigger: must be a single tag (no commas)"
    ]


def test_duplicate_concept_names_are_refused():
    data = {"concepts": [{"name": "a", "trigger": "t1"}, {"name": "a", "trigger": "t2"}]}
    assert any("repeated: a" in p for p in problems(data))


def test_toml_syntax_error_and_missing_file(tmp_path: Path):
    bad = tmp_path / "r.toml"
    bad.write_text("[train\nx=1", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.toml")


def test_paths_are_relative_to_the_recipe_file(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.toml"
    path.write_text('[project]\nworkdir = "w"\n[[sources]]\nkind = "folder"\npath = "imgs"\n', encoding="utf-8")
    r = load_recipe(path)
    assert r.workdir == (tmp_path / "sub" / "w").resolve()
    assert r.resolve(r.sources[0].path) == (tmp_path / "sub" / "imgs").resolve()


def test_starter_recipe_is_valid_and_states_the_defaults():
    data = tomllib.loads(starter_recipe_text())
    r = parse_recipe(data, Path("."))
    # Every value the starter writes out is the model's default.
    defaults = resolve_paths(Recipe(sources=r.sources, concepts=r.concepts), Path(".").resolve())  # paths as read
    assert r.model_dump(exclude={"sources", "concepts"}) == defaults.model_dump(exclude={"sources", "concepts"})


def test_digest_changes_with_any_parameter():
    assert Recipe().digest() == Recipe().digest()
    assert Recipe().digest() != Recipe(train={"epochs": 9}).digest()


def test_source_kind_is_required_and_checked():
    assert problems({"sources": [{"path": "x"}]}) == ["sources[0]: 'kind' is missing"]
    (line,) = problems({"sources": [{"kind": "flickr", "path": "x"}]})
    assert line.startswith("sources[0]: kind must be one of") and "'flickr'" in line
