"""One training step of a bake: captions augmented, latents noised, the prediction, the loss weighed, the update.

Architecture-free: the timesteps, the noised input's target and the prediction come from the base's family;
the noise (offset, multires, input perturbation), the loss and its weights are the same for every family.
Every random draw of step `s` comes from generators seeded with (seed, s), so a resumed bake takes the same.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.data import Sample, load_pixels, process_caption
from bakery.craft.bake.networks import lycoris_net as LN
from bakery.craft.bake.optim import conditional_loss, huber_c, min_snr_weight, optimizer_step, pyramid_noise
from bakery.craft.bake.precision import autocast
from bakery.craft.bake.training import Training


def seeded(seed: int, step: int, what: str) -> Any:
    """A CPU generator for the draws `what` of step `step` (public: the slide draws the same way)."""
    import torch

    digest = hashlib.sha256(f"{seed}:{step}:{what}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def noised_latents(t: Training, lat: Any, gen: Any) -> tuple[Any, Any, Any]:
    """(noise, timesteps, noised latents): noise offset, multires noise and input perturbation as asked."""
    import torch

    p, device = t.params, t.prec.device
    b = lat.shape[0]
    noise = torch.randn(lat.shape, generator=gen).to(device)
    if p.noise_offset:
        shape = (b, lat.shape[1], *[1] * (lat.dim() - 2))  # one offset per picture and channel
        noise = noise + p.noise_offset * torch.randn(shape, generator=gen).to(device)
    if p.multires_noise_iterations:
        noise = pyramid_noise(noise, gen, p.multires_noise_iterations, p.multires_noise_discount)
    timesteps = t.base.family.timesteps(t.noise_sched, b, gen, tuple(lat.shape[-2:])).to(device)
    input_noise = noise
    if p.ip_noise_gamma:  # the input is perturbed, the target stays the plain noise
        input_noise = noise + p.ip_noise_gamma * torch.randn(lat.shape, generator=gen).to(device)
    return noise, timesteps, t.noise_sched.add_noise(lat, input_noise, timesteps)


def predict_noise(t: Training, batch: list[Sample], captions: list[str], noisy: Any, timesteps: Any) -> Any:
    """The denoiser's prediction for the noised latents, conditioned on the captions and the pictures' sizes."""
    import contextlib

    import torch

    with autocast(t.prec):
        with contextlib.nullcontext() if t.params.train_text_encoder else torch.no_grad():
            cond = t.text(captions)
        return t.base.family.predict(t.base, t.prec, noisy, timesteps, cond, [s.bucket for s in batch])


def batch_loss(t: Training, batch: list[Sample], flips: list[bool], pred: Any, target: Any, timesteps: Any) -> Any:
    """The batch's loss against the target (noise, or velocity for v-prediction, ...): elementwise loss, masked,
    weighted per sample (prior loss, min-SNR), averaged."""
    import torch

    p, device = t.params, t.prec.device
    loss = masked(t, batch, flips, conditional_loss(pred.float(), target.float(), p.loss_type,
                                                    loss_threshold(t, timesteps)))
    loss = loss.mean(dim=list(range(1, loss.dim())))  # one loss per picture
    loss = loss * torch.tensor([p.prior_loss_weight if s.image.is_reg else 1.0 for s in batch], device=device)
    if p.min_snr_gamma:
        loss = loss * min_snr_weight(timesteps, t.noise_sched.alphas_cumprod, p.min_snr_gamma,
                                     v_prediction=t.base.prediction.v_pred).to(device)
    return loss.mean()


def loss_threshold(t: Training, timesteps: Any) -> Any:
    """The Huber threshold per sample on the device; None for l2 (it has none, as kohya's
    get_huber_threshold_if_needed: a flow schedule has no SNR for the snr schedule to read)."""
    p = t.params
    if p.loss_type == "l2":
        return None
    sched = t.noise_sched
    hc = huber_c(p.huber_schedule, p.huber_c, timesteps, sched.alphas_cumprod, sched.config.num_train_timesteps)
    return hc.to(t.prec.device)


def masked(t: Training, batch: list[Sample], flips: list[bool], loss: Any) -> Any:
    """The elementwise loss times each picture's mask (white = train) when masked loss is on and it has one."""
    import torch

    if not (t.params.masked_loss and any(s.image.mask_hash for s in batch)):
        return loss
    masks = torch.stack([
        load_pixels(t.image_path(s.image.mask_hash), s.choice, f, mode="L") if s.image.mask_hash
        else torch.ones((1, s.bucket[1], s.bucket[0])) for s, f in zip(batch, flips)
    ]).to(t.prec.device)
    return loss * torch.nn.functional.interpolate(masks, size=loss.shape[2:], mode="area")


def training_step(t: Training, batch: list[Sample], step: int) -> tuple[float, float]:
    """One optimizer step on one batch; `step` is 1-based. Returns (loss, learning rate used).

    Captions augmented, latents noised, the target predicted, the loss weighed, the network updated.
    Every random draw comes from (seed, step), so a resumed bake takes the same ones.
    """
    import torch

    p = t.params
    rng = random.Random(f"{p.seed}:{step}:data")
    gen = seeded(p.seed, step, "noise")
    flips = [p.flip_aug and rng.random() < 0.5 for _ in batch]
    captions = [process_caption(s.image.caption, rng, keep_tokens=t.keep_tokens(s.image), shuffle=p.shuffle_caption,
                                caption_dropout_rate=p.caption_dropout_rate, tag_dropout_rate=p.tag_dropout_rate,
                                token_warmup_min=p.token_warmup_min, token_warmup_step=p.token_warmup_step,
                                step=step - 1) for s in batch]
    LN.set_step([m for _p, m, _t in t.network], p.seed, step)  # DyLoRA: the ranks this step trains
    lat = t.latents.batch([(t.image_path(s.image.image_hash), s, f) for s, f in zip(batch, flips)])
    lat = lat.to(t.prec.device, torch.float32)
    noise, timesteps, noisy = noised_latents(t, lat, gen)
    pred = predict_noise(t, batch, captions, noisy, timesteps)
    target = t.base.family.target(t.base, t.noise_sched, lat, noise, timesteps)
    loss = batch_loss(t, batch, flips, pred, target, timesteps)
    lr = optimizer_step(t, loss)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise BakeError(f"loss is {value} at step {step}: lower the learning rate, or use bf16/fp32 "
                        "(fp16 gives NaN for some networks)")
    if p.optimizer == "prodigy":  # Prodigy's effective rate is lr * d
        lr *= float(t.optimizer.param_groups[0].get("d", 1.0))
    return value, lr
