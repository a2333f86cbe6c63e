"""The recipe reference page (docs/recipe.md) is generated from the model and must match it."""

from pathlib import Path

from bakery.recipe import Recipe
from bakery.recipe_doc import PAGE, reference_markdown, reference_page

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_page_is_current():
    assert (ROOT / PAGE).read_text(encoding="utf-8") == reference_page(), (
        "docs/recipe.md is stale: run `bakery recipe-doc --write docs/recipe.md` (or `bakery recipe-doc > docs/recipe.md`)"
    )


def test_reference_lists_every_key_with_its_default():
    text = reference_markdown()
    for section, model in Recipe.model_fields.items():
        assert f"[{section}" in text
    assert "| `train.network_dim` | int (> 0) | `32` |" in text
    assert "| `sources[].path` | Path | **required** |" in text
