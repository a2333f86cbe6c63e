"""The bake's data: captions (kohya's augmentation), samples and their buckets, epoch batches, pixels, the latent cache.

Architecture-free: the latent cache encodes with the callable the base's family gives (`BaseFamily.encode`).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.craft.prepare.buckets import bucket_resolutions, fit_to_bucket, select_bucket
from bakery.manifest import TrainImage, TrainSet

SD15_MAX_RESOLUTION = 768  # rules.md §12: "SD1.5 misbehaves above 768 px"


def resolution_warnings(architecture: str, resolution: int) -> list[str]:
    """The guide's word on the training resolution for the base's architecture (rules.md §12)."""
    if architecture == "sd15" and resolution > SD15_MAX_RESOLUTION:
        return [f"buckets.resolution {resolution} on an SD1.5 base: SD1.5 misbehaves above {SD15_MAX_RESOLUTION} px "
                f"(rules.md §12): use {SD15_MAX_RESOLUTION} or less, or an SDXL base"]
    return []


# --- captions ------------------------------------------------------------------------


def split_caption(caption: str, keep_tokens: int) -> tuple[list[str], list[str]]:
    """(head kept in place, tags that may be shuffled/dropped). `|||` ends the head when present."""
    if "|||" in caption:
        head, tail = caption.split("|||", 1)
        return _tags(head), _tags(tail)
    tags = _tags(caption)
    return tags[:keep_tokens], tags[keep_tokens:]


def full_caption(caption: str) -> str:
    """The caption as a step without augmentation (no shuffle, dropout or warmup) and the validation loss read it."""
    return ", ".join(sum(split_caption(caption, 0), []))


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


# --- samples and batches ------------------------------------------------------------


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
    """VAE latents on disk, one file per (image content, bucket, flip, VAE weights).

    `encoder`: pixels (N, C, H, W) in [-1, 1] -> fp32 latents on `device` (the base family's `encode`)."""

    def __init__(self, folder: Path, encoder: Callable[[Any], Any], vae_id: str, device: str, enabled: bool = True):
        self.folder, self.encoder, self.vae_id, self.device = folder, encoder, vae_id, device
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
            return self.encoder(pixels)

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


