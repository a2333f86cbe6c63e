"""What SD1.5 and SDXL share behind the base-model seam: a UNet on VAE latents, DDPM noise, CLIP text encoders.

`SDUNet` implements bases/family.py's `BaseFamily` for both; bases/sd15.py and bases/sdxl.py say where they
differ (pipeline class, text encoders, SDXL's pooled embedding and size conditioning, kohya's sgm names).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.bases import single_file
from bakery.craft.bake.bases.family import BaseFiles, Render
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.precision import Precision

SAMPLERS = ("euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim")  # the recipe's sampler names

if TYPE_CHECKING:
    from bakery.craft.bake.bases.family import Base, TimestepSampling


class TextEncoder:
    """Captions to UNet conditioning (hidden states, SDXL's pooled embedding), with clip skip (kohya's:
    penultimate layer + final norm for 2)."""

    def __init__(self, pipe: Any, architecture: str, clip_skip: int, device: str, cache: bool):
        self.pipe, self.arch, self.clip_skip, self.device = pipe, architecture, clip_skip, device
        self.cache: dict[str, Any] | None = {} if cache else None

    def _ids(self, tokenizer: Any, captions: list[str]) -> Any:
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def _encode(self, captions: list[str]) -> tuple[Any, Any]:
        import torch

        if self.arch == "sdxl":
            hidden = []
            pooled = None
            for tok, enc in ((self.pipe.tokenizer, self.pipe.text_encoder),
                             (self.pipe.tokenizer_2, self.pipe.text_encoder_2)):
                out = enc(self._ids(tok, captions), output_hidden_states=True)
                hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer, no final norm
                pooled = out[0]  # text_embeds of the projection model
            return torch.cat(hidden, dim=-1), pooled
        enc = self.pipe.text_encoder
        out = enc(self._ids(self.pipe.tokenizer, captions), output_hidden_states=True)
        if self.clip_skip == 1:
            return out.last_hidden_state, None
        norm = getattr(enc, "text_model", enc).final_layer_norm
        return norm(out.hidden_states[-self.clip_skip]), None

    def __call__(self, captions: list[str]) -> tuple[Any, Any]:
        import torch

        if self.cache is None:
            return self._encode(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            with torch.no_grad():
                hidden, pooled = self._encode(missing)
            for i, c in enumerate(missing):
                self.cache[c] = (hidden[i], None if pooled is None else pooled[i])
        hidden = torch.stack([self.cache[c][0] for c in captions])
        pooled = None if self.arch != "sdxl" else torch.stack([self.cache[c][1] for c in captions])
        return hidden, pooled


class SDUNet:
    """An SD-UNet family: the parts of bases/family.py's BaseFamily SD1.5 and SDXL share."""

    name = ""
    resolution = 512
    pipeline = ""  # diffusers' pipeline class name
    pipeline_kwargs: ClassVar[dict[str, Any]] = {}  # what every load of the pipeline passes
    te_prefixes: tuple[str, ...] = ()  # kohya's prefixes of the text encoders' modules
    sgm = False  # kohya names the UNet's modules in the original (sgm/LDM) layout
    diffusers_loads_kohya = True  # diffusers' SD/SDXL load_lora_weights converts kohya's names
    fp16 = True  # rules.md §12: fp16 (bf16 if supported)

    # -- loading --
    def load(self, source: str | Path, form: str, files: BaseFiles = BaseFiles(), **kwargs: Any) -> Any:
        import diffusers

        cls = getattr(diffusers, self.pipeline)
        kwargs = {**self.pipeline_kwargs, **kwargs}
        if form == "file":  # offline: the configs ship with the package
            pipe = single_file.load_single_file(cls, source, single_file.config_for(source, self.name), **kwargs)
        else:
            pipe = cls.from_pretrained(str(source), **kwargs)
        if files.vae:
            try:
                self.use_vae(pipe, files.vae)
            except Exception as exc:
                raise BakeError(f"cannot load train.vae {files.vae!r}: {type(exc).__name__}: {exc}") from exc
        return pipe

    def use_vae(self, pipe: Any, vae: str) -> None:
        from diffusers import AutoencoderKL

        path = Path(vae).expanduser()
        pipe.vae = (AutoencoderKL.from_single_file(str(path), config=str(single_file.shipped_config(self.name)),
                                                   subfolder="vae", local_files_only=True) if path.is_file()
                    else AutoencoderKL.from_pretrained(str(path)))

    # -- parts --
    def denoiser(self, pipe: Any) -> Any:
        return pipe.unet

    def text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder]

    def vae(self, pipe: Any) -> Any:
        return pipe.vae

    def conditioners(self, pipe: Any) -> list[Any]:
        return []

    # -- the noisy input and its target --
    def use_prediction(self, base: Base, v_parameterization: bool | None,
                       zero_terminal_snr: bool | None) -> P.Prediction:
        """Read from the checkpoint (marker keys, metadata) or the scheduler config, the recipe's keys on top."""
        path = Path(base.source).expanduser()
        found = ((P.read_checkpoint(path) if path.is_file() else None)
                 or P.from_scheduler_config(base.pipe.scheduler.config))
        try:
            pred = P.resolve(found, v_parameterization, zero_terminal_snr)
        except P.PredictionError as exc:
            raise BakeError(str(exc)) from exc
        sched = base.pipe.scheduler
        base.pipe.scheduler = type(sched).from_config(sched.config, **P.training_overrides(pred))
        base.prediction = pred
        return pred

    def noise_schedule(self, base: Base, sampling: TimestepSampling) -> Any:
        """DDPM on the base's betas, predicting what `base.prediction` says (timesteps uniform: `sampling` is
        rectified flow's)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(base.pipe.scheduler.config, **P.training_overrides(base.prediction))

    def timesteps(self, schedule: Any, n: int, gen: Any, size: tuple[int, int]) -> Any:
        import torch

        return torch.randint(0, schedule.config.num_train_timesteps, (n,), generator=gen)

    def target(self, base: Base, schedule: Any, latents: Any, noise: Any, timesteps: Any) -> Any:
        return P.target(schedule, latents, noise, timesteps, base.prediction)

    def encode(self, vae: Any, pixels: Any, device: str) -> Any:
        dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        return (dist.mean * vae.config.scaling_factor).float()

    # -- text and predicting --
    def text_encoder(self, base: Base, clip_skip: int, device: str, cache: bool,
                     captions: Sequence[str] = ()) -> TextEncoder:
        # Captions are encoded as they come (a batch at once would change the files' bytes); CLIP stays loaded.
        return TextEncoder(base.pipe, self.name, clip_skip, device, cache)

    def predict(self, base: Base, prec: Precision, noisy: Any, timesteps: Any, cond: Any,
                sizes: Sequence[tuple[int, int]]) -> Any:
        hidden, pooled = cond
        return base.pipe.unet(noisy.to(prec.weight_dtype), timesteps, hidden.to(prec.weight_dtype),
                              **self.added_cond(prec, hidden, pooled, sizes)).sample

    def added_cond(self, prec: Precision, hidden: Any, pooled: Any, sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The UNet's conditioning beyond the hidden states (SDXL's); none for SD1.5."""
        return {}

    # -- the network --
    def network_parts(self, denoiser: Any, text_encoders: Sequence[Any]) -> list[tuple[str, Any, str]]:
        return K.network_parts(denoiser, text_encoders, self.te_prefixes)

    def targets(self, model: Any, kind: str, spec: K.NetworkSpec) -> K.Targets:
        return K.find_targets(model, kind, spec, sgm=self.sgm and kind == "unet")

    # -- rendering --
    def use_sampler(self, pipe: Any, sampler: str, prediction: P.Prediction | None) -> P.Prediction:
        """The pipeline's scheduler becomes `sampler`, built to match the prediction (diffusers' recipe:
        prediction type, rescaled betas, trailing timesteps); None: as the pipeline's scheduler config says."""
        prediction = prediction or P.from_scheduler_config(pipe.scheduler.config)
        pipe.scheduler = scheduler(sampler, pipe.scheduler.config, **P.sampling_overrides(prediction))
        return prediction

    def render(self, pipe: Any, job: Render) -> list[Any]:
        kw = dict(num_inference_steps=job.steps, guidance_scale=job.cfg, width=job.width, height=job.height,
                  generator=list(job.generators), output_type="np")
        if job.prediction.zero_snr:
            kw["guidance_rescale"] = P.GUIDANCE_RESCALE
        kw.update(self.prompt_kwargs(pipe, list(job.prompts), list(job.negatives), job.clip_skip, job.device))
        return list(pipe(**kw).images)

    def prompt_kwargs(self, pipe: Any, prompts: list[str], negatives: list[str], clip_skip: int,
                      device: str) -> dict[str, Any]:
        """What the pipeline's call takes for these prompts (the texts; SD1.5: embeddings with A1111's clip skip)."""
        return {"prompt": prompts, "negative_prompt": negatives}


def scheduler(name: str, config: Any, **overrides: Any) -> Any:
    """The diffusers scheduler of the recipe's sampler name, from the pipeline's scheduler config and `overrides`
    (keywords: a merged dict would lose those its config lists under `_use_default_values`, as an in-memory
    scheduler's defaults are)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config, **overrides)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config, **overrides)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", **overrides)
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", use_karras_sigmas=True,
                                                     **overrides)
    if name == "ddim":
        return DDIMScheduler.from_config(config, **overrides)
    raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")
