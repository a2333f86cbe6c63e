"""Tasting the cake (rules.md §13): numbers from an epoch x weight grid, and the recommendation.

Pure functions over numpy images (H x W x 3, uint8) and the bake's loss log;
no model and no Prefect here. `bakery/craft/taste/xyz.py` makes the images,
`bakery/craft/taste/reports/evaluation.py` writes the report.

The checks:
- effect: mean absolute pixel difference (0-255 scale) between weight 0 and
  weight 1 at the same prompt and seed. ~0 means the LoRA does nothing.
- frying: saturation, RMS contrast and high-frequency energy of the images at
  each weight, their largest rise over weight 0 (0-1 scale). An epoch whose score already exceeds the
  threshold at a weight <= 0.5 is over-trained ("frying below 0.5").
- likeness: similarity of the generated images to the concept's training
  images, with an image-embedding model when one is configured (cosine), else
  colour-histogram intersection (a cheap, documented proxy: it sees palette,
  not identity).
- loss: per-epoch mean of the bake log; the last epoch of steadily falling
  loss before it rises.
- validation loss: the bake's deterministic denoising loss per epoch on held-out
  pictures; a clear minimum (interior, or at the last epoch) picks the epoch
  before the loss rule does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# rules.md §13: LoRA on vs off with the same prompt and seed giving identical images.
NOTHING_CAUSES = (
    "wrong dataset folders (images not found under img/<repeats>_<name>)",
    "empty or missing captions",
    "a learning rate too low (or 0) for the optimizer",
    "the trigger word not applied (missing from captions or prompts)",
)
# rules.md §13: frying below weight 0.5 means over-trained.
FRY_CAUSES = ("too many repeats/steps", "a learning rate too high")


@dataclass(frozen=True)
class ImageStats:
    saturation: float  # mean HSV saturation, 0-1
    contrast: float  # RMS contrast: standard deviation of luminance, 0-1
    hf_energy: float  # share of spectral energy (DC excluded) above half the Nyquist radius, 0-1


def as_rgb(img: np.ndarray) -> np.ndarray:
    """uint8 or float (0-1) image -> float32 H x W x 3 in 0-1."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.clip(arr[..., :3], 0.0, 1.0)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference on the 0-255 scale."""
    return float(np.abs(as_rgb(a) - as_rgb(b)).mean() * 255.0)


def image_stats(img: np.ndarray) -> ImageStats:
    rgb = as_rgb(img)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = float(np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0).mean())
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    contrast = float(lum.std())
    power = np.abs(np.fft.fft2(lum - lum.mean())) ** 2
    fy = np.fft.fftfreq(lum.shape[0])[:, None]
    fx = np.fft.fftfreq(lum.shape[1])[None, :]
    radius = np.sqrt(fx**2 + fy**2)  # cycles per pixel, Nyquist = 0.5
    total = power.sum()
    hf = float(power[radius > 0.25].sum() / total) if total > 1e-12 else 0.0
    return ImageStats(saturation, contrast, hf)


def mean_stats(stats: Iterable[ImageStats]) -> ImageStats:
    s = list(stats)
    if not s:
        raise ValueError("no images to measure")
    return ImageStats(*(float(np.mean([getattr(x, f) for x in s])) for f in ("saturation", "contrast", "hf_energy")))


def fry_score(stats: ImageStats, baseline: ImageStats) -> float:
    """The largest rise of saturation, contrast or high-frequency energy over weight 0 (all on a 0-1 scale).

    Absolute rises, not ratios: a muted base image gaining some colour is a style,
    not frying; frying pushes saturation towards 1, contrast up and fine-grained
    noise (high-frequency energy) up, all by large amounts.
    """
    return float(max(getattr(stats, f) - getattr(baseline, f) for f in ("saturation", "contrast", "hf_energy")))


def fries_at(scores: Mapping[float, float], threshold: float) -> float | None:
    """The lowest positive weight whose fry score exceeds the threshold (None: never)."""
    fried = sorted(w for w, s in scores.items() if w > 0 and s > threshold)
    return fried[0] if fried else None


