"""The evaluation's numbers and its recommendation, on synthetic images and loss curves (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from bakery.craft.taste import evaluate as ev


def smooth(seed: int = 0, size: int = 64) -> np.ndarray:
    """A soft, muted gradient image."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    base = np.stack([0.4 + 0.2 * x, 0.45 + 0.1 * y, 0.5 - 0.1 * x], axis=2) + rng.normal(0, 0.005, (size, size, 3))
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def fried(seed: int = 0, size: int = 64) -> np.ndarray:
    """Saturated, high-contrast, noisy: what a fried LoRA renders."""
    rng = np.random.default_rng(seed)
    return (rng.random((size, size, 3)) > 0.5).astype(np.uint8) * 255


def synthetic_log(means: list[float], steps: int = 10, noise: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(0)
    rows, step = [], 0
    for epoch, m in enumerate(means, start=1):
        for _ in range(steps):
            step += 1
            rows.append({"step": step, "epoch": epoch, "loss": m + rng.normal(0, noise), "lr": 1.0})
    return rows


def test_image_stats_see_frying():
    calm, hot = ev.image_stats(smooth()), ev.image_stats(fried())
    assert hot.saturation > calm.saturation and hot.contrast > calm.contrast and hot.hf_energy > calm.hf_energy
    assert ev.fry_score(calm, calm) == pytest.approx(0.0)
    assert ev.fry_score(hot, calm) > 0.4
    assert ev.mean_abs_diff(smooth(), smooth()) == 0.0
    assert ev.fries_at({0.0: 0.0, 0.25: 0.1, 0.5: 0.9, 1.0: 3.0}, 0.5) == 0.5
    assert ev.fries_at({0.0: 0.0, 1.0: 0.2}, 0.5) is None


def grid(images_by_weight):
    return {(w, p, s): img(p * 10 + s) for w, img in images_by_weight.items() for p in range(2) for s in (1, 2)}


def test_effect_flags_identical_images_and_frying_below_half():
    # A LoRA that does nothing: every weight renders the base image.
    nothing = ev.evaluate_epoch(1, grid({0.0: smooth, 0.5: smooth, 1.0: smooth}), 1.0, 0.25, 0.5)
    assert nothing.effect == 0.0 and nothing.does_nothing and not nothing.over_trained

    def shifted(seed):
        img = smooth(seed).astype(np.int16)
        img[..., 0] += 30  # a visible, calm change (a new hair colour, say)
        return np.clip(img, 0, 255).astype(np.uint8)

    works = ev.evaluate_epoch(2, grid({0.0: smooth, 0.5: shifted, 1.0: shifted}), 1.0, 0.25, 0.5)
    assert works.effect >= 10 and not works.does_nothing and works.fries_at is None

    overcooked = ev.evaluate_epoch(3, grid({0.0: smooth, 0.25: smooth, 0.5: fried, 1.0: fried}), 1.0, 0.25, 0.5)
    assert overcooked.fries_at == 0.5 and overcooked.over_trained
    late = ev.evaluate_epoch(4, grid({0.0: smooth, 0.5: shifted, 1.0: fried}), 1.0, 0.25, 0.5)
    assert late.fries_at == 1.0 and not late.over_trained

    with pytest.raises(ValueError, match="weights 0 and 1"):
        ev.evaluate_epoch(5, grid({0.0: smooth, 0.5: smooth}), 1.0, 0.25, 0.5)


def test_histogram_likeness_prefers_the_same_palette():
    refs = [smooth(1), smooth(2)]
    assert ev.histogram_likeness([smooth(3)], refs) > ev.histogram_likeness([fried(3)], refs)
    assert 0.0 <= ev.histogram_likeness([fried(3)], refs) <= 1.0
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert ev.embedding_likeness(a, a) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("means", "shape", "epoch"),
    [
        ([1.0, 0.8, 0.6, 0.5, 0.45, 0.42], "falling", 6),
        ([1.0, 0.7, 0.5, 0.4, 0.45, 0.55, 0.7, 0.8], "falling_then_rising", 4),
        ([0.30, 0.301, 0.299, 0.3005, 0.2995, 0.30, 0.301, 0.30], "flat", None),
    ],
    ids=["falling", "falling-then-rising", "flat"],
)
def test_loss_rule_on_synthetic_curves(means, shape, epoch):
    per_epoch = ev.epoch_losses(synthetic_log(means, noise=0.001))
    assert sorted(per_epoch) == list(range(1, len(means) + 1))
    choice = ev.loss_choice(per_epoch)
    assert (choice.shape, choice.epoch) == (shape, epoch)


