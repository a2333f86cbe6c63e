"""Validation loss in the bake (tiny SD1.5, CPU): deterministic, on held-out pictures only, training untouched."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from bakery.craft.bake import data as D
from bakery.craft.bake import training as TR
from bakery.craft.bake import validation as V
from bakery.craft.bake.networks import kohya_lora as K
from bakery.manifest import TrainImage, TrainSet
from storage import Catalog, ContentStore
from tests.conftest import write_recipe
from tests.images import gradient
from tests.test_bake import CAPTION, DATA, make_trainset, params, run
from tests.test_errors import BAKE


def with_held_out(store: ContentStore) -> tuple[TrainSet, TrainSet]:
    """(the plain training set, the same set plus one held-out picture in its validation list)."""
    plain = make_trainset(store)
    buf = io.BytesIO()
    gradient(96, 96, seed=50).save(buf, "PNG")
    held = TrainImage("chara", "held", store.put_bytes(buf.getvalue()).sha256, CAPTION, 0)
    return plain, dataclasses.replace(plain, validation=[held], validation_held_out=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("valloss")


def test_validation_loss_is_deterministic_on_held_out_pictures_and_leaves_training_alone(work):
    store = ContentStore(work / "store")
    plain, validated = with_held_out(store)
    seen = []
    a = run(work, params(), validated, key="va", on_validation=seen.append)
    b = run(work, params(), validated, key="vb")
    assert [v.epoch for v in a.validation] == [1, 2] and seen == a.validation
    assert all(v.held_out and v.n_pictures == 1 and v.loss > 0 for v in a.validation)
    assert [v.loss for v in a.validation] == [v.loss for v in b.validation]  # two bakes: the same losses, to the bit
    assert a.validation[0].loss != a.validation[1].loss  # the network moved between epochs
    # The held-out picture is in no training batch.
    t = TR.prepare_training(validated, params(), image_path=store.path, workdir=work, data=DATA)
    held = validated.validation[0].image_hash
    assert [s.image.image_hash for s in t.validation] == [held]
    assert all(s.image.image_hash != held for e in (1, 2) for batch in D.epoch_batches(t.samples, 2, 42, e)
               for s in batch)
    # The same bake without validation: the same steps, losses and weights (validation draws nothing from training).
    c = run(work, params(), plain, key="vc")
    assert c.validation == [] and c.losses == a.losses
    ta, _ = K.read_kohya(a.files[2])
    tc, _ = K.read_kohya(c.files[2])
    assert all(torch.equal(ta[k], tc[k]) for k in ta)


def test_a_resumed_bake_computes_the_same_validation_losses(work):
    store = ContentStore(work / "store")
    _, validated = with_held_out(store)
    full = run(work, params(epochs=3), validated, key="vfull")

    def stop(info):
        if info.step == 6:  # mid epoch 2: the state after epoch 1 is on disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(work, params(epochs=3), validated, key="vres", on_step=stop)
    resumed = run(work, params(epochs=3), validated, key="vres")
    assert resumed.resumed_from_epoch == 1
    assert [v.epoch for v in resumed.validation] == [2, 3]
    assert [v.loss for v in resumed.validation] == pytest.approx([v.loss for v in full.validation[1:]], abs=1e-6)


def test_validation_timesteps_spread_over_the_schedule():
    assert V.validation_timesteps(4, 1000) == [125, 375, 625, 875]
    assert V.validation_timesteps(1, 1000) == [500]


# -- a real run: prune holds a picture out, bake validates on it, evaluate reports it ------------------------

# test_errors' tiny LoRA bake with concepts and a small evaluate, for two epochs, near-duplicates kept.
FLOW = "[dedupe]\nnear = false\n" + BAKE.replace("{network}", "lora").replace("epochs = 1\n", "epochs = 2\n") + (
    "effect_min = 0.0\neffect_min_ratio = 0.0\n")  # the tiny model's LoRA barely changes a picture: judge it anyway


@pytest.mark.usefixtures("prefect_server")
def test_a_run_holds_a_picture_out_validates_on_it_and_reports_it(tmp_path):
    from flows.bake import bake_lora

    images = tmp_path / "images"
    images.mkdir()
    for i in range(9):  # a group of 9: one picture held out, 8 train
        gradient(*[(96, 96), (64, 128), (128, 64)][i % 3], seed=10 * i).save(images / f"img{i}.png")
        (images / f"img{i}.txt").write_text("1girl, red_dress, smile\n", encoding="utf-8")
    run_id = bake_lora(str(write_recipe(tmp_path, FLOW)))
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        stages = {s["stage"]: s for s in cat.stage_table(run_id)}
        held = cat.validation_pictures(run_id)
        trained = cat.train_captions(run_id)
        (evaluation,) = cat.rows("SELECT bake_key, report_path, reasons FROM evaluations WHERE run_id = ?", [run_id])
        losses = cat.validation_loss(evaluation["bake_key"])
    assert len(held) == 1 and held[0]["held_out"] and len(trained) == 8
    assert held[0]["name"] not in {t["name"] for t in trained}  # never trained on
    # The picture account: the held-out picture goes on through prune and bake, nothing lost.
    assert stages["prune"]["n_out"] == 9 and stages["bake"]["n_in"] == stages["bake"]["n_out"] == 9
    assert [(r["epoch"], r["held_out"], r["n_pictures"]) for r in losses] == [(1, True, 1), (2, True, 1)]
    html = Path(evaluation["report_path"]).read_text()
    assert "<h2>Validation loss</h2>" in html and "1 held-out picture(s), never trained on" in html
    assert "validation loss" in evaluation["reasons"]
