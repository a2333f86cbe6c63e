"""LoRA training (rules.md §12) with diffusers + peft (LyCORIS for IA3/DyLoRA/Diag-OFT): data, noise, loss,
optimizer, resumable state.

Pure: no Prefect. `bake()` trains one network on a TrainSet and calls back per
step and per epoch; the stage (tasks/bake/bake.py) turns those into a progress bar,
the catalog's loss log and the BakeOutput. Its parts, in order: `prepare_training`
(base, network, optimizer, data plan), `resume_state`, then per epoch
`training_step` for each batch, `save_epoch` (the kohya file) and `save_state`.

Determinism: every random draw of step `s` comes from generators seeded with
(seed, s) and the epoch order from (seed, epoch), so a run resumed from the
state saved at the end of an epoch takes the same draws as an uninterrupted one.

Validation loss (`validation_loss`, after each epoch when the TrainSet has validation
pictures): fixed noise from generators of its own (seed, picture) and fixed timesteps,
no gradient, the network in eval mode: the same draws every epoch and for a resumed
bake, and the training's draws untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.bases import single_file
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris_net as LN
from bakery.craft.prepare.buckets import bucket_resolutions, fit_to_bucket, select_bucket
from bakery.manifest import TrainImage, TrainSet

TINY = "tiny"
STATE_FILE = "state.pt"
SNR_EPS = 1e-8


class BakeError(RuntimeError):
    """A bake that cannot run as asked (missing model, optimizer without its hardware...)."""


# --- captions ------------------------------------------------------------------------


def split_caption(caption: str, keep_tokens: int) -> tuple[list[str], list[str]]:
    """(head kept in place, tags that may be shuffled/dropped). `|||` ends the head when present."""
    if "|||" in caption:
        head, tail = caption.split("|||", 1)
        return _tags(head), _tags(tail)
    tags = _tags(caption)
    return tags[:keep_tokens], tags[keep_tokens:]


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def process_caption(
    caption: str,
    rng: random.Random,
    *,
    keep_tokens: int = 1,
    shuffle: bool = True,
    caption_dropout_rate: float = 0.0,
    tag_dropout_rate: float = 0.0,
    token_warmup_min: int = 1,
    token_warmup_step: int = 0,
    step: int = 0,
) -> str:
    """kohya's caption augmentation: the head (keep tokens / before `|||`) always stays first."""
    if caption_dropout_rate and rng.random() < caption_dropout_rate:
        return ""
    head, tail = split_caption(caption, keep_tokens)
    if token_warmup_step and step < token_warmup_step:
        n_total = len(head) + len(tail)
        n = token_warmup_min + (n_total - token_warmup_min) * step / token_warmup_step
        tail = tail[: max(0, math.floor(n) - len(head))]
    if shuffle:
        tail = tail[:]
        rng.shuffle(tail)
    if tag_dropout_rate:
        tail = [t for t in tail if rng.random() >= tag_dropout_rate]
    return ", ".join(head + tail)


# --- base model ----------------------------------------------------------------------


@dataclass
class Base:
    pipe: Any
    architecture: str  # "sd15" | "sdxl"
    source: str  # what was loaded (a folder, a file, a hub id)
    prediction: P.Prediction = field(default_factory=P.Prediction)  # set by `use_prediction`


