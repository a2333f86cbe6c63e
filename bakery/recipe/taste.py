"""The recipe's taste sections: [evaluate] (the XYZ grid and its judges) and [trigger_check]."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bakery.recipe.base import _Section


class EvaluateParams(_Section):
    # rules.md §13: an XYZ grid of the last epochs x LoRA weights with fixed seeds and prompts.
    # [] = each trigger alone, and each trigger with its group's `tags_per_prompt` most frequent kept tags.
    prompts: list[str] = []
    # Put before every evaluation prompt (the recipe's and the default ones), e.g. Pony's score tags.
    prompt_prefix: str = ""
    negative_prompt: str = "lowres, bad anatomy, worst quality"
    weights: Annotated[list[Annotated[float, Field(ge=0, le=2)]], Field(min_length=1)] = [0.0, 0.25, 0.5, 0.75, 1.0]
    seeds: Annotated[list[int], Field(min_length=1)] = [1234, 5678]
    # The last K saved epochs; None = all of them.
    last_epochs: Annotated[int, Field(gt=0)] | None = None
    tags_per_prompt: Annotated[int, Field(ge=0)] = 3
    sampler: Literal["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim"] = "euler_a"
    steps: Annotated[int, Field(gt=0)] = 20
    cfg_scale: Annotated[float, Field(gt=0)] = 7.0
    width: Annotated[int, Field(ge=64, multiple_of=8)] = 512
    height: Annotated[int, Field(ge=64, multiple_of=8)] = 512
    # Effect check: weight 0 vs 1 closer than this (mean |pixel difference|, 0-255) = "LoRA does nothing".
    effect_min: Annotated[float, Field(ge=0)] = 1.0
    # Frying: the largest rise of saturation/contrast/high-frequency energy over weight 0 (0-1 scale)
    # that counts as fried; frying at a weight <= fry_max_weight means over-trained (rules.md §13).
    fry_threshold: Annotated[float, Field(gt=0, le=1)] = 0.25
    fry_max_weight: Annotated[float, Field(ge=0, le=2)] = 0.5
    # Loss rule: a relative rise above this between epochs counts as "rising"; a range below flat_tolerance is flat.
    loss_rise_tolerance: Annotated[float, Field(ge=0)] = 0.01
    loss_flat_tolerance: Annotated[float, Field(ge=0)] = 0.02
    # Likeness: a local CLIP or DINOv2 model folder (transformers format); None = colour-histogram proxy.
    likeness_model: str | None = None
    likeness_references: Annotated[int, Field(gt=0)] = 16  # training images per trigger compared against
    # Effect relative to seed variation: effect over the change between seeds at weight 0 below this =
    # "LoRA does nothing" (with one seed, one more base render per prompt measures that change).
    effect_min_ratio: Annotated[float, Field(ge=0)] = 0.2
    # Flexibility (needs [autotag] model): prompts asking the character for what the training set does not
    # show; "{trigger}" = each character trigger. None: one of bakery/craft/taste/judges/tags.py FLEX_DEFAULTS each; [] = off.
    flexibility_prompts: list[str] | None = None
    # Tag judges: a rise of bleed, or a drop of flexibility, over weight 0 bigger than this is flagged.
    tag_margin: Annotated[float, Field(gt=0, le=1)] = 0.25
    # Ranking: (epoch, weight) cells scoring within this of the best are tied (the data cannot tell them apart).
    rank_tolerance: Annotated[float, Field(ge=0, le=1)] = 0.05
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TriggerCheckParams(_Section):
    """Is each trigger free? (rules.md §10, §13) Before bake, the base model renders every trigger alone over `seeds` seeds, and `controls` nonsense words likewise: (triggers + controls) x seeds renders. Judged by the [autotag] tagger and/or evaluate.likeness_model; with neither the check is skipped."""

    enabled: bool = True
    seeds: Annotated[int, Field(ge=2, le=64)] = 4  # renders per trigger (seeds 0 .. seeds-1)
    controls: Annotated[int, Field(ge=1, le=16)] = 3  # random nonsense words rendered as the "free" reference
    control_seed: int = 0  # which nonsense words (the same seed, the same words)
    steps: Annotated[int, Field(gt=0)] = 20
    size: Annotated[int, Field(ge=64, multiple_of=8)] = 512  # square renders, pixels
    cfg_scale: Annotated[float, Field(gt=0)] = 7.0
    sampler: Literal["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim"] = "euler_a"
    negative_prompt: str = "lowres, bad anatomy, worst quality"
    # A tag in >= this share of a trigger's renders (and in under half this share of the controls') is drawn.
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.75
    # Embedding: the trigger's renders this much more alike (mean pairwise cosine) than the controls' = consistent.
    embedding_margin: Annotated[float, Field(ge=0, le=2)] = 0.1
    error_on_contaminated: bool = False  # False: a contaminated trigger is a warning; True: it fails the run
