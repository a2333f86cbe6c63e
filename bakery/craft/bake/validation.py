"""Validation loss (after each epoch when the TrainSet has validation pictures): how well the network predicts
pictures it may never have trained on.

Fixed noise from generators of its own (seed, picture) and fixed timesteps, no gradient, the network in eval
mode: the same draws every epoch and for a resumed bake, and the training's draws untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

from bakery.craft.bake.data import Sample, full_caption, load_pixels
from bakery.craft.bake.optim import conditional_loss
from bakery.craft.bake.step import loss_threshold, masked, predict_noise, seeded
from bakery.craft.bake.training import Training, base_models


@dataclass(frozen=True)
class ValidationLoss:
    epoch: int
    loss: float  # mean over pictures x timesteps
    held_out: bool  # False: measured on training pictures, not held out
    n_pictures: int


def validation_timesteps(n: int, num_train_timesteps: int) -> list[int]:
    """`n` timesteps evenly spread over the schedule: the midpoints of n equal bins (4 of 1000: 125 ... 875)."""
    return [(2 * k + 1) * num_train_timesteps // (2 * n) for k in range(n)]


def validation_picture_loss(t: Training, s: Sample, n_timesteps: int) -> float:
    """One validation picture's loss: its latent noised with fixed noise at the fixed timesteps, full caption.

    The recipe's loss type and the picture's mask; no min-SNR or prior weighting. Call under no_grad.
    """
    import torch

    p, device = t.params, t.prec.device
    key = f"{s.image.image_hash}:{s.bucket}"
    if key not in t.validation_latents:
        pixels = load_pixels(t.image_path(s.image.image_hash), s.choice, False)[None]
        t.validation_latents[key] = t.latents.encode(pixels).to(device, torch.float32)
    lat = t.validation_latents[key]
    lat = lat.repeat(n_timesteps, *[1] * (lat.dim() - 1))
    gen = seeded(p.seed, 0, f"validation:{s.image.image_hash}")  # its own stream: the training's is untouched
    noise = torch.randn(lat.shape, generator=gen).to(device)
    steps = t.noise_sched.config.num_train_timesteps
    timesteps = torch.tensor(validation_timesteps(n_timesteps, steps), device=device)
    caption = full_caption(s.image.caption)
    batch = [s] * n_timesteps
    pred = predict_noise(t, batch, [caption] * n_timesteps, t.noise_sched.add_noise(lat, noise, timesteps), timesteps)
    target = t.base.family.target(t.base, t.noise_sched, lat, noise, timesteps)
    loss = masked(t, batch, [False] * n_timesteps, conditional_loss(pred.float(), target.float(), p.loss_type,
                                                                    loss_threshold(t, timesteps)))
    return float(loss.mean())


def validation_loss(t: Training, epoch: int, held_out: bool, n_timesteps: int) -> ValidationLoss:
    """The validation loss after `epoch`: the network in eval mode, no gradient, modes restored after."""
    import torch

    models = base_models(t.base)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            losses = [validation_picture_loss(t, s, n_timesteps) for s in t.validation]
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return ValidationLoss(epoch, sum(losses) / len(losses), held_out, len(losses))