def _detect_single_file_architecture(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = f.keys()
        return "sdxl" if any(k.startswith("conditioner.embedders.1") for k in keys) else "sd15"


def _refuse_unsupported(path: Path, base_model: str) -> None:
    """A file or diffusers folder that is not an SD1.5/SDXL text-to-image model: one line saying what it is."""
    from bakery.craft.bake.bases import checkpoint

    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shape = lambda k: tuple(f.get_slice(k).get_shape())  # noqa: E731
            reason = checkpoint.refusal(checkpoint.kind_of(f.keys(), shape), shape)
    elif path.is_dir() and (path / "model_index.json").exists():
        unet = path / "unet" / "config.json"
        channels = json.loads(unet.read_text()).get("in_channels") if unet.exists() else None
        reason = checkpoint.folder_refusal(json.loads((path / "model_index.json").read_text()).get("_class_name", ""),
                                           channels)
    else:
        return
    if reason:
        raise BakeError(f"train.base_model {base_model!r} is {reason}")


def load_base(base_model: str | None, workdir: Path, *, vae: str | None = None, architecture: str = "auto",
              words: list[str] = ()) -> Base:  # type: ignore[assignment]
    """The base pipeline: `tiny`, a single `.safetensors` checkpoint, a diffusers folder or a hub id."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not base_model:
        raise BakeError("train.base_model is not set: pass a .safetensors checkpoint, a diffusers folder, "
                        "a hub id, or 'tiny' (a small random-weight model that proves the pipeline)")
    if base_model == TINY:
        from bakery.testmodels.tiny_sd15 import build_tiny_sd15

        key = hashlib.sha256(json.dumps(sorted(set(words))).encode()).hexdigest()[:10]
        folder = build_tiny_sd15(Path(workdir) / "models" / f"tiny-{key}", words=words)
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        source, arch = str(folder), "sd15"
    else:
        path = Path(base_model).expanduser()
        try:
            _refuse_unsupported(path, base_model)
            if path.is_file():
                if path.suffix not in (".safetensors", ".ckpt"):
                    raise BakeError(f"train.base_model {base_model!r}: expected a .safetensors checkpoint")
                arch = architecture if architecture != "auto" else _detect_single_file_architecture(path)
                cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
                kw = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
                pipe = single_file.load_single_file(cls, path, single_file.config_for(path, arch), **kw)  # offline
            elif path.is_dir() or not _looks_like_hub_id(base_model):
                if not (path / "model_index.json").exists():
                    raise BakeError(f"train.base_model {base_model!r}: no such file, and not a diffusers folder "
                                    "(model_index.json missing)")
                index = json.loads((path / "model_index.json").read_text())
                arch = "sdxl" if "XL" in index.get("_class_name", "") else "sd15"
                cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
                kw = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
                pipe = cls.from_pretrained(str(path), **kw)
            else:
                cls = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
                pipe = cls.from_pretrained(base_model)
                arch = "sdxl" if architecture == "sdxl" else "sd15"
        except BakeError:
            raise
        except Exception as exc:  # diffusers' own errors (offline hub, wrong file) say what went wrong
            raise BakeError(f"cannot load train.base_model {base_model!r}: {type(exc).__name__}: {exc}. "
                            "Pass a local .safetensors checkpoint or diffusers folder (or 'tiny')") from exc
        source = base_model
    if vae:
        from diffusers import AutoencoderKL

        try:
            vpath = Path(vae).expanduser()
            pipe.vae = (AutoencoderKL.from_single_file(str(vpath), config=str(single_file.shipped_config(arch)),
                                                       subfolder="vae", local_files_only=True) if vpath.is_file()
                        else AutoencoderKL.from_pretrained(str(vpath)))
        except Exception as exc:
            raise BakeError(f"cannot load train.vae {vae!r}: {type(exc).__name__}: {exc}") from exc
    return Base(pipe, arch, source)


def use_prediction(base: Base, v_parameterization: bool | None = None,
                   zero_terminal_snr: bool | None = None) -> P.Prediction:
    """Epsilon or v-prediction, zero terminal SNR or not: read from the checkpoint (marker keys, metadata) or
    the scheduler config, the recipe's keys on top. The pipeline's scheduler takes it on (samplers built
    from its config match) and `base.prediction` keeps it."""
    path = Path(base.source).expanduser()
    found = (P.read_checkpoint(path) if path.is_file() else None) or P.from_scheduler_config(base.pipe.scheduler.config)
    try:
        pred = P.resolve(found, v_parameterization, zero_terminal_snr)
    except P.PredictionError as exc:
        raise BakeError(str(exc)) from exc
    sched = base.pipe.scheduler
    base.pipe.scheduler = type(sched).from_config(sched.config, **P.training_overrides(pred))
    base.prediction = pred
    return pred


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


# --- precision and device ------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    device: str
    weight_dtype: Any  # torch dtype of the frozen base weights
    autocast: Any  # None on CPU (fp32)
    grad_checkpointing: bool
    scaler: bool  # fp16 needs loss scaling


def choose_precision(device: str, mixed_precision: str, gradient_checkpointing: bool | None) -> Precision:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BakeError("train.device is 'cuda' but no CUDA GPU is visible")
    if device == "cpu":
        if mixed_precision in ("fp16", "bf16"):
            raise BakeError(f"train.mixed_precision {mixed_precision!r} needs CUDA; on CPU use 'no' or 'auto'")
        return Precision("cpu", torch.float32, None, bool(gradient_checkpointing), False)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
    ckpt = True if gradient_checkpointing is None else gradient_checkpointing
    return Precision("cuda", dtype, None if dtype == torch.float32 else dtype, ckpt, dtype == torch.float16)


# --- data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    image: TrainImage
    bucket: tuple[int, int]  # (width, height)
    choice: Any  # BucketChoice for the image's stored size


@dataclass
class DataConfig:
    resolution: int = 512
    min_side: int = 256
    max_side: int = 1024
    step: int = 64
    batch_size: int = 1


def plan_samples(trainset: TrainSet, image_path: Callable[[str], Path], cfg: DataConfig) -> list[Sample]:
    from PIL import Image

    resos = bucket_resolutions(cfg.resolution, cfg.min_side, cfg.max_side, cfg.step)
    samples = []
    for img in trainset.images:
        with Image.open(image_path(img.image_hash)) as im:
            w, h = im.size
        choice = select_bucket(w, h, resos, step=cfg.step)
        samples.append(Sample(img, choice.bucket, choice))
    return samples


def epoch_batches(samples: list[Sample], batch_size: int, seed: int, epoch: int) -> list[list[Sample]]:
    """kohya: each image `repeats` times, batches from one bucket at a time, order shuffled per epoch."""
    rng = random.Random(f"{seed}:epoch:{epoch}")
    by_bucket: dict[tuple[int, int], list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.image.folder, s.image.name, s.image.image_hash)):
        by_bucket.setdefault(s.bucket, []).extend([s] * s.image.repeats)
    batches = []
    for bucket in sorted(by_bucket):
        items = by_bucket[bucket]
        rng.shuffle(items)
        batches += [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(samples: list[Sample], batch_size: int) -> int:
    return len(epoch_batches(samples, batch_size, 0, 0))


def load_pixels(path: Path, choice: Any, flip: bool, mode: str = "RGB") -> Any:
    """The image scaled/cropped to its bucket as a (C, H, W) tensor in [-1, 1] (masks: [0, 1], 1 channel)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if mode == "RGB" and im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = fit_to_bucket(im.convert(mode), choice)
    if flip:
        im = ImageOps.mirror(im)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if mode == "L":
        return torch.from_numpy(arr)[None]
    return torch.from_numpy(arr).permute(2, 0, 1) * 2.0 - 1.0


class LatentCache:
    """VAE latents on disk, one file per (image content, bucket, flip, VAE weights)."""

    def __init__(self, folder: Path, vae: Any, vae_id: str, device: str, dtype: Any, enabled: bool = True):
        self.folder, self.vae, self.vae_id, self.device, self.dtype = folder, vae, vae_id, device, dtype
        self.enabled = enabled
        self.hits = self.misses = 0
        self.memory: dict[str, Any] = {}  # kohya keeps cached latents in RAM too: disk is for the next run
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)

    def key(self, image_hash: str, bucket: tuple[int, int], flip: bool) -> str:
        text = f"{image_hash}:{bucket[0]}x{bucket[1]}:{int(flip)}:{self.vae_id}"
        return hashlib.sha256(text.encode()).hexdigest()

    def encode(self, pixels: Any) -> Any:
        import torch

        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
            return (dist.mean * self.vae.config.scaling_factor).float()

    def _cached(self, key: str) -> Any:
        from safetensors.torch import load_file

        if key not in self.memory:
            file = self.folder / f"{key}.safetensors"
            if not file.exists():
                return None
            self.memory[key] = load_file(str(file))["latent"].to(self.device)
        return self.memory[key]

    def batch(self, items: list[tuple[Path, Sample, bool]]) -> Any:
        """The latents of one batch (one bucket): cached ones read, the rest encoded in one VAE call."""
        import torch
        from safetensors.torch import save_file

        if not self.enabled:
            return self.encode(torch.stack([load_pixels(path, s.choice, flip) for path, s, flip in items]))
        keys = [self.key(s.image.image_hash, s.bucket, flip) for _p, s, flip in items]
        # A repeated image can come twice in one batch: encode it once.
        missing = {k: item for k, item in zip(keys, items) if self._cached(k) is None}
        self.misses += len(missing)
        self.hits += len(items) - len(missing)
        if missing:
            pixels = torch.stack([load_pixels(path, s.choice, flip) for path, s, flip in missing.values()])
            for key, latent in zip(missing, self.encode(pixels)):
                self.memory[key] = latent
                file = self.folder / f"{key}.safetensors"
                tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
                save_file({"latent": latent.to("cpu", torch.float32).contiguous()}, str(tmp))
                os.replace(tmp, file)
        return torch.stack([self.memory[k] for k in keys])


