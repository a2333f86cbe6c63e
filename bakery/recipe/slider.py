"""The recipe's [slider] section: a LECO slider trained from prompts alone."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from bakery.recipe.base import _Section


class SliderParams(_Section):
    """A slider (LECO, rules.md "LECO ou Sliders"): no pictures; the slide stage trains from the target and its two extremes."""

    target: Annotated[str, Field(min_length=1)]  # the class the slider moves, e.g. "skirt"
    positive: Annotated[list[str], Field(min_length=1)]  # strength +2 side, e.g. ["long_skirt"]
    negative: Annotated[list[str], Field(min_length=1)]  # strength -2 side, e.g. ["microskirt", "lowleg_skirt"]
    anchors: list[str] = []  # prompts the slider must leave as the base model draws them, at any strength
    # The prediction the slider moves from; None = the target (Concept Sliders). ai-toolkit and LECO default to "".
    neutral: str | None = None
    # Square training size in pixels (latents are 1/8 of it); None = by base model: 512 SD1.5, 1024 SDXL
    # (set 768 for a model trained at 768 px).
    resolution: Annotated[int, Field(ge=64, multiple_of=8)] | None = None
    steps: Annotated[int, Field(gt=0)] = 500  # the guide: a LECO burned well before 500 steps
    learning_rate: Annotated[float, Field(gt=0)] = 1e-4  # the guide: 1e-4 or a little less (2e-4 was too high)
    save_every_n_steps: Annotated[int, Field(gt=0)] = 50
    network_dim: Annotated[int, Field(gt=0)] = 8
    network_alpha: Annotated[float, Field(gt=0)] = 4.0
    guidance: Annotated[float, Field(gt=0)] = 1.0  # eta: how far +1 moves along (positive - negative)
    max_denoising_steps: Annotated[int, Field(ge=2)] = 50  # x_t: noise denoised 1..N-1 of N steps, CFG 3
    # auto: bf16 where supported, else fp32. Never fp16: it gives NaN losses (the guide).
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    save_precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    # Taste: strengths x saved steps x evaluate.seeds, rendered with the [evaluate] sampler, steps, CFG, size.
    strengths: Annotated[list[Annotated[float, Field(ge=-2, le=2)]], Field(min_length=2)] = [-2.0, -1.0, -0.5, 0.0,
                                                                                             0.5, 1.0, 2.0]
    prompts: list[str] = []  # [] = the target alone
    # Overcooked: a save whose extremes moved less than this share of their distance from strength 0 since the
    # save before (the guide: "when the extremes stop changing, it is overcooked").
    still_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.05
    # Tag judges: positive tags must rise, negative tags fall, by more than this from the lowest to the highest strength.
    tag_margin: Annotated[float, Field(ge=0, le=1)] = 0.1

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _never_fp16(cls, value: Any) -> Any:
        if value == "fp16":
            raise ValueError("fp16 gives NaN losses for sliders (the guide): use 'auto' (bf16 where supported, "
                             "else fp32), 'bf16' or 'no'")
        return value

    @property
    def positive_prompt(self) -> str:
        return ", ".join(self.positive)

    @property
    def negative_prompt(self) -> str:
        return ", ".join(self.negative)