def _hist(img: np.ndarray, bins: int) -> np.ndarray:
    q = np.minimum((as_rgb(img) * bins).astype(np.int64), bins - 1)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    h = np.bincount(idx.ravel(), minlength=bins**3).astype(np.float64)
    return h / h.sum()


def histogram_likeness(generated: Sequence[np.ndarray], references: Sequence[np.ndarray], bins: int = 8) -> float:
    """Colour-histogram intersection (0-1): each generated image against its best-matching reference, averaged.

    A cheap proxy used when no embedding model is configured: it measures palette
    (hair, eye and outfit colours), not identity or pose.
    """
    if not generated or not references:
        raise ValueError("likeness needs generated and reference images")
    refs = np.stack([_hist(r, bins) for r in references])
    return float(np.mean([np.minimum(refs, _hist(g, bins)).sum(axis=1).max() for g in generated]))


def embedding_likeness(generated: np.ndarray, references: np.ndarray) -> float:
    """Cosine similarity of each generated embedding to its nearest reference embedding, averaged."""
    g = generated / np.linalg.norm(generated, axis=1, keepdims=True).clip(1e-12)
    r = references / np.linalg.norm(references, axis=1, keepdims=True).clip(1e-12)
    return float((g @ r.T).max(axis=1).mean())


# -- loss -------------------------------------------------------------------------------------------

def epoch_losses(log: Iterable[Mapping[str, float]]) -> dict[int, float]:
    """Mean loss per epoch from bake_log rows (step, epoch, loss)."""
    sums: dict[int, list[float]] = {}
    for row in log:
        if row["loss"] is not None and math.isfinite(row["loss"]):
            sums.setdefault(int(row["epoch"]), []).append(float(row["loss"]))
    return {e: float(np.mean(v)) for e, v in sorted(sums.items())}


@dataclass(frozen=True)
class LossChoice:
    epoch: int | None  # None: the loss does not pick an epoch (no log, flat)
    shape: str  # none | flat | falling | falling_then_rising | rising
    reason: str


def loss_choice(means: Mapping[int, float], rise_tolerance: float = 0.01, flat_tolerance: float = 0.02) -> LossChoice:
    """The guide's rule: the last epoch of steadily falling loss before it rises.

    A step counts as a rise when the next epoch's mean is above this one's by more
    than `rise_tolerance` (relative); the curve is flat when its whole range is
    within `flat_tolerance` of its largest value.
    """
    epochs = sorted(means)
    if len(epochs) < 2:
        return LossChoice(None, "none", "fewer than two epochs in the loss log")
    vals = [means[e] for e in epochs]
    hi, lo = max(vals), min(vals)
    if hi - lo <= flat_tolerance * max(abs(hi), 1e-12):
        return LossChoice(None, "flat", f"loss is flat (range {hi - lo:.4g} within {flat_tolerance:.0%}): it does not pick an epoch")
    if vals[1] > vals[0] * (1 + rise_tolerance):
        return LossChoice(None, "rising", "loss rises from the first epoch on: it does not pick an epoch")
    for i in range(len(vals) - 1):
        if vals[i + 1] > vals[i] * (1 + rise_tolerance):
            return LossChoice(
                epochs[i], "falling_then_rising",
                f"loss falls until epoch {epochs[i]} ({vals[i]:.4g}) and rises after it ({vals[i + 1]:.4g} at epoch {epochs[i + 1]})",
            )
    best = epochs[int(np.argmin(vals))]
    return LossChoice(best, "falling", f"loss keeps falling to epoch {best} ({means[best]:.4g}); it has not risen yet")


# -- validation loss --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValidationCurve:
    losses: dict[int, float]  # epoch -> validation loss (catalog `validation_loss`)
    held_out: bool  # False: measured on training pictures, not held out
    n_pictures: int
    epoch: int | None  # the epoch its clear minimum picks; None: it does not pick one
    reason: str