def module_id(module: Any) -> str:
    """sha256 of a module's weights: what the latent cache is keyed by."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


# --- text ----------------------------------------------------------------------------


class TextEncoder:
    """Captions to UNet conditioning, with clip skip (kohya's: penultimate layer + final norm for 2)."""

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


# --- the bake ------------------------------------------------------------------------


@dataclass
class StepInfo:
    step: int  # 1-based optimizer step
    total: int
    epoch: int  # 1-based
    loss: float
    lr: float
    elapsed_s: float


@dataclass
class BakeResult:
    files: dict[int, str]
    losses: list[tuple[int, int, float, float]]  # (step, epoch, loss, lr) of the steps run in this call
    resumed_from_epoch: int
    steps: int
    latent_cache_hits: int = 0
    latent_cache_misses: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    validation: list[ValidationLoss] = field(default_factory=list)  # the epochs run in this call


@dataclass
class Training:
    """What every step of one bake works with, built once by `prepare_training`."""

    params: Any  # bakery.recipe.TrainParams
    data: DataConfig
    prec: Precision
    base: Base
    triggers: list[str]
    spec: K.NetworkSpec
    network: list[tuple[str, Any, K.Targets]]  # (kohya prefix, model carrying the adapter, its targets)
    trainable: list[Any]  # the network's weights, in the optimizer's order
    optimizer: Any
    scheduler: Any
    scaler: Any  # fp16's loss scaler, else None
    noise_sched: Any  # DDPM: the forward process the UNet learns to undo
    samples: list[Sample]
    per_epoch: int
    total: int
    latents: LatentCache
    text: TextEncoder
    image_path: Callable[[str], Path]
    validation: list[Sample] = field(default_factory=list)  # the validation loss's pictures (TrainSet.validation)
    validation_latents: dict[str, Any] = field(default_factory=dict)  # sample key -> latent, encoded once


def seeded(seed: int, step: int, what: str) -> Any:
    """A CPU generator for the draws `what` of step `step` (public: the slide draws the same way)."""
    import torch

    digest = hashlib.sha256(f"{seed}:{step}:{what}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _text_encoders(base: Base) -> list[Any]:
    pipe = base.pipe
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if base.architecture == "sdxl" else [])


def learning_rates(params: Any) -> tuple[float, float, float]:
    """(base, UNet, text encoder) learning rates: the two parts default to the base rate."""
    base_lr = params.effective_learning_rate
    return base_lr, params.unet_lr or base_lr, params.text_encoder_lr or base_lr


def freeze_base(base: Base, prec: Precision) -> None:
    """The base model frozen on the device, in the weight dtype (the VAE in fp32 unless bf16)."""
    import torch

    for m in [base.pipe.unet, *_text_encoders(base)]:
        m.requires_grad_(False)
        m.to(prec.device)
        if prec.weight_dtype != torch.float32:
            m.to(dtype=prec.weight_dtype)
    # The VAE gives NaN in fp16 (SDXL's notably): fp32 unless bf16. It runs once per image with cached latents.
    vae = base.pipe.vae
    vae.requires_grad_(False)
    vae.to(prec.device)
    if prec.weight_dtype == torch.bfloat16:
        vae.to(dtype=torch.bfloat16)
    vae.eval()


def attach_network(base: Base, params: Any, spec: K.NetworkSpec) -> list[tuple[str, Any, K.Targets]]:
    """The trainable network: adapters on the UNet and/or text encoders, their weights in fp32."""
    import torch

    unet, arch = base.pipe.unet, base.architecture
    network: list[tuple[str, Any, K.Targets]] = []
    # The network's initial weights (lora_down is random) come from the seed alone, whatever loading
    # the base model drew from the global generator before.
    torch.manual_seed(params.seed)
    parts = [("lora_unet", unet, "unet")] if params.train_unet else []
    if params.train_text_encoder:
        parts += [(prefix, te, "te") for prefix, te in zip(K.te_prefixes(arch), _text_encoders(base))]
    for prefix, model, kind in parts:
        sgm = arch == "sdxl" and kind == "unet"
        if LN.is_lycoris_type(spec.network_type):  # IA3, DyLoRA, Diag-OFT: LyCORIS's own modules
            t = LN.find_targets(model, kind, spec, sgm=sgm)
            LN.attach(model, prefix, t, spec)
        else:
            t = K.find_targets(model, kind, spec, sgm=sgm)
            model.add_adapter(K.peft_config(t, spec))
        network.append((prefix, model, t))
    if not network:
        raise BakeError("train.train_unet and train.train_text_encoder are both off: nothing to train")
    for _, model, _t in network:  # trainable weights in fp32 (mixed precision only for the frozen base)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return network


def set_train_mode(base: Base, params: Any, prec: Precision) -> None:
    """Train mode for what learns; gradient checkpointing when the precision asks for it."""
    unet, te_models = base.pipe.unet, _text_encoders(base)
    if prec.grad_checkpointing:
        unet.enable_gradient_checkpointing()
        for te in te_models:
            if params.train_text_encoder:
                # Non-reentrant: the frozen embeddings give no grad-requiring input, and the reentrant
                # form would then silently drop the LoRA gradients inside checkpointed layers.
                if hasattr(te, "activation_checkpointing_enable"):  # transformers >= 5.2x
                    te.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    unet.train()
    for te in te_models:
        te.train(params.train_text_encoder)


def build_optimizer(params: Any, network: list[tuple[str, Any, K.Targets]], device: str) -> tuple[Any, list[Any]]:
    """The optimizer with one group per trained model (UNet and text encoders have their own rates)."""
    _base_lr, unet_lr, te_lr = learning_rates(params)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad],
               "lr": unet_lr if prefix == "lora_unet" else te_lr} for prefix, model, _t in network]
    optimizer = make_optimizer(params.optimizer, groups, weight_decay=params.weight_decay, d_coef=params.d_coef,
                               device=device)
    return optimizer, [p for g in groups for p in g["params"]]


