"""Repeats per folder (rules.md §8): balance steps per epoch across concepts.

Folder `N_name`: N repeats per epoch, steps per epoch = N x images (counted
before dividing by batch size). N = round(target / images), at least 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# rules.md §8: keep the main concept under these totals.
STEP_CAPS = {"adamw": 6000, "adamw8bit": 6000, "came": 6000, "prodigy": 3000}
MIN_OUTFIT_IMAGES = 8  # rules.md §8: fewer go to misc

ADAMW = 2  # rules.md §8: "AdamW doubles steps" (the targets are Prodigy's)
SDXL = 1 / 2
SNR_OR_IP_NOISE = 3 / 5
OLD_ANIME = 1 / 3
IA3 = 1 / 2
# The optimizers the guide counts as AdamW for steps: AdamW itself and CAME (its lighter alternative, rules.md §12),
# as the step caps do (STEP_CAPS).
ADAMW_LIKE = ("adamw", "adamw8bit", "came")


def multiplier(sdxl: bool = False, snr_or_ip_noise: bool = False, old_anime: bool = False, ia3: bool = False,
               adamw: bool = False) -> float:
    """The guide's step multipliers: x2 AdamW (rules.md §8), x1/2 SDXL, x3/5 min-SNR or ip-noise gamma, x1/3 old
    anime/low-res screencaps, x1/2 IA3 (rules.md §12)."""
    m = IA3 if ia3 else 1.0
    if adamw:
        m *= ADAMW
    if sdxl:
        m *= SDXL
    if snr_or_ip_noise:
        m *= SNR_OR_IP_NOISE
    if old_anime:
        m *= OLD_ANIME
    return m


def repeats_for(images: int, target_steps: float) -> int:
    """round(target / images), halves rounded up, at least 1 (100 images, 300 steps -> 3)."""
    if images <= 0:
        raise ValueError("a folder needs at least one image")
    return max(1, math.floor(target_steps / images + 0.5))


@dataclass(frozen=True)
class FolderIn:
    folder: str
    concept: str
    images: int
    target_steps: int  # before multipliers
    is_outfit: bool = False
    factor: float = 1.0  # this folder's own step factor on top of the run's (a retro-style concept: 1/3)


@dataclass(frozen=True)
class FolderPlan:
    folder: str
    concept: str
    images: int
    repeats: int
    steps_per_epoch: int


@dataclass
class RepeatsPlan:
    folders: list[FolderPlan]
    multiplier: float
    epochs: int
    per_concept: dict[str, int] = field(default_factory=dict)  # steps per epoch
    total_steps: int = 0  # every folder, all epochs (before batch size)
    warnings: list[str] = field(default_factory=list)

    def repeats(self) -> dict[str, int]:
        return {f.folder: f.repeats for f in self.folders}

    def table(self) -> list[dict[str, object]]:
        return [
            {"folder": f"{f.repeats}_{f.folder}", "concept": f.concept, "images": f.images, "repeats": f.repeats,
             "steps_per_epoch": f.steps_per_epoch, "steps_total": f.steps_per_epoch * self.epochs}
            for f in self.folders
        ]


def plan_repeats(folders: Sequence[FolderIn], epochs: int, optimizer: str, mult: float = 1.0,
                 main_concept: str | None = None) -> RepeatsPlan:
    plan = RepeatsPlan(folders=[], multiplier=mult, epochs=epochs)
    for f in folders:
        if f.images <= 0:
            continue
        n = repeats_for(f.images, f.target_steps * mult * f.factor)
        plan.folders.append(FolderPlan(f.folder, f.concept, f.images, n, n * f.images))
        plan.per_concept[f.concept] = plan.per_concept.get(f.concept, 0) + n * f.images
        if f.is_outfit and f.images < MIN_OUTFIT_IMAGES:
            plan.warnings.append(
                f"{f.folder}: {f.images} images; an outfit needs >= {MIN_OUTFIT_IMAGES} (>= 20 if complex), "
                "the guide puts fewer in misc"
            )
    plan.total_steps = sum(f.steps_per_epoch for f in plan.folders) * epochs
    main = main_concept or (folders[0].concept if folders else None)
    cap = STEP_CAPS.get(optimizer)
    if main in plan.per_concept and cap:
        main_total = plan.per_concept[main] * epochs
        if main_total > cap:
            plan.warnings.append(
                f"main concept {main}: {main_total} steps over {epochs} epochs exceeds the guide's cap of {cap} "
                f"for {optimizer} (lower target_steps or epochs)"
            )
    return plan


STYLE_MIN_PICTURES = 150  # rules.md §10: style LoRAs take 150-250+ pictures
STYLE_LR = (1e-5, 5e-5)  # rules.md §10: a style LoRA's learning rate (AdamW/CAME)
LOKR_LR = (5e-5, 8e-5)  # rules.md §12 (bakery/recipe/bake.py defaults LoKr to the low end)


def step_notes(adamw: bool = False, ia3: bool = False, sdxl: bool = False, snr_or_ip_noise: bool = False,
               old_anime: bool = False) -> list[str]:
    """The multipliers applied, said in the guide's words (the plan, `bakery status`)."""
    said = [(adamw, "AdamW/CAME: steps x2 (rules.md §8; repeats.adamw_double = false keeps Prodigy's)"),
            (ia3, "IA3: steps x1/2 (rules.md §12)"), (sdxl, "SDXL: steps x1/2 (rules.md §8)"),
            (snr_or_ip_noise, "min-SNR / ip-noise gamma: steps x3/5 (rules.md §8)"),
            (old_anime, "old anime / low-res screencaps: steps x1/3 (rules.md §8)")]
    return [text for on, text in said if on]


def rate_advice(optimizer: str, network_type: str, batch_size: int, written_lr: float, factor: float,
                style_pictures: dict[str, int]) -> tuple[list[str], list[str]]:
    """(notes, warnings) about the learning rate: the batch-size scaling (rules.md §12), a style LoRA's numbers
    (rules.md §10: 150+ pictures, lr 1e-5-5e-5) and LoKr's lr range (rules.md §12)."""
    notes, warnings = [], []
    if factor != 1.0:
        notes.append(f"batch size {batch_size}: lr x{factor:.3g} (x1.2 per doubling, rules.md §12): "
                     f"{written_lr:.3g} -> {written_lr * factor:.3g} (train.lr_batch_scaling = false keeps it)")
    adaptive = optimizer == "prodigy"  # Prodigy's lr is a multiplier on its own estimate: the ranges do not apply
    for concept, n in sorted(style_pictures.items()):
        if n < STYLE_MIN_PICTURES:
            warnings.append(f"style LoRA {concept}: {n} pictures; the guide asks 150-250+ for a style (rules.md §10)")
        if not adaptive and not STYLE_LR[0] <= written_lr <= STYLE_LR[1]:
            warnings.append(f"style LoRA {concept}: learning rate {written_lr:.3g} is outside the guide's "
                            f"{STYLE_LR[0]:g}-{STYLE_LR[1]:g} for styles (rules.md §10): set train.learning_rate")
    if network_type == "lokr" and not adaptive and not LOKR_LR[0] <= written_lr <= LOKR_LR[1]:
        warnings.append(f"lokr: learning rate {written_lr:.3g} is outside the guide's {LOKR_LR[0]:g}-{LOKR_LR[1]:g} "
                        "(rules.md §12)")
    return notes, warnings