def validation_curve(rows: Sequence[Mapping[str, object]], min_drop: float = 0.01) -> ValidationCurve | None:
    """The bake's validation loss rows (epoch, loss, held_out, n_pictures) as a curve; None when there are none."""
    if not rows:
        return None
    losses = {int(r["epoch"]): float(r["loss"]) for r in rows}  # type: ignore[arg-type]
    held_out = all(bool(r["held_out"]) for r in rows)
    epoch, reason = validation_minimum(losses, held_out, min_drop)
    return ValidationCurve(losses, held_out, max(int(r["n_pictures"]) for r in rows), epoch, reason)  # type: ignore[arg-type]


def validation_minimum(losses: Mapping[int, float], held_out: bool, min_drop: float) -> tuple[int | None, str]:
    """The epoch of minimal validation loss when it is clearly (by more than `min_drop`, relative) below its
    neighbours, inside the curve or at its end. On training pictures only an interior minimum counts: their
    loss keeps falling as the LoRA learns them, whether it over-fits or not."""
    what = "held-out pictures" if held_out else "training pictures, not held out"
    epochs = sorted(losses)
    if len(epochs) < 2:
        return None, f"validation loss ({what}): fewer than two epochs"
    vals = [losses[e] for e in epochs]
    i = int(np.argmin(vals))
    best = epochs[i]
    if i == 0:
        return None, f"validation loss ({what}) is lowest at the first epoch: it does not pick an epoch"
    if i == len(vals) - 1 and not held_out:
        return None, (f"validation loss ({what}) falls to the last epoch: on training pictures that cannot show "
                      "over-fitting, it does not pick an epoch")
    neighbours = [vals[j] for j in (i - 1, i + 1) if j < len(vals)]
    if any(vals[i] > v * (1 - min_drop) for v in neighbours):
        return None, f"validation loss ({what}) has no clear minimum (within {min_drop:.0%} of its neighbours)"
    after = (f", rises after it ({vals[i + 1]:.4g} at epoch {epochs[i + 1]})" if i + 1 < len(vals)
             else ", the last epoch")
    return best, f"validation loss ({what}) is lowest at epoch {best} ({vals[i]:.4g}){after}"


# -- per epoch ------------------------------------------------------------------------------------------

@dataclass
class EpochEval:
    epoch: int
    effect: float  # mean |w1 - w0| pixel difference, 0-255
    does_nothing: bool
    effect_by_weight: dict[float, float]  # mean |w - w0| per weight
    stats_by_weight: dict[float, ImageStats]
    fry_by_weight: dict[float, float]
    fries_at: float | None  # lowest weight whose fry score exceeds the threshold
    over_trained: bool  # fries at a weight <= fry_max_weight
    likeness_by_weight: dict[float, float] = field(default_factory=dict)
    loss: float | None = None
    effect_ratio: float | None = None  # effect over the change between seeds at weight 0 (bakery/craft/taste/judges/tags.py)


def evaluate_epoch(
    epoch: int,
    images: Mapping[tuple[float, int, int], np.ndarray],
    effect_min: float,
    fry_threshold: float,
    fry_max_weight: float,
) -> EpochEval:
    """Numbers for one epoch from its images keyed (weight, prompt index, seed); weights 0 and 1 must be there."""
    weights = sorted({k[0] for k in images})
    if 0.0 not in weights or 1.0 not in weights:
        raise ValueError(f"epoch {epoch}: the effect check needs weights 0 and 1, got {weights}")
    pairs = sorted({k[1:] for k in images})
    base = {p: images[(0.0, *p)] for p in pairs}
    effect_by_weight = {w: float(np.mean([mean_abs_diff(images[(w, *p)], base[p]) for p in pairs])) for w in weights}
    stats_by_weight = {w: mean_stats(image_stats(images[(w, *p)]) for p in pairs) for w in weights}
    fry = {w: fry_score(stats_by_weight[w], stats_by_weight[0.0]) for w in weights}
    first_fry = fries_at(fry, fry_threshold)
    effect = effect_by_weight[1.0]
    return EpochEval(
        epoch=epoch,
        effect=effect,
        does_nothing=effect < effect_min,
        effect_by_weight=effect_by_weight,
        stats_by_weight=stats_by_weight,
        fry_by_weight=fry,
        fries_at=first_fry,
        over_trained=first_fry is not None and first_fry <= fry_max_weight,
    )