def prepare_training(trainset: TrainSet, params: Any, *, image_path: Callable[[str], Path], workdir: Path,
                     data: DataConfig, base: Base | None = None) -> Training:
    """Everything before the first step: base model, network, optimizer, schedule, data plan, caches."""
    import torch
    from diffusers import DDPMScheduler

    if not trainset.images:
        raise BakeError("the training set is empty")
    prec = choose_precision(params.device, params.mixed_precision, params.gradient_checkpointing)
    torch.manual_seed(params.seed)
    if base is None:
        base = load_base(params.base_model, workdir, vae=params.vae, architecture=params.architecture,
                         words=trainset.triggers)
    use_prediction(base, params.v_parameterization, params.zero_terminal_snr)
    noise_sched = DDPMScheduler.from_config(base.pipe.scheduler.config, **P.training_overrides(base.prediction))
    freeze_base(base, prec)
    spec = K.NetworkSpec(params.network_type, params.network_dim, params.network_alpha, params.conv_dim,
                         params.conv_alpha)
    network = attach_network(base, params, spec)
    set_train_mode(base, params, prec)
    optimizer, trainable = build_optimizer(params, network, prec.device)
    samples = plan_samples(trainset, image_path, data)
    validation = plan_samples(TrainSet(list(trainset.validation), []), image_path, data)
    per_epoch = steps_per_epoch(samples, data.batch_size)
    total = per_epoch * params.epochs
    scheduler = make_scheduler(optimizer, params.effective_lr_scheduler, warmup=params.lr_warmup_steps,
                               total=total, restarts=params.lr_restarts)
    vae = base.pipe.vae
    latents = LatentCache(Path(workdir) / "cache" / "latents", vae, module_id(vae) if params.cache_latents else "",
                          prec.device, vae.dtype, params.cache_latents)
    return Training(
        params=params, data=data, prec=prec, base=base, triggers=list(trainset.triggers), spec=spec,
        network=network, trainable=trainable, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if prec.scaler else None, noise_sched=noise_sched, samples=samples,
        per_epoch=per_epoch, total=total, latents=latents,
        text=TextEncoder(base.pipe, base.architecture, params.clip_skip, prec.device,
                         cache=not params.train_text_encoder),
        image_path=image_path, validation=validation,
    )


