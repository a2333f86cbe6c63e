"""Rendering with Anima: taste's grids, regularisation, the trigger check (owner: anima-taste).

Through diffusers' `AnimaModularPipeline`, called as its blocks take it (`prompt`, `negative_prompt`, size, steps,
one generator per image, `output_type="np"`); CFG through its `guider` component (`ClassifierFreeGuidance`).

Samplers: Anima is a rectified-flow model, sampled with diffusers' `FlowMatchEulerDiscreteScheduler` and the
flow shift of the base's scheduler config (3.0 as sd-scripts samples Anima during training,
library/anima_train_utils.py `flow_shift`). The recipe's names map as:

- `euler`: flow-match Euler (the ODE step);
- `euler_a`: flow-match Euler with diffusers' `stochastic_sampling` (the ancestral form: predict the clean latents,
  re-noise them to the next sigma with fresh noise from the image's own generator);
- `dpmpp_2m`, `dpmpp_2m_karras`, `ddim`: refused in one line. The pipeline hands its scheduler a sigma schedule,
  which diffusers' DPM-Solver and DDIM schedulers do not take (and DDIM has no flow form).

The model card (circlestone-labs/Anima) recommends 30-50 steps at CFG 4-5 with er_sde (its default), euler_a or
dpmpp_2m_sde; recipe/families.py's `anima` family sets those for [evaluate], [trigger_check], [regularisation].

The pipeline pads the prompts of one call to the longest, so an image depends on the prompts drawn beside it:
the same for a recipe (the grid and the trigger check render the same batches every run; regularisation draws
one image per call).

Hand-written: `SeededFlowMatchEuler` only, because the pipeline's denoise loop calls `scheduler.step` without a
generator: the ancestral noise is drawn from the images' own generators, so an image depends on its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bakery.craft.bake.bases.family import Render

FLOW_SAMPLERS = {"euler": False, "euler_a": True}  # sampler name -> stochastic (ancestral) sampling


@dataclass(frozen=True)
class FlowSampling:
    """What Anima samples with (`Render.prediction`): rectified flow, the flow shift, the sampler."""

    sampler: str
    shift: float

    def describe(self) -> str:
        kind = "ancestral " if FLOW_SAMPLERS[self.sampler] else ""
        return f"rectified flow (velocity), {kind}flow-match Euler, flow shift {self.shift:g}"


def seeded_flow_match_euler() -> type:
    """diffusers' flow-match Euler whose ancestral noise comes from the render's generators (see the module)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class SeededFlowMatchEuler(FlowMatchEulerDiscreteScheduler):
        generators: Any = None

        def step(self, *args: Any, generator: Any = None, **kwargs: Any) -> Any:
            if generator is None and self.generators:
                generator = self.generators
            return super().step(*args, generator=generator, **kwargs)

    return SeededFlowMatchEuler


class AnimaRendering:
    """bases/family.py's `use_sampler`, `render`, `diffusers_loads_kohya`."""

    # diffusers' AnimaLoraLoaderMixin reads ComfyUI's `diffusion_model.` names only (kohya's `lora_unet_` keys
    # are dropped without a word, and alphas ignored): taste merges our files itself (networks/lycoris.py).
    diffusers_loads_kohya = False

    def use_sampler(self, pipe: Any, sampler: str, prediction: Any = None) -> FlowSampling:
        """Flow-match Euler (ancestral for `euler_a`) with the base's flow shift; other names refused."""
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} has no rectified-flow form in the Anima pipeline: set the "
                             f"sampler ([evaluate], [trigger_check], [regularisation]) to 'euler_a' or 'euler'")
        # a keyword, not a merged dict: from_config drops the keys its config lists under `_use_default_values`
        sched = seeded_flow_match_euler().from_config(pipe.scheduler.config,
                                                      stochastic_sampling=FLOW_SAMPLERS[sampler])
        pipe.update_components(scheduler=sched)
        return FlowSampling(sampler, float(sched.config.shift))

    def render(self, pipe: Any, job: Render) -> list[Any]:
        """One call of the modular pipeline; the guider's scale set to `job.cfg` first (1 turns CFG off)."""
        from diffusers import ClassifierFreeGuidance

        if float(pipe.guider.guidance_scale) != float(job.cfg):
            pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=float(job.cfg)))
        _quiet(pipe._blocks)  # `pipe.blocks` is a copy
        pipe.scheduler.generators = list(job.generators)
        try:
            images = pipe(prompt=list(job.prompts), negative_prompt=list(job.negatives), height=job.height,
                          width=job.width, num_inference_steps=job.steps, generator=list(job.generators),
                          output_type="np", output="images")
        finally:
            pipe.scheduler.generators = None
        return list(images)


def _quiet(block: Any) -> None:
    """No progress bars: the modular pipeline's own setter reaches its first level of blocks only."""
    if hasattr(block, "set_progress_bar_config"):
        block.set_progress_bar_config(disable=True)
    for sub in getattr(block, "sub_blocks", {}).values():
        _quiet(sub)
