"""Base-model families (`train.family`): the defaults they fill, what the recipe keeps, the Pony prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakery.craft.taste import tasting
from bakery.manifest import BakeOutput, TrainImage, TrainSet
from bakery.recipe import EvaluateParams, RecipeError, parse_recipe
from bakery.recipe.families import FAMILIES, PONY_SCORE_TAGS


def recipe(train: dict, **sections):
    return parse_recipe({"train": train, **sections}, Path("."))


@pytest.mark.parametrize("family", ["sdxl", "pony", "illustrious", "noobai", "noobai_vpred"])
def test_every_sdxl_family_sets_the_guides_sdxl_advice(family):
    r = recipe({"family": family})
    assert r.train.architecture == "sdxl" and r.train.clip_skip == 2
    assert (r.buckets.resolution, r.buckets.max_side, r.evaluate.width, r.evaluate.height) == (1024, 2048, 1024, 1024)
    assert r.repeats.sdxl  # x1/2 steps (rules.md §8)
    assert r.train.optimizer == "prodigy" and r.train.train_text_encoder is False  # UNet only with Prodigy (§12)
    assert (r.train.v_parameterization, r.train.zero_terminal_snr) == (
        (True, True) if family == "noobai_vpred" else (None, None))


def test_the_recipe_wins_over_its_family():
    r = recipe({"family": "pony", "optimizer": "adamw", "clip_skip": 1, "keep_tokens": 9},
               buckets={"resolution": 768}, evaluate={"width": 768, "prompt_prefix": "score_9"},
               captions={"prefix_tags": ["score_9"]}, repeats={"sdxl": False})
    assert r.train.train_text_encoder is True  # AdamW: the text encoder trains
    assert (r.train.clip_skip, r.train.keep_tokens, r.buckets.resolution, r.evaluate.width) == (1, 9, 768, 768)
    assert r.evaluate.height == 1024 and r.evaluate.prompt_prefix == "score_9" and r.captions.prefix_tags == ["score_9"]
    assert r.repeats.sdxl is False
    assert recipe({"family": "sdxl", "train_text_encoder": True}).train.train_text_encoder is True
    # A profile's optimizer counts: sdxl_12gb is Prodigy.
    assert recipe({"family": "illustrious", "profile": "sdxl_12gb"}).train.train_text_encoder is False
    assert recipe({}).train.architecture == "auto" and FAMILIES["none"] == {}


def test_pony_prefixes_and_keep_tokens():
    r = recipe({"family": "pony"})
    assert r.captions.prefix_tags == PONY_SCORE_TAGS and r.train.keep_tokens == 1 + len(PONY_SCORE_TAGS)
    assert r.evaluate.prompt_prefix == ", ".join(PONY_SCORE_TAGS)
    with pytest.raises(RecipeError, match=r"train.keep_tokens \(1\) must be >= 7"):
        recipe({"family": "pony", "keep_tokens": 1})
    # With `|||` the head is everything before it: keep_tokens does not matter.
    assert recipe({"family": "pony", "keep_tokens": 1}, captions={"keep_tokens_separator": True})
    with pytest.raises(RecipeError, match="base_model 'tiny' is SD1.5-shaped"):
        recipe({"family": "pony", "base_model": "tiny"})


def test_evaluation_prompts_start_with_the_prefix_and_do_not_repeat_it():
    head = ", ".join(PONY_SCORE_TAGS)
    train = TrainSet([TrainImage("chara", f"i{i}", f"h{i}", f"{head}, bakery_girl, red_dress, smile", 1)
                      for i in range(3)], ["bakery_girl"])
    bake = BakeOutput(name="t", base_model="m", architecture="sdxl", files={}, bake_key="k", triggers=["bakery_girl"])
    prompts = tasting.evaluation_prompts(bake, train, EvaluateParams(prompt_prefix=head, tags_per_prompt=1), {})
    assert prompts == [f"{head}, bakery_girl", f"{head}, bakery_girl, red_dress"]
    mine = tasting.evaluation_prompts(bake, train, EvaluateParams(prompt_prefix=head, prompts=["x, y"]), {})
    assert mine == [f"{head}, x, y"]
    assert tasting.evaluation_prompts(bake, train, EvaluateParams(prompts=["x"]), {}) == ["x"]