# --- one step ------------------------------------------------------------------------


def noised_latents(t: Training, lat: Any, gen: Any) -> tuple[Any, Any, Any]:
    """(noise, timesteps, noised latents): noise offset, multires noise and input perturbation as asked."""
    import torch

    p, device = t.params, t.prec.device
    b = lat.shape[0]
    noise = torch.randn(lat.shape, generator=gen).to(device)
    if p.noise_offset:
        noise = noise + p.noise_offset * torch.randn((b, lat.shape[1], 1, 1), generator=gen).to(device)
    if p.multires_noise_iterations:
        noise = pyramid_noise(noise, gen, p.multires_noise_iterations, p.multires_noise_discount)
    timesteps = torch.randint(0, t.noise_sched.config.num_train_timesteps, (b,), generator=gen).to(device)
    input_noise = noise
    if p.ip_noise_gamma:  # the input is perturbed, the target stays the plain noise
        input_noise = noise + p.ip_noise_gamma * torch.randn(lat.shape, generator=gen).to(device)
    return noise, timesteps, t.noise_sched.add_noise(lat, input_noise, timesteps)


def predict_noise(t: Training, batch: list[Sample], captions: list[str], noisy: Any, timesteps: Any) -> Any:
    """The UNet's noise prediction for the noised latents, conditioned on the captions."""
    import contextlib

    import torch

    prec = t.prec
    autocast = torch.autocast("cuda", dtype=prec.autocast) if prec.autocast is not None else contextlib.nullcontext()
    with autocast:
        with contextlib.nullcontext() if t.params.train_text_encoder else torch.no_grad():
            hidden, pooled = t.text(captions)
        kwargs: dict[str, Any] = {}
        if t.base.architecture == "sdxl":  # SDXL's size conditioning: original size, crop, target size
            time_ids = torch.tensor([[s.bucket[1], s.bucket[0], 0, 0, s.bucket[1], s.bucket[0]] for s in batch],
                                    device=prec.device, dtype=hidden.dtype)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return t.base.pipe.unet(noisy.to(prec.weight_dtype), timesteps, hidden.to(prec.weight_dtype),
                                **kwargs).sample


