"""Sliders (LECO): a LoRA trained from prompts alone, no pictures (the guide's "LECO ou Sliders").

The objective is the Concept Sliders one, as ostris/ai-toolkit's TrainSliderProcess and p1atdev/LECO
("enhance") train it. Each step:

1. x_t: Gaussian noise denoised k of N steps (k drawn in 1..N-1, N = `max_denoising_steps`) by the
   FROZEN base model on the target prompt with CFG 3 (DDIM); t is the timestep x_t stands at.
2. The frozen base model (the LoRA at scale 0) predicts the noise of x_t for the neutral prompt (the
   target unless `neutral` says otherwise), the positive and the negative prompt.
3. The LoRA at scale +1 on the target prompt is pulled towards  e(neutral) + g (e(positive) - e(negative)),
   the LoRA at scale -1 towards  e(neutral) - g (e(positive) - e(negative))  (MSE, both in the same step):
   ai-toolkit's four prompt pairs (erase/enhance x multiplier +-1) reduce to these two.
4. Anchors (optional): at +-1 the LoRA's prediction for an anchor prompt is pulled to the base model's.

Pure: no Prefect. It reuses the bake's parts (bakery/craft/bake/): base loading and the base's family (text
encoding, predicting), precision, the peft network, optimizer and schedule, the kohya file and the resumable
state. Every random draw of step s comes from (seed, s), so a slide resumed from the state of a save takes the
same draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases.family import Base, BaseFiles
from bakery.craft.bake.bases.load import load_base
from bakery.craft.bake.loop import BakeResult, StepInfo
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.optim import build_optimizer, make_scheduler, optimizer_step
from bakery.craft.bake.precision import Precision, autocast, choose_precision
from bakery.craft.bake.state import STATE_FILE, resume_state, save_state
from bakery.craft.bake.step import seeded
from bakery.craft.bake.training import attach_network, freeze_base, set_train_mode

CFG_FOR_XT = 3.0  # ai-toolkit and LECO denoise x_t with guidance 3


@dataclass(frozen=True)
class SliderSpec:
    """What the slider is trained from (the slide stage's input): prompts, no pictures."""

    target: str
    positive: str
    negative: str
    neutral: str
    anchors: tuple[str, ...] = ()

    def prompts(self) -> list[str]:
        return list(dict.fromkeys([self.target, self.neutral, self.positive, self.negative, "", *self.anchors]))


def slider_precision(device: str, mixed_precision: str, gradient_checkpointing: bool | None = None) -> Precision:
    """bf16 where the GPU supports it, else fp32; never fp16 (NaN losses, the guide)."""
    import torch

    if mixed_precision == "fp16":
        raise BakeError("slider.mixed_precision fp16 gives NaN losses: use 'auto', 'bf16' or 'no'")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if mixed_precision == "auto":
        mixed_precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if mixed_precision == "bf16" and not cuda:
        raise BakeError("slider.mixed_precision 'bf16' needs CUDA; on CPU use 'auto' or 'no'")
    return choose_precision(device, mixed_precision, gradient_checkpointing)


def slider_train_params(train: Any, slider: Any) -> Any:
    """The [train] section as the bake's parts read it for a slider: UNet-only LoRA, AdamW at a constant rate."""
    return train.model_copy(update={
        "network_type": "lora", "network_dim": slider.network_dim, "network_alpha": slider.network_alpha,
        "train_unet": True, "train_text_encoder": False, "optimizer": "adamw", "learning_rate": slider.learning_rate,
        "unet_lr": None, "text_encoder_lr": None, "lr_scheduler": "constant", "lr_warmup_steps": 0,
        "lr_batch_scaling": False,  # the slider's rate is its own, whatever [train]'s batch size
        "epochs": slider.steps, "save_precision": slider.save_precision,
    })


@dataclass
class Slide:
    """What every step works with (the fields the bake's save_state / resume_state / optimizer_step read)."""

    params: Any  # TrainParams from slider_train_params
    slider: Any  # SliderParams
    spec: SliderSpec
    prec: Precision
    base: Base
    net_spec: K.NetworkSpec
    network: list[tuple[str, Any, K.Targets]]
    trainable: list[Any]
    optimizer: Any
    scheduler: Any
    scaler: Any
    text: Callable[[list[str]], Any]  # prompts -> conditioning (the family's text encoder, caching)
    resolution: int
    layers: list[Any] = field(default_factory=list)  # the network's peft LoRA layers (their scale is the strength)


def prepare_slide(spec: SliderSpec, train: Any, slider: Any, *, workdir: Path, base: Base | None = None) -> Slide:
    """Base model frozen, the UNet's LoRA attached, optimizer and schedule, every prompt encoded once."""
    import torch
    from peft.tuners.lora import LoraLayer

    params = slider_train_params(train, slider)
    prec = slider_precision(params.device, slider.mixed_precision, params.gradient_checkpointing)
    torch.manual_seed(params.seed)
    if base is None:
        words = [w.strip() for p in spec.prompts() for w in p.split(",") if w.strip()]
        base = load_base(params.base_model, workdir, architecture=params.architecture, words=words,
                         files=BaseFiles.of(params))
    freeze_base(base, prec)
    net_spec = K.NetworkSpec("lora", params.network_dim, params.network_alpha, params.conv_dim, params.conv_alpha)
    network = attach_network(base, params, net_spec)
    set_train_mode(base, params, prec)
    optimizer, trainable = build_optimizer(params, network, prec.device)
    scheduler = make_scheduler(optimizer, "constant", warmup=0, total=slider.steps, restarts=0)
    text = base.family.text_encoder(base, params.clip_skip, prec.device, cache=True)
    t = Slide(params, slider, spec, prec, base, net_spec, network, trainable, optimizer, scheduler, None, text,
              slider.resolution or base.family.resolution)
    for prompt in spec.prompts():  # each encoded alone, once: the steps read them from the cache
        text([prompt])
    t.layers = [m for _p, model, _t in network for m in model.modules() if isinstance(m, LoraLayer)]
    return t


def set_strength(t: Slide, strength: float) -> None:
    """The LoRA's multiplier (kohya's weight): its scale alpha/dim times `strength`; 0 = the frozen base model."""
    for layer in t.layers:
        for adapter in list(layer.scaling):
            layer.set_scale(adapter, strength)


def unet_eps(t: Slide, latents: Any, timestep: Any, prompts: list[str]) -> Any:
    """The base's noise prediction of `latents` (one row per prompt) at `timestep`, in fp32."""
    r = t.resolution
    cond = t.text(prompts)
    with autocast(t.prec):
        out = t.base.family.predict(t.base, t.prec, latents, timestep, cond, [(r, r)] * len(prompts))
    return out.float()


def noised_state(t: Slide, gen: Any) -> tuple[Any, Any]:
    """(x_t, t): noise denoised k of N DDIM steps by the frozen base model on the target with CFG 3."""
    import torch
    from diffusers import DDIMScheduler

    n = t.slider.max_denoising_steps
    sched = DDIMScheduler.from_config(t.base.pipe.scheduler.config)
    sched.set_timesteps(n, device=t.prec.device)
    k = int(torch.randint(1, n, (1,), generator=gen))
    channels = t.base.family.denoiser(t.base.pipe).config.in_channels
    side = t.resolution // 8
    latents = torch.randn((1, channels, side, side), generator=gen).to(t.prec.device) * sched.init_noise_sigma
    set_strength(t, 0.0)
    with torch.no_grad():
        for step_t in sched.timesteps[:k]:
            pair = unet_eps(t, torch.cat([latents] * 2), step_t, ["", t.spec.target])
            eps = pair[0:1] + CFG_FOR_XT * (pair[1:2] - pair[0:1])
            latents = sched.step(eps, step_t, latents).prev_sample
    return latents, sched.timesteps[k]


def slide_targets(eps_neutral: Any, eps_positive: Any, eps_negative: Any, guidance: float) -> tuple[Any, Any]:
    """What the LoRA's prediction for the target is pulled to at strength +1 and at -1."""
    offset = guidance * (eps_positive - eps_negative)
    return eps_neutral + offset, eps_neutral - offset


def slide_loss(t: Slide, latents: Any, timestep: Any, anchor: str | None) -> Any:
    """The slider loss at x_t: +1 and -1 towards their targets (MSE, mean), plus the anchor's at +-1."""
    import torch

    s = t.spec
    prompts = [s.neutral, s.positive, s.negative] + ([anchor] if anchor is not None else [])
    set_strength(t, 0.0)
    with torch.no_grad():
        frozen = unet_eps(t, torch.cat([latents] * len(prompts)), timestep, prompts)
    plus, minus = slide_targets(frozen[0:1], frozen[1:2], frozen[2:3], t.slider.guidance)
    losses = []
    for strength, goal in ((1.0, plus), (-1.0, minus)):
        set_strength(t, strength)
        pred = unet_eps(t, latents, timestep, [s.target])
        loss = torch.nn.functional.mse_loss(pred, goal)
        if anchor is not None:
            loss = loss + torch.nn.functional.mse_loss(unet_eps(t, latents, timestep, [anchor]), frozen[3:4])
        losses.append(loss)
    set_strength(t, 1.0)
    return (losses[0] + losses[1]) / 2


def slide_step(t: Slide, step: int) -> tuple[float, float]:
    """One optimizer step; `step` is 1-based. Returns (loss, learning rate used)."""
    import math

    import torch

    gen = seeded(t.params.seed, step, "slide")
    latents, timestep = noised_state(t, gen)
    anchors = t.spec.anchors
    anchor = anchors[int(torch.randint(0, len(anchors), (1,), generator=gen))] if anchors else None
    loss = slide_loss(t, latents, timestep, anchor)
    lr = optimizer_step(t, loss)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise BakeError(f"slider loss is {value} at step {step}: lower slider.learning_rate")
    return value, lr


# --- files and the loop --------------------------------------------------------------


def slider_metadata(t: Slide, *, name: str, step: int, slide_key: str) -> dict[str, str]:
    """kohya's `ss_*` and `modelspec.*` metadata, naming the target and the extremes (`ss_slider_*`)."""
    p, s = t.params, t.spec
    comment = f"slider: target {s.target}; positive {s.positive}; negative {s.negative}"
    return K.build_metadata(
        spec=t.net_spec, architecture=t.base.architecture, output_name=name, triggers=[], resolution=t.resolution,
        epoch=step, num_epochs=t.slider.steps, steps=step, learning_rate=p.learning_rate, unet_lr=p.learning_rate,
        text_encoder_lr=None, optimizer=type(t.optimizer).__module__ + "." + type(t.optimizer).__name__,
        seed=p.seed, clip_skip=p.clip_skip, base_model=Path(t.base.source).name if t.base.source else "",
        tag_freq={}, dataset_dirs={}, num_train_images=0, batch_size=1,
        extra={"ss_training_comment": comment, "modelspec.title": f"{name} (step {step})",
               "modelspec.trigger_phrase": s.target, "modelspec.description": comment,
               "ss_slider_target": s.target, "ss_slider_positive": s.positive, "ss_slider_negative": s.negative,
               "ss_slider_neutral": s.neutral, "ss_slider_anchors": list(s.anchors),
               "ss_slider_guidance": str(t.slider.guidance), "ss_max_train_steps": str(t.slider.steps),
               "ss_mixed_precision": "no" if t.prec.autocast is None else str(t.prec.autocast).split(".")[-1],
               "ss_network_train_unet_only": "True", "ss_session_id": slide_key[:16]},
    )


def save_slider(t: Slide, path: Path, *, name: str, step: int, slide_key: str) -> str:
    """The slider as it stands after `step`, as a kohya LoRA file (`lora_unet_*`, saved in save_precision)."""
    from peft import get_peft_model_state_dict

    tensors: dict[str, Any] = {}
    for prefix, model, targets in t.network:
        tensors.update(K.peft_to_kohya(get_peft_model_state_dict(model), prefix, targets, t.net_spec))
    K.save_kohya(path, tensors, slider_metadata(t, name=name, step=step, slide_key=slide_key), t.slider.save_precision)
    return str(path)


def save_steps(total: int, every: int) -> list[int]:
    """The steps a file (and the training state) is saved after: every `every`, and the last."""
    return sorted({*range(every, total + 1, every), total})


def slide(
    spec: SliderSpec, train: Any, slider: Any, *, workdir: Path, out_dir: Path, state_dir: Path, name: str,
    slide_key: str = "", base: Base | None = None, on_step: Callable[[StepInfo], None] | None = None,
    on_save: Callable[[int, str], None] | None = None,
) -> BakeResult:
    """Train the slider; resume from `state_dir` when it holds this slide's state. Returns the saved files by step."""
    started = time.monotonic()
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    t = prepare_slide(spec, train, slider, workdir=Path(workdir), base=base)
    state_file = state_dir / STATE_FILE
    start, files = resume_state(state_file, t, slide_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    saves = set(save_steps(slider.steps, slider.save_every_n_steps))
    losses: list[tuple[int, int, float, float]] = []
    for step in range(start + 1, slider.steps + 1):
        loss, lr = slide_step(t, step)
        losses.append((step, step, loss, lr))
        if on_step:
            on_step(StepInfo(step, slider.steps, step, loss, lr, time.monotonic() - started))
        if step in saves:
            path = out_dir / f"{name}-{step:06d}.safetensors"
            files[step] = save_slider(t, path, name=name, step=step, slide_key=slide_key)
            if on_save:  # before the state: what the caller records for this save is never lost on a kill
                on_save(step, files[step])
            save_state(state_file, t, bake_key=slide_key, epoch=step, step=step, files=files)
    return BakeResult(files=dict(sorted(files.items())), losses=losses, resumed_from_epoch=start, steps=slider.steps,
                      seconds=time.monotonic() - started,
                      extra={"device": t.prec.device, "architecture": t.base.architecture,
                             "base_source": t.base.source, "base_files": t.base.files.set(),
                             "resolution": t.resolution})
