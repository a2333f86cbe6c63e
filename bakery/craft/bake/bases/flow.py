"""Rectified flow, for every base trained that way (Anima today; Flux, Qwen-Image, Z-Image next): the noised input,
the target and how training timesteps are drawn, as kohya sd-scripts trains them.

The forward process is a straight line from the latents to the noise: x_sigma = (1 - sigma) * x + sigma * noise,
sigma in [0, 1], and the denoiser learns the velocity along it, noise - x (sd-scripts' anima_train_network.py
and flux_train_network.py). Timesteps are sigma * 1000 (`num_train_timesteps`), as floats: sd-scripts draws
sigma continuously and passes timesteps / 1000 to the DiT; diffusers' Anima pipeline passes t / 1000 too.

How sigma is drawn (`FlowSchedule.sampling`, the recipe's train.timestep_sampling, discrete_flow_shift,
sigmoid_scale), each as sd-scripts' library/flux_train_utils.py `get_noisy_model_input_and_timesteps`:
- `uniform`: sigma ~ U(0, 1);
- `sigmoid`: sigma = sigmoid(scale * N(0, 1)) (logit-normal; Anima's default);
- `shift`: the sigmoid draw, shifted: shift * s / (1 + (shift - 1) * s);
- `flux_shift`: the sigmoid draw through Flux's resolution-dependent time shift (mu from the latents' size);
- `sigma`: u ~ U(0, 1) (sd-scripts' default weighting scheme, `uniform`) picks one of the 1000 sigmas of the
  shifted discrete schedule (sd-scripts' FlowMatchEulerDiscreteScheduler, shift = discrete_flow_shift).
Every draw comes from the step's CPU generator, so a resumed bake draws the same.

No SNR table (`alphas_cumprod` is None): sd-scripts' Anima trainer never applies min-SNR (its
`post_process_loss` returns the loss unchanged) and refuses Huber's snr schedule for a scheduler without
`alphas_cumprod` (train_util.get_huber_threshold_if_needed); the bake refuses both with one line
(training.py) instead of inventing a flow equivalent. Hand-written: diffusers' FlowMatchEulerDiscreteScheduler
is a sampler (its `scale_noise` needs timesteps on its inference grid) and has none of these draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from bakery.craft.bake.bases.family import TimestepSampling

NUM_TRAIN_TIMESTEPS = 1000
# Flux's time shift (flux_train_utils.get_lin_function(y1=0.5, y2=1.15)): mu from 0.5 at 256 to 1.15 at 4096 tokens.
FLUX_SHIFT = ((256, 0.5), (4096, 1.15))


@dataclass
class FlowSchedule:
    """bases/family.py's `NoiseSchedule` for rectified flow; timesteps are sigma * num_train_timesteps."""

    sampling: TimestepSampling = field(default_factory=TimestepSampling)
    config: Any = field(default_factory=lambda: SimpleNamespace(num_train_timesteps=NUM_TRAIN_TIMESTEPS))
    alphas_cumprod: Any = None  # no SNR table: min-SNR and Huber's snr schedule are refused (module docstring)

    def sigmas(self, timesteps: Any, ndim: int) -> Any:
        """sigma of each timestep, shaped to broadcast over latents of `ndim` dimensions."""
        sigma = timesteps.float() / self.config.num_train_timesteps
        return sigma.view(-1, *[1] * (ndim - 1))

    def add_noise(self, latents: Any, noise: Any, timesteps: Any) -> Any:
        sigma = self.sigmas(timesteps, latents.dim()).to(latents.device)
        return (1.0 - sigma) * latents + sigma * noise

    def metadata(self) -> dict[str, str]:
        """The `ss_*` keys sd-scripts' flow trainers write of their sampling (anima_train_network.py's
        update_metadata); the weighting is uniform (no loss weighting by timestep)."""
        s = self.sampling
        return {"ss_weighting_scheme": "uniform", "ss_timestep_sampling": s.method,
                "ss_sigmoid_scale": str(s.sigmoid_scale), "ss_discrete_flow_shift": str(s.shift)}


def shifted(sigmas: Any, shift: float) -> Any:
    """sd-scripts' discrete flow shift: shift * s / (1 + (shift - 1) * s) (1: unchanged)."""
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def flux_time_shift(sigmas: Any, height: int, width: int) -> Any:
    """Flux's resolution-dependent shift of sigmas for latents of `height` x `width` (2x2 patches)."""
    (x1, y1), (x2, y2) = FLUX_SHIFT
    tokens = (height // 2) * (width // 2)
    m = (y2 - y1) / (x2 - x1)
    mu = m * tokens + (y1 - m * x1)
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def discrete_sigmas(n: int, shift: float) -> Any:
    """The shifted discrete schedule sd-scripts' `sigma` sampling picks from: n sigmas, 1 down to 1/n."""
    import torch

    return shifted(torch.arange(n, 0, -1, dtype=torch.float32) / n, shift)


def draw_sigmas(sampling: TimestepSampling, n: int, gen: Any, size: tuple[int, int]) -> Any:
    """`n` sigmas in [0, 1] drawn from the CPU generator `gen` as `sampling` says; `size`: the latents' (h, w)."""
    import torch

    if sampling.method == "uniform":
        return torch.rand((n,), generator=gen)
    if sampling.method == "sigma":
        u = torch.rand((n,), generator=gen)
        return discrete_sigmas(NUM_TRAIN_TIMESTEPS, sampling.shift)[(u * NUM_TRAIN_TIMESTEPS).long()]
    sigmas = torch.sigmoid(sampling.sigmoid_scale * torch.randn((n,), generator=gen))
    if sampling.method == "sigmoid":
        return sigmas
    if sampling.method == "shift":
        return shifted(sigmas, sampling.shift)
    if sampling.method == "flux_shift":
        return flux_time_shift(sigmas, *size)
    raise ValueError(f"unknown timestep sampling {sampling.method!r}")


def timesteps(schedule: FlowSchedule, n: int, gen: Any, size: tuple[int, int]) -> Any:
    """`n` training timesteps (sigma * num_train_timesteps, float32, on the CPU)."""
    return draw_sigmas(schedule.sampling, n, gen, size) * schedule.config.num_train_timesteps


def target(latents: Any, noise: Any) -> Any:
    """The velocity the denoiser learns: noise - latents."""
    return noise - latents