def batch_loss(t: Training, batch: list[Sample], flips: list[bool], pred: Any, target: Any, timesteps: Any) -> Any:
    """The batch's loss against the target (noise, or velocity for v-prediction): elementwise loss, masked,
    weighted per sample (prior loss, min-SNR), averaged."""
    import torch

    p, device = t.params, t.prec.device
    alphas_cumprod = t.noise_sched.alphas_cumprod
    hc = huber_c(p.huber_schedule, p.huber_c, timesteps, alphas_cumprod, t.noise_sched.config.num_train_timesteps)
    loss = masked(t, batch, flips, conditional_loss(pred.float(), target.float(), p.loss_type, hc.to(device)))
    loss = loss.mean(dim=[1, 2, 3])
    loss = loss * torch.tensor([p.prior_loss_weight if s.image.is_reg else 1.0 for s in batch], device=device)
    if p.min_snr_gamma:
        loss = loss * min_snr_weight(timesteps, alphas_cumprod, p.min_snr_gamma,
                                     v_prediction=t.base.prediction.v_pred).to(device)
    return loss.mean()


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


def optimizer_step(t: Training, loss: Any) -> float:
    """Backward, clip the gradients, step the optimizer and the schedule; returns the rate the step used."""
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


def training_step(t: Training, batch: list[Sample], step: int) -> tuple[float, float]:
    """One optimizer step on one batch; `step` is 1-based. Returns (loss, learning rate used).

    Captions augmented, latents noised, the noise predicted, the loss weighed, the network updated.
    Every random draw comes from (seed, step), so a resumed bake takes the same ones.
    """
    import torch

    p = t.params
    rng = random.Random(f"{p.seed}:{step}:data")
    gen = seeded(p.seed, step, "noise")
    flips = [p.flip_aug and rng.random() < 0.5 for _ in batch]
    captions = [process_caption(s.image.caption, rng, keep_tokens=p.keep_tokens, shuffle=p.shuffle_caption,
                                caption_dropout_rate=p.caption_dropout_rate, tag_dropout_rate=p.tag_dropout_rate,
                                token_warmup_min=p.token_warmup_min, token_warmup_step=p.token_warmup_step,
                                step=step - 1) for s in batch]
    LN.set_step([m for _p, m, _t in t.network], p.seed, step)  # DyLoRA: the ranks this step trains
    lat = t.latents.batch([(t.image_path(s.image.image_hash), s, f) for s, f in zip(batch, flips)])
    lat = lat.to(t.prec.device, torch.float32)
    noise, timesteps, noisy = noised_latents(t, lat, gen)
    pred = predict_noise(t, batch, captions, noisy, timesteps)
    target = P.target(t.noise_sched, lat, noise, timesteps, t.base.prediction)
    loss = batch_loss(t, batch, flips, pred, target, timesteps)
    lr = optimizer_step(t, loss)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise BakeError(f"loss is {value} at step {step}: lower the learning rate, or use bf16/fp32 "
                        "(fp16 gives NaN for some networks)")
    if p.optimizer == "prodigy":  # Prodigy's effective rate is lr * d
        lr *= float(t.optimizer.param_groups[0].get("d", 1.0))
    return value, lr