def evals_for(epochs, nothing=(), fried_at=None):
    out = []
    for e in epochs:
        fa = (fried_at or {}).get(e)
        out.append(ev.EpochEval(
            epoch=e, effect=0.0 if e in nothing else 20.0, does_nothing=e in nothing,
            effect_by_weight={0.0: 0.0, 0.25: 5.0, 0.5: 11.0, 0.75: 16.0, 1.0: 20.0},
            stats_by_weight={}, fry_by_weight={}, fries_at=fa, over_trained=fa is not None and fa <= 0.5,
        ))
    return out


WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_recommendation_follows_the_loss_then_the_guide():
    rising = ev.loss_choice(ev.epoch_losses(synthetic_log([1.0, 0.7, 0.5, 0.4, 0.45, 0.55, 0.7, 0.8])))
    rec = ev.recommend(evals_for(range(1, 9)), rising, 8, WEIGHTS)
    assert rec.epoch == 4 and (rec.weight_min, rec.weight_max) == (0.5, 1.0) and not rec.flags
    assert any("loss rule" in r and "epoch 4" in r for r in rec.reasons)

    flat = ev.loss_choice(ev.epoch_losses(synthetic_log([0.3] * 8)))
    rec = ev.recommend(evals_for(range(1, 9)), flat, 8, WEIGHTS)
    assert rec.epoch == 6 and any("0.5-0.75" in r for r in rec.reasons)

    falling = ev.loss_choice(ev.epoch_losses(synthetic_log([1.0, 0.8, 0.6, 0.5, 0.45, 0.42, 0.40, 0.39])))
    # The loss picks epoch 8, but it fries at 0.5: the latest sound epoch before it, weight capped below frying.
    rec = ev.recommend(evals_for(range(1, 9), fried_at={8: 0.5, 7: 1.0}), falling, 8, WEIGHTS)
    assert rec.epoch == 7 and rec.weight_max == 0.75
    assert any("epoch 8: over-trained" in f for f in rec.flags)
    assert any("epoch 8 is over-trained" in r for r in rec.reasons)


def test_recommendation_when_the_lora_does_nothing():
    none = ev.loss_choice({})
    rec = ev.recommend(evals_for([7, 8], nothing={7, 8}), none, 8, WEIGHTS)
    assert rec.epoch is None and len(rec.flags) == 2
    assert all("LoRA does nothing" in f and "empty or missing captions" in f for f in rec.flags)
    assert ev.guide_epoch(8, [7, 8]) == 7 and ev.guide_epoch(8, range(1, 9)) == 6 and ev.guide_epoch(1, [1]) == 1


def test_evaluate_recipe_keys_fail_with_their_path(tmp_path):
    from bakery.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError) as err:
        parse_recipe({"evaluate": {"weights": [], "width": 100, "sampler": "plms", "fry_threshold": 0}}, tmp_path)
    text = str(err.value)
    for key in ("evaluate.weights", "evaluate.width", "evaluate.sampler", "evaluate.fry_threshold"):
        assert key in text, text
    ok = parse_recipe({"evaluate": {"last_epochs": 3, "likeness_model": "/models/clip"}}, tmp_path).evaluate
    assert ok.last_epochs == 3 and ok.sampler == "euler_a" and ok.fry_max_weight == 0.5 and ok.effect_min == 1.0


def test_default_prompts_from_captions_or_tag_frequency():
    counts = ev.tag_counts_by_trigger(["girl_a", "girl_b"], captions=[
        "girl_a, red_dress ||| smile, solo", "girl_a, red_dress, solo", "girl_b, blue_dress, solo", "girl_a, girl_b, 2girls"])
    assert counts["girl_a"] == {"red_dress": 2, "smile": 1, "solo": 2, "2girls": 1}
    assert ev.default_prompts(["girl_a", "girl_b"], counts, 2) == [
        "girl_a", "girl_a, red_dress, solo", "girl_b", "girl_b, 2girls, blue_dress"]
    freq = {"10_girl_a": {"girl_a": 5, "hat": 4, "solo": 5}, "5_misc": {"hat": 9}}
    assert ev.default_prompts(["girl_a"], ev.tag_counts_by_trigger(["girl_a"], tag_frequency=freq), 1) == ["girl_a", "girl_a, solo"]
    assert ev.default_prompts(["girl_a"], {}, 3) == ["girl_a"]