# -- recommendation ---------------------------------------------------------------------------------

@dataclass
class Recommendation:
    epoch: int | None  # None: nothing to recommend (every epoch does nothing)
    weight_min: float | None
    weight_max: float | None
    reasons: list[str]
    flags: list[str]  # problems found, each with its likely causes


def guide_epoch(total_epochs: int, available: Sequence[int]) -> int:
    """rules.md §13: the epoch at 0.5-0.75 of the total (of 8 epochs: 5 or 6); the latest saved one there."""
    hi = max(1, math.floor(0.75 * total_epochs))
    lo = max(1, math.ceil(0.5 * total_epochs))
    inside = [e for e in available if lo <= e <= hi]
    if inside:
        return max(inside)
    return min(available, key=lambda e: (abs(e - hi), -e))


def _weight_range(ev: EpochEval, weights: Sequence[float]) -> tuple[float, float, list[str]]:
    positive = sorted(w for w in weights if w > 0)
    reasons = []
    upper = max(positive)
    if ev.fries_at is not None:
        below = [w for w in positive if w < ev.fries_at]
        upper = max(below) if below else min(positive)
        reasons.append(f"epoch {ev.epoch} starts frying at weight {ev.fries_at:g}: keep the weight at or below {upper:g}")
    strong = [w for w in positive if w <= upper and ev.effect_by_weight.get(w, 0.0) >= 0.5 * ev.effect]
    lower = min(strong) if strong else upper
    reasons.append(f"from weight {lower:g} the LoRA shows at least half of its full effect")
    return lower, upper, reasons


def recommend(
    evals: Sequence[EpochEval],
    loss: LossChoice,
    total_epochs: int,
    weights: Sequence[float],
    likeness_method: str | None = None,
    validation: ValidationCurve | None = None,
) -> Recommendation:
    """Pick an epoch and a weight range from the checks, saying which rules fired."""
    if not evals:
        raise ValueError("no evaluated epochs")
    by_epoch = {e.epoch: e for e in evals}
    flags = epoch_flags(evals)
    usable = [e.epoch for e in evals if not e.does_nothing]
    if not usable:
        return Recommendation(None, None, None, ["no epoch changes the image: nothing to recommend, fix the bake"], flags)
    good = [e for e in usable if not by_epoch[e].over_trained] or usable
    target, reasons = _target_epoch(by_epoch, good, loss, total_epochs, likeness_method, validation)
    ev = by_epoch[target]
    lo, hi, wr = _weight_range(ev, weights)
    reasons += wr
    if ev.likeness_by_weight:
        best_w = max(ev.likeness_by_weight, key=lambda w: ev.likeness_by_weight[w])
        reasons.append(f"likeness ({likeness_method}) at epoch {target} is highest at weight {best_w:g} "
                       f"({ev.likeness_by_weight[best_w]:.3f})")
    return Recommendation(target, lo, hi, reasons, flags)


def epoch_flags(evals: Sequence[EpochEval]) -> list[str]:
    """The guide's alarms per epoch: a LoRA that does nothing, one that fries at a low weight (rules.md §13)."""
    flags = []
    for e in evals:
        if e.does_nothing:
            ratio = "" if e.effect_ratio is None else f", {e.effect_ratio:.2g} of the change between seeds"
            flags.append(
                f"epoch {e.epoch}: LoRA does nothing (weight 0 vs 1 differ by {e.effect:.3g}/255{ratio}): likely causes: "
                + "; ".join(NOTHING_CAUSES)
            )
        elif e.over_trained:
            flags.append(
                f"epoch {e.epoch}: over-trained, fries already at weight {e.fries_at:g}: likely causes: "
                + "; ".join(FRY_CAUSES) + " (retrain with fewer repeats or a lower learning rate)"
            )
    return flags