# --- validation loss -----------------------------------------------------------------


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
    lat = t.validation_latents[key].repeat(n_timesteps, 1, 1, 1)
    gen = seeded(p.seed, 0, f"validation:{s.image.image_hash}")  # its own stream: the training's is untouched
    noise = torch.randn(lat.shape, generator=gen).to(device)
    steps = t.noise_sched.config.num_train_timesteps
    timesteps = torch.tensor(validation_timesteps(n_timesteps, steps), device=device)
    caption = ", ".join(sum(split_caption(s.image.caption, p.keep_tokens), []))
    batch = [s] * n_timesteps
    pred = predict_noise(t, batch, [caption] * n_timesteps, t.noise_sched.add_noise(lat, noise, timesteps), timesteps)
    hc = huber_c(p.huber_schedule, p.huber_c, timesteps, t.noise_sched.alphas_cumprod, steps)
    target = P.target(t.noise_sched, lat, noise, timesteps, t.base.prediction)
    loss = masked(t, batch, [False] * n_timesteps, conditional_loss(pred.float(), target.float(), p.loss_type,
                                                                    hc.to(device)))
    return float(loss.mean())


def validation_loss(t: Training, epoch: int, held_out: bool, n_timesteps: int) -> ValidationLoss:
    """The validation loss after `epoch`: the network in eval mode, no gradient, modes restored after."""
    import torch

    models = [t.base.pipe.unet, *_text_encoders(t.base)]
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


# --- epoch files and training state --------------------------------------------------


def dataset_summary(samples: list[Sample]) -> dict[str, Any]:
    """kohya's dataset metadata: tag frequency, folders with repeats and image counts, image totals."""
    dataset_dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    for s in samples:
        dirs = reg_dirs if s.image.is_reg else dataset_dirs
        d = dirs.setdefault(s.image.kohya_dir, {"n_repeats": s.image.repeats, "img_count": 0})
        d["img_count"] += 1
    return {
        "tag_freq": K.tag_frequency((s.image.kohya_dir, s.image.caption) for s in samples if not s.image.is_reg),
        "dataset_dirs": dataset_dirs, "reg_dirs": reg_dirs,
        "n_train": sum(s.image.repeats for s in samples if not s.image.is_reg),
        "n_reg": sum(s.image.repeats for s in samples if s.image.is_reg),
    }


def epoch_metadata(t: Training, *, name: str, epoch: int, step: int, session_id: str) -> dict[str, str]:
    """The `ss_*` and `modelspec.*` metadata of the file saved after `epoch`."""
    p, prec = t.params, t.prec
    base_lr, unet_lr, te_lr = learning_rates(p)
    ds = dataset_summary(t.samples)
    return K.build_metadata(
        spec=t.spec, architecture=t.base.architecture, output_name=name, triggers=t.triggers,
        resolution=t.data.resolution, epoch=epoch, num_epochs=p.epochs, steps=step,
        learning_rate=base_lr, unet_lr=unet_lr if p.train_unet else None,
        text_encoder_lr=te_lr if p.train_text_encoder else None,
        optimizer=type(t.optimizer).__module__ + "." + type(t.optimizer).__name__, seed=p.seed,
        clip_skip=p.clip_skip, base_model=Path(t.base.source).name if t.base.source else "",
        tag_freq=ds["tag_freq"], dataset_dirs=ds["dataset_dirs"], num_train_images=ds["n_train"],
        num_reg_images=ds["n_reg"], batch_size=t.data.batch_size,
        extra={"ss_lr_scheduler": p.effective_lr_scheduler, "ss_min_snr_gamma": str(p.min_snr_gamma),
               "ss_noise_offset": str(p.noise_offset), "ss_ip_noise_gamma": str(p.ip_noise_gamma),
               "ss_loss_type": p.loss_type, "ss_keep_tokens": str(p.keep_tokens),
               "ss_flip_aug": str(p.flip_aug), "ss_cache_latents": str(p.cache_latents),
               "ss_mixed_precision": "no" if prec.autocast is None else str(prec.autocast).split(".")[-1],
               "ss_max_train_steps": str(t.total), "ss_session_id": session_id[:16],
               "ss_reg_dataset_dirs": json.dumps(ds["reg_dirs"]), "ss_prior_loss_weight": str(p.prior_loss_weight),
               **P.metadata(t.base.prediction)},
    )


def save_epoch(t: Training, path: Path, *, name: str, epoch: int, step: int, session_id: str) -> str:
    """The network as it stands after `epoch`, written as a kohya LoRA file; returns its path."""
    from peft import get_peft_model_state_dict

    tensors: dict[str, Any] = {}
    for prefix, model, targets in t.network:
        if LN.is_lycoris_type(t.spec.network_type):
            tensors.update(LN.file_tensors(model))
        else:
            tensors.update(K.peft_to_kohya(get_peft_model_state_dict(model), prefix, targets, t.spec))
    meta = epoch_metadata(t, name=name, epoch=epoch, step=step, session_id=session_id)
    K.save_kohya(path, tensors, meta, t.params.save_precision)
    return str(path)


