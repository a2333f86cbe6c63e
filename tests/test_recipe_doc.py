"""The README's recipe reference is generated from the model and must match it."""

from pathlib import Path

from bakery.recipe import Recipe
from bakery.recipe_doc import readme_block, reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_reference_is_current():
    assert readme_block(README) == reference_markdown(), "run `bakery recipe-doc --write README.md`"


def test_reference_lists_every_key_with_its_default():
    text = reference_markdown()
    for section, model in Recipe.model_fields.items():
        assert f"[{section}" in text
    assert "| `train.network_dim` | int (> 0) | `32` |" in text
    assert "| `sources[].path` | Path | **required** |" in text
