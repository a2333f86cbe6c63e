"""Evaluate reads the bake's validation loss: the "Validation loss" report section and the recommendation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bakery.craft.taste import evaluate as craft
from bakery.recipe import EvaluateParams
from storage import Catalog
from tests.test_evaluate import _run, baked  # noqa: F401  (the module fixture: tiny model, three LoRA files)

pytestmark = pytest.mark.usefixtures("prefect_server")


def rows(losses, held_out=True):
    return [{"epoch": e, "loss": l, "held_out": held_out, "n_pictures": 2} for e, l in losses.items()]


def test_a_clear_minimum_picks_the_epoch_and_a_flat_or_first_one_does_not():
    inner = craft.validation_curve(rows({1: 0.30, 2: 0.20, 3: 0.26}))
    assert inner.epoch == 2 and "lowest at epoch 2" in inner.reason and "rises after it" in inner.reason
    end = craft.validation_curve(rows({1: 0.30, 2: 0.25, 3: 0.20}))
    assert end.epoch == 3 and "the last epoch" in end.reason
    assert craft.validation_curve(rows({1: 0.20, 2: 0.25, 3: 0.30})).epoch is None  # lowest at the first epoch
    flat = craft.validation_curve(rows({1: 0.30, 2: 0.200, 3: 0.201}))
    assert flat.epoch is None and "no clear minimum" in flat.reason
    # On training pictures a curve falling to its end says nothing about over-fitting; an interior minimum does.
    assert craft.validation_curve(rows({1: 0.3, 2: 0.25, 3: 0.2}, held_out=False)).epoch is None
    train = craft.validation_curve(rows({1: 0.3, 2: 0.2, 3: 0.3}, held_out=False))
    assert train.epoch == 2 and "training pictures, not held out" in train.reason
    assert craft.validation_curve([]) is None


def _log(cat: Catalog, key: str, means: dict[int, float]) -> None:
    step = 0
    for epoch, mean in means.items():
        step += 1
        cat.add_bake_log([{"bake_key": key, "step": step, "epoch": epoch, "loss": mean, "lr": 1.0}])


def test_evaluate_run_reports_validation_loss_and_recommends_its_minimum(baked):  # noqa: F811
    bake, train, work, _ = baked
    bake = dataclasses.replace(bake, bake_key="bake-val")
    with Catalog.open(work) as cat:
        _log(cat, "bake-val", {1: 0.20, 2: 0.15, 3: 0.17})  # the loss rule alone would pick epoch 2
        # Held-out pictures: lowest at the last epoch.
        cat.add_validation_loss([{"bake_key": "bake-val", **r} for r in rows({1: 0.40, 2: 0.33, 3: 0.30})])
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[7], steps=1, width=64, height=64, tags_per_prompt=1,
                            device="cpu", effect_min_ratio=0.0)  # the tiny LoRAs barely change a picture: judge them
    result, _ = _run(bake, train, params, work, "val1")
    html = Path(result.payload).read_text()
    assert "<h2>Validation loss</h2>" in html and "held-out picture(s), never trained on" in html
    assert 'alt="validation loss curve"' in html
    with Catalog.open(work, read_only=True) as cat:
        ev = cat.evaluation(bake_key="bake-val")
    assert ev["recommended_epoch"] == 3
    assert ev["reasons"][0].startswith("validation loss (held-out pictures) is lowest at epoch 3")


def test_without_a_minimum_the_loss_rule_decides_and_says_why(baked):  # noqa: F811
    bake, train, work, _ = baked
    bake = dataclasses.replace(bake, bake_key="bake-val-flat")
    with Catalog.open(work) as cat:
        _log(cat, "bake-val-flat", {1: 0.20, 2: 0.15, 3: 0.17})
        cat.add_validation_loss([{"bake_key": "bake-val-flat", **r}
                                 for r in rows({1: 0.2, 2: 0.25, 3: 0.3}, held_out=False)])
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[7], steps=1, width=64, height=64, tags_per_prompt=1,
                            device="cpu", effect_min_ratio=0.0)  # the tiny LoRAs barely change a picture: judge them
    result, _ = _run(bake, train, params, work, "val2")
    html = Path(result.payload).read_text()
    assert "training picture(s), not held out" in html
    with Catalog.open(work, read_only=True) as cat:
        ev = cat.evaluation(bake_key="bake-val-flat")
    assert ev["recommended_epoch"] == 2
    assert ev["reasons"][0].startswith("validation loss did not decide") and ev["reasons"][1].startswith("loss rule")