def network_state(model: Any) -> dict[str, Any]:
    """The trained weights of one model, on the CPU, as resuming reloads them."""
    from peft import get_peft_model_state_dict

    if LN.is_attached(model):
        return LN.network_state(model)
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def save_state(path: Path, t: Training, *, bake_key: str, epoch: int, step: int, files: dict[int, str]) -> None:
    """What resuming after `epoch` needs: network, optimizer, schedule, loss scaler, the files so far."""
    import torch

    state = {
        "bake_key": bake_key,
        "epoch": epoch,
        "step": step,
        "networks": {prefix: network_state(model) for prefix, model, _t in t.network},
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "files": {str(k): v for k, v in files.items()},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "seed": t.params.seed},
    }
    tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed: a kill leaves the last state
    torch.save(state, tmp)
    os.replace(tmp, path)


def resume_state(path: Path, t: Training, bake_key: str) -> tuple[int, dict[int, str]]:
    """Load this bake's state from `path` when there is one: (epochs done, their files still on disk)."""
    import torch
    from peft import set_peft_model_state_dict

    if not path.exists():
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("bake_key") != bake_key:  # another bake's state: start afresh
        return 0, {}
    for prefix, model, _t in t.network:
        if LN.is_attached(model):
            bad = LN.load_network_state(model, state["networks"][prefix])
        else:
            bad = set_peft_model_state_dict(model, state["networks"][prefix]).unexpected_keys
        if bad:
            raise BakeError(f"training state {path} does not match the network: {bad[:3]}")
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    return state["epoch"], {int(k): v for k, v in state["files"].items() if Path(v).exists()}


# --- the loop ------------------------------------------------------------------------


def bake(
    trainset: TrainSet,
    params: Any,  # bakery.recipe.TrainParams
    *,
    image_path: Callable[[str], Path],
    workdir: Path,
    out_dir: Path,
    state_dir: Path,
    name: str,
    data: DataConfig,
    bake_key: str = "",
    session_id: str = "",
    base: Base | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[int, str | None], None] | None = None,
    on_validation: Callable[[ValidationLoss], None] | None = None,
    validation_steps: int = 4,
) -> BakeResult:
    """Train; resume from `state_dir` when it holds this bake's state (`bake_key`). Returns the epoch files.

    `session_id` goes into the files' metadata (the bake key when empty).

    With validation pictures in the TrainSet, the validation loss after each epoch (at `validation_steps`
    fixed timesteps per picture) goes to `on_validation` and into the result."""
    started = time.monotonic()
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    t = prepare_training(trainset, params, image_path=image_path, workdir=Path(workdir), data=data, base=base)
    state_file = state_dir / STATE_FILE
    start_epoch, files = resume_state(state_file, t, bake_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    losses: list[tuple[int, int, float, float]] = []
    validated: list[ValidationLoss] = []
    step = start_epoch * t.per_epoch
    for epoch in range(start_epoch + 1, params.epochs + 1):
        for batch in epoch_batches(t.samples, data.batch_size, params.seed, epoch):
            step += 1
            loss, lr = training_step(t, batch, step)
            losses.append((step, epoch, loss, lr))
            if on_step:
                on_step(StepInfo(step, t.total, epoch, loss, lr, time.monotonic() - started))
        if t.validation:
            validated.append(validation_loss(t, epoch, trainset.validation_held_out, validation_steps))
            if on_validation:
                on_validation(validated[-1])
        saved = None
        if epoch % params.save_every_n_epochs == 0 or epoch == params.epochs:
            path = out_dir / f"{name}-{epoch:06d}.safetensors"
            files[epoch] = saved = save_epoch(t, path, name=name, epoch=epoch, step=step,
                                               session_id=session_id or bake_key)
        if on_epoch:  # before the state: what the caller records for this epoch is never lost on a kill
            on_epoch(epoch, saved)
        save_state(state_file, t, bake_key=bake_key, epoch=epoch, step=step, files=files)
    return BakeResult(files=dict(sorted(files.items())), losses=losses, resumed_from_epoch=start_epoch, steps=step,
                      latent_cache_hits=t.latents.hits, latent_cache_misses=t.latents.misses,
                      seconds=time.monotonic() - started, validation=validated,
                      extra={"device": t.prec.device, "per_epoch": t.per_epoch, "architecture": t.base.architecture,
                             "base_source": t.base.source})
