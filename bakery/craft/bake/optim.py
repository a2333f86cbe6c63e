"""The bake's optimization: losses (l2, Huber, min-SNR weighting), noise shapes, optimizers, schedules, the step.

Architecture-free: the weighting reads the noise schedule's `alphas_cumprod` (SNR per timestep), whatever
family built the schedule.
"""

from __future__ import annotations

import math
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.networks import kohya_lora as K

SNR_EPS = 1e-8


# --- noise and loss ------------------------------------------------------------------


def pyramid_noise(noise: Any, gen: Any, iterations: int, discount: float) -> Any:
    """kohya's multires noise (`pyramid_noise_like`)."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = noise.shape
    for i in range(iterations):
        r = float(torch.rand((), generator=gen)) * 2 + 2
        hn, wn = max(1, int(h / (r ** i))), max(1, int(w / (r ** i)))
        small = torch.randn((b, c, hn, wn), generator=gen).to(noise.device)
        noise = noise + F.interpolate(small, size=(h, w), mode="bilinear") * discount ** i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def huber_c(kind: str, c: float, timesteps: Any, alphas_cumprod: Any, num_train_timesteps: int) -> Any:
    """kohya's huber_schedule: the per-sample Huber threshold."""
    import torch

    t = timesteps.float()
    if kind == "constant":
        return torch.full_like(t, c)
    if kind == "exponential":
        return torch.exp(-(-math.log(c) / num_train_timesteps) * t)
    if kind == "snr":
        a = alphas_cumprod[timesteps.cpu()].to(t.device).float()
        sigmas = ((1.0 - a) / a) ** 0.5
        return (1 - c) / (1 + sigmas) ** 4 + c
    raise ValueError(f"unknown huber_schedule {kind!r}")


def conditional_loss(pred: Any, target: Any, loss_type: str, hc: Any) -> Any:
    """Elementwise loss (no reduction): l2, huber or smooth_l1 (kohya's pseudo-Huber forms)."""
    import torch

    if loss_type == "l2":
        return (pred - target) ** 2
    c = hc.view(-1, *([1] * (pred.dim() - 1)))
    if loss_type == "huber":
        return 2 * c * (torch.sqrt((pred - target) ** 2 + c ** 2) - c)
    if loss_type == "smooth_l1":
        return 2 * (torch.sqrt((pred - target) ** 2 + c ** 2) - c)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def min_snr_weight(timesteps: Any, alphas_cumprod: Any, gamma: float, v_prediction: bool = False) -> Any:
    """min(SNR, gamma) / SNR for epsilon prediction, min(SNR, gamma) / (SNR + 1) for v-prediction
    (Hang et al.; kohya apply_snr_weight). Zero terminal SNR: the last timestep's SNR is 0 (weight 0 for v)."""
    import torch

    a = alphas_cumprod[timesteps.cpu()].float()
    snr = a / (1 - a)
    if v_prediction:
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(gamma / (snr + SNR_EPS), max=1.0)


# --- optimizer and schedule ----------------------------------------------------------


def make_optimizer(name: str, groups: list[dict[str, Any]], *, weight_decay: float, d_coef: float,
                   device: str) -> Any:
    import torch

    if name == "adamw":
        # fused: one kernel for all LoRA tensors instead of a Python loop over hundreds of small ones
        # (torch's default on CPU is that loop).
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    if name == "adamw8bit":
        if device != "cuda":
            raise BakeError("train.optimizer 'adamw8bit' needs CUDA (bitsandbytes); on CPU use 'adamw'")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise BakeError("train.optimizer 'adamw8bit' needs bitsandbytes: pip install bitsandbytes") from exc
        return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy

        # rules.md §12: weight_decay 0.01, decouple, use_bias_correction, safeguard_warmup, d_coef 1-2.
        return Prodigy(groups, weight_decay=weight_decay, decouple=True, use_bias_correction=True,
                       safeguard_warmup=True, d_coef=d_coef)
    if name == "came":
        from came_pytorch import CAME

        return CAME(groups, lr=groups[0]["lr"], weight_decay=weight_decay, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
    raise BakeError(f"unknown optimizer {name!r}")


def rex_factor(step: int, warmup: int, total: int) -> float:
    """REX (Chen et al., "REX: Revisiting Budgeted Training"): (1 - p) / (1 - p/2) after a linear warmup."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1 - p) / (1 - p / 2)


def make_scheduler(optimizer: Any, name: str, *, warmup: int, total: int, restarts: int) -> Any:
    import functools

    import torch
    from diffusers.optimization import get_scheduler

    if name == "rex":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(rex_factor, warmup=warmup, total=total))
    if name == "constant" and warmup:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                         num_cycles=restarts + 1 if name == "cosine_with_restarts" else 1)


def learning_rates(params: Any) -> tuple[float, float, float]:
    """(base, denoiser (`unet_lr`), text encoder) learning rates: the two parts default to the base rate; each
    scaled for the batch size (rules.md §12, `train.lr_batch_scaling`)."""
    base_lr, factor = params.effective_learning_rate, getattr(params, "batch_lr_factor", 1.0)
    return (base_lr, params.unet_lr * factor if params.unet_lr else base_lr,
            params.text_encoder_lr * factor if params.text_encoder_lr else base_lr)


def build_optimizer(params: Any, network: list[tuple[str, Any, K.Targets]], device: str) -> tuple[Any, list[Any]]:
    """The optimizer with one group per trained model (the denoiser and the text encoders have their own rates)."""
    _base_lr, unet_lr, te_lr = learning_rates(params)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad],
               "lr": unet_lr if prefix == K.UNET_PREFIX else te_lr} for prefix, model, _t in network]
    optimizer = make_optimizer(params.optimizer, groups, weight_decay=params.weight_decay, d_coef=params.d_coef,
                               device=device)
    return optimizer, [p for g in groups for p in g["params"]]


def optimizer_step(t: Any, loss: Any) -> float:
    """Backward, clip the gradients, step the optimizer and the schedule; returns the rate the step used.

    `t`: a bake's Training or a slide's Slide (`params`, `optimizer`, `scheduler`, `scaler`, `trainable`)."""
    import torch

    lr = float(t.optimizer.param_groups[0]["lr"])
    if t.scaler is not None:
        t.scaler.scale(loss).backward()
        t.scaler.unscale_(t.optimizer)
        if t.params.max_grad_norm:  # 0 = no clipping (clipping to norm 0 would zero every gradient)
            torch.nn.utils.clip_grad_norm_(t.trainable, t.params.max_grad_norm, foreach=True)
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        loss.backward()
        if t.params.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(t.trainable, t.params.max_grad_norm, foreach=True)
        t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return lr