def _target_epoch(by_epoch: dict[int, EpochEval], good: list[int], loss: LossChoice, total_epochs: int,
                  likeness_method: str | None, validation: ValidationCurve | None = None) -> tuple[int, list[str]]:
    """A clear validation-loss minimum, else the loss rule, else likeness by embeddings, else the guide's
    0.5-0.75 rule; snapped to a good epoch."""
    reasons = [] if validation is None or validation.epoch is not None else [
        f"validation loss did not decide: {validation.reason}"]
    if validation is not None and validation.epoch is not None:
        reasons.append(validation.reason)
        target = validation.epoch
    elif loss.epoch is not None:
        reasons.append(f"loss rule: {loss.reason}")
        target = loss.epoch
    else:
        reasons.append(f"loss rule did not fire ({loss.reason})")
        if likeness_method and likeness_method != "histogram" and any(by_epoch[e].likeness_by_weight for e in good):
            target = max(good, key=lambda e: by_epoch[e].likeness_by_weight.get(1.0, -1.0))
            reasons.append(f"likeness ({likeness_method}) is highest at epoch {target}")
        else:
            target = guide_epoch(total_epochs, good)
            reasons.append(f"guide's rule: the epoch at 0.5-0.75 of the {total_epochs} epochs -> {target}")
    # Snap to an epoch that was evaluated, usable and not fried (earlier first: later ones are more trained).
    if target not in good:
        earlier = [e for e in good if e <= target]
        chosen = max(earlier) if earlier else min(good, key=lambda e: abs(e - target))
        if target in by_epoch and by_epoch[target].over_trained:
            why = f"epoch {target} is over-trained"
        elif target in by_epoch and by_epoch[target].does_nothing:
            why = f"epoch {target} does nothing"
        else:
            why = f"epoch {target} was not evaluated"
        reasons.append(f"{why}: recommending epoch {chosen} instead")
        target = chosen
    return target, reasons


# -- prompts ----------------------------------------------------------------------------------------

def caption_tags(caption: str) -> list[str]:
    """Tags of a kohya caption ("trigger, tag ||| tag, ..."), in order, without empties."""
    return [t.strip() for part in caption.split("|||") for t in part.split(",") if t.strip()]


def tag_counts_by_trigger(
    triggers: Sequence[str],
    captions: Iterable[str] | None = None,
    tag_frequency: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, dict[str, int]]:
    """Kept-tag counts of each trigger's group (images whose caption holds the trigger), other triggers excluded.

    From the training captions when given, else from the LoRA's `ss_tag_frequency`
    metadata (kohya: {"<repeats>_<folder>": {tag: count}}), where a folder belongs
    to every trigger it contains.
    """
    skip = set(triggers)
    out: dict[str, dict[str, int]] = {t: {} for t in triggers}
    groups: list[dict[str, int]] = []
    if captions is not None:
        for cap in captions:
            groups.append({t: 1 for t in caption_tags(cap)})
    elif tag_frequency:
        groups = [dict(v) for v in tag_frequency.values()]
    for counts in groups:
        for trig in triggers:
            if trig in counts:
                dest = out[trig]
                for tag, n in counts.items():
                    if tag not in skip:
                        dest[tag] = dest.get(tag, 0) + int(n)
    return out


def default_prompts(triggers: Sequence[str], counts: Mapping[str, Mapping[str, int]], n_tags: int) -> list[str]:
    """Each trigger alone, and each trigger with its group's `n_tags` most frequent kept tags."""
    prompts: list[str] = []
    for trig in triggers:
        prompts.append(trig)
        top = sorted(counts.get(trig, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:n_tags]
        if top:
            prompts.append(", ".join([trig, *(t for t, _ in top)]))
    return list(dict.fromkeys(prompts))
