"""Regularisation images (rules.md §11): the craft without Prefect, then real flows on the tiny SD1.5.

One image per training image, drawn by the base model from its caption without the triggers, in the
same folders, seeded per image; cached, incremental, recorded in the catalog, trained on by bake and
written by export-kohya in the layout sd-scripts accepts.
"""

from __future__ import annotations

import io
import json
import shutil
import tomllib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bakery.cli import app
from bakery.craft.bake import regularisation as craft
from bakery.craft.bake.bases.load import load_base
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.taste import xyz
from bakery.manifest import TrainImage, TrainSet
from storage import STORE_DIR, Catalog, ContentStore
from tests import sd_scripts_schema
from tests.conftest import write_recipe
from tests.test_bake_flow import TRAIN
from tests.test_flow import bake, stages

SETTINGS = craft.RegSettings(steps=2, size=96, min_side=64, max_side=128, step=32)


def _set() -> TrainSet:
    return TrainSet([TrainImage("CharaA", "a", "h1", "CharaA, Outfit1 ||| smile, red_dress", 3),
                     TrainImage("CharaA", "b", "h2", "CharaA, solo", 3),
                     TrainImage("misc", "c", "h3", "CharaA", 1)], ["CharaA", "Outfit1"], keep_tokens_separator=True)


def test_prompts_lose_the_triggers_and_the_separator():
    assert craft.reg_prompt("CharaA, Outfit1 ||| smile, red_dress", ["CharaA", "Outfit1"]) == "smile, red_dress"
    assert craft.reg_prompt("CharaA, solo, CharaA_fan", ["CharaA"]) == "solo, CharaA_fan"  # whole tags only
    assert craft.reg_prompt("CharaA", ["CharaA"]) == ""  # a trigger-only caption: an unconditioned image


def test_seeds_come_from_the_recipe_seed_and_the_image():
    assert craft.reg_seed(42, "h1") == craft.reg_seed(42, "h1")
    assert len({craft.reg_seed(42, "h1"), craft.reg_seed(42, "h2"), craft.reg_seed(43, "h1")}) == 3
    assert all(0 <= craft.reg_seed(s, "h") < 2**32 for s in range(50))


def test_one_job_per_training_image_at_its_bucket():
    jobs = craft.plan_reg(_set(), {"h1": (50, 100), "h2": (300, 290)}, SETTINGS)
    assert [(j.source.name, j.prompt, j.width, j.height) for j in jobs] == [
        ("a", "smile, red_dress", 64, 128), ("b", "solo", 96, 96), ("c", "", 96, 96)]  # c: size unknown, square
    assert jobs[0].seed == craft.reg_seed(SETTINGS.seed, "h1")
    with_reg = TrainSet([*_set().images, TrainImage("CharaA", "a", "r1", "smile", 3, is_reg=True)], ["CharaA"])
    assert len(craft.plan_reg(with_reg, {}, SETTINGS)) == 3  # a regularisation image gets none of its own


def test_regularise_draws_what_is_not_known_and_adds_one_image_beside_each(tmp_path):
    base = load_base("tiny", tmp_path, words=["CharaA", "Outfit1"])
    taster = xyz.Taster(base.source, base.architecture, 2, "euler_a", "cpu", pipe=base.pipe)
    trainset = _set()
    jobs = craft.plan_reg(trainset, {"h1": (50, 100)}, SETTINGS)
    drawn: dict[str, bytes] = {}

    def make(job: craft.RegJob) -> str:
        png = craft.render_png(taster.render, job, SETTINGS)
        drawn[job.source.name] = png
        return f"reg-{job.source.name}"

    kept: list[list[str]] = []
    out = craft.regularise(trainset, jobs, {jobs[1]: "known-b"}, make,
                           lambda batch: kept.append([h for _, h in batch]), batch=1)
    assert out.made == 2 and sorted(drawn) == ["a", "c"] and kept == [["reg-a"], ["reg-c"]]
    with Image.open(io.BytesIO(drawn["a"])) as im:
        assert im.size == (64, 128) and im.mode == "RGB"
    assert craft.render_png(taster.render, jobs[0], SETTINGS) == drawn["a"]  # the same job, the same bytes
    reg = [t for t in out.trainset.images if t.is_reg]
    assert [(t.folder, t.name, t.image_hash, t.caption, t.repeats) for t in reg] == [
        ("CharaA", "a", "reg-a", "smile, red_dress", 3), ("CharaA", "b", "known-b", "solo", 3),
        ("misc", "c", "reg-c", "", 1)]
    assert out.trainset.images[:3] == trainset.images and out.trainset.triggers == trainset.triggers
    assert out.origins == {"reg/CharaA/a": "CharaA/a", "reg/CharaA/b": "CharaA/b", "reg/misc/c": "misc/c"}


# -- real flows ------------------------------------------------------------------------------------

CONCEPTS = """
[[concepts]]
name = "CharaA"
trigger = "CharaA"
paths = ["chara/*"]
target_steps = 1  # AdamW doubles it (rules.md §8)

[[concepts.outfits]]
name = "Outfit1"
trigger = "Outfit1"
paths = ["chara/outfit1/*"]
target_steps = 1

[captions]
keep_tokens_separator = true

"""
PROJECT = CONCEPTS + TRAIN.format(epochs=1) + """min_snr_gamma = 0.0
prior_loss_weight = 0.5
device = "cpu"

[regularisation]
enabled = true
steps = 2
device = "cpu"
"""


def _project(folder: Path) -> Path:
    images = folder / "images"
    (images / "chara" / "outfit1").mkdir(parents=True)
    for name, size, colour, caption in (("outfit1/a", (96, 96), (250, 250, 60), "red_dress, smile, umbrella"),
                                        ("outfit1/b", (64, 128), (60, 250, 60), "red_dress, standing"),
                                        ("c", (128, 64), (255, 0, 0), "outdoors, sky")):
        Image.new("RGB", size, colour).save(images / "chara" / f"{name}.png")
        (images / "chara" / f"{name}.txt").write_text(caption, encoding="utf-8")
    return write_recipe(folder, PROJECT)


def _reg_rows(work: Path, run_id: str) -> tuple[dict, dict]:
    with Catalog.open(work, read_only=True) as cat:
        rows = cat.train_captions(run_id)
    return ({(r["folder"], r["name"]): r for r in rows if not r["is_reg"]},
            {(r["folder"], r["name"]): r for r in rows if r["is_reg"]})


@pytest.mark.usefixtures("prefect_server")
def test_regularisation_in_a_real_flow(tmp_path: Path):
    recipe = _project(tmp_path / "p")
    work = tmp_path / "p" / "work"
    first = bake(recipe, to_stage="bake")
    stage = stages(work, first)["regularisation"]
    assert stage["status"] == "ran" and (stage["n_in"], stage["n_out"], stage["n_split"], stage["n_lost"]) == (3, 6, 3, 0)
    train, reg = _reg_rows(work, first)
    # One image per training image, in the same folder with the same name and repeats, captions without triggers.
    assert sorted(reg) == sorted(train) == [("CharaA", "chara_c"), ("Outfit1", "chara_outfit1_a"),
                                            ("Outfit1", "chara_outfit1_b")]
    assert {k: r["caption"] for k, r in reg.items()} == {
        ("CharaA", "chara_c"): "outdoors, sky", ("Outfit1", "chara_outfit1_a"): "smile, umbrella",
        ("Outfit1", "chara_outfit1_b"): "standing"}
    assert train[("Outfit1", "chara_outfit1_a")]["caption"] == "CharaA, Outfit1 ||| smile, umbrella"
    assert all(reg[k]["repeats"] == train[k]["repeats"] and not reg[k]["mask_hash"] for k in reg)
    _check_provenance(recipe, work, reg[("Outfit1", "chara_outfit1_b")], train[("Outfit1", "chara_outfit1_b")])
    _check_bake(work, first, train, reg)
    _check_export(recipe, tmp_path / "kohya", reg)

    # Cached on the second run: same set, same images.
    second = bake(recipe, to_stage="bake")
    assert stages(work, second)["regularisation"]["status"] == "cached"
    assert stages(work, second)["bake"]["status"] == "cached"
    assert _reg_rows(work, second)[1] == {k: {**r, "run_id": second} for k, r in reg.items()}

    # Deterministic: the same project in a fresh work dir draws the same bytes.
    fresh = _project(tmp_path / "q")
    third = bake(fresh, to_stage="regularisation")
    again = _reg_rows(tmp_path / "q" / "work", third)[1]
    assert {k: r["image_hash"] for k, r in again.items()} == {k: r["image_hash"] for k, r in reg.items()}

    # Incremental: a new picture draws one image; the others come from the catalog.
    Image.new("RGB", (96, 96), (0, 0, 255)).save(tmp_path / "q/images/chara/d.png")
    (tmp_path / "q/images/chara/d.txt").write_text("night, sky", encoding="utf-8")
    fourth = bake(fresh, to_stage="regularisation")
    stage = stages(tmp_path / "q" / "work", fourth)["regularisation"]
    assert stage["status"] == "ran" and stage["n_processed"] == 1 and stage["n_out"] == 8
    assert _reg_rows(tmp_path / "q" / "work", fourth)[1][("CharaA", "chara_d")]["caption"] == "night, sky"


def _check_provenance(recipe: Path, work: Path, reg: dict, train: dict) -> None:
    """The catalog says how the image was drawn, from which training picture; `bakery provenance` shows it."""
    with Catalog.open(work, read_only=True) as cat:
        chain = cat.provenance(reg["image_hash"])
        row = cat.image_rows([reg["image_hash"]])[reg["image_hash"]]
    step = chain.steps[-1]
    assert step.stage == "regularisation" and step.input_hash == train["image_hash"]
    assert step.params["caption"] == "standing" and step.params["generated_by"]["base_model"] == "tiny"
    assert step.params["seed"] == craft.reg_seed(42, train["image_hash"])
    assert (row["width"], row["height"], row["format"]) == (64, 128, "PNG")
    assert chain.sources[0]["location"].endswith("chara/outfit1/b.png")
    out = CliRunner().invoke(app, ["provenance", str(recipe), reg["image_hash"][:12]])
    assert out.exit_code == 0, out.output
    assert f"generated by tiny from caption 'standing' with seed {step.params['seed']}" in out.output


def _check_bake(work: Path, run_id: str, train: dict, reg: dict) -> None:
    """Bake trains on the regularisation images (prior loss): kohya's reg metadata counts them."""
    with Catalog.open(work, read_only=True) as cat:
        bake = cat.rows("SELECT bake_key FROM bake_log ORDER BY created_at DESC LIMIT 1")[0]["bake_key"]
        steps = len(cat.bake_log(bake))
    lora = next((work / "bakes").glob("*/t-000001.safetensors"))
    _, meta = K.read_kohya(lora)
    assert int(meta["ss_num_reg_images"]) == sum(r["repeats"] for r in reg.values())
    assert int(meta["ss_num_train_images"]) == sum(r["repeats"] for r in train.values())
    assert set(json.loads(meta["ss_reg_dataset_dirs"])) == {f"{r['repeats']}_{r['folder']}" for r in reg.values()}
    assert meta["ss_prior_loss_weight"] == "0.5"
    # Buckets 128x64 (c twice, its reg image twice), 96x96 and 64x128 (one of each), 2 per batch: 4 steps, 3 without.
    assert steps == 4


def _check_export(recipe: Path, out: Path, reg: dict) -> None:
    """export-kohya writes OUT/reg/<repeats>_<folder>/ with captions, and sd-scripts accepts the config."""
    done = CliRunner().invoke(app, ["export-kohya", str(recipe), str(out)])
    assert done.exit_code == 0, done.output
    work = recipe.parent / "work"
    for (folder, name), r in reg.items():
        png = out / "reg" / f"{r['repeats']}_{folder}" / f"{name}.png"
        assert png.read_bytes() == ContentStore(work / STORE_DIR).read_bytes(r["image_hash"])
        assert png.with_suffix(".txt").read_text() == r["caption"]
    checked = sd_scripts_schema.check_train_network(out / "dataset_config.toml", False)
    (dataset,) = checked["datasets"]
    assert sd_scripts_schema.subset_kind(dataset) == "dreambooth"
    regs = [s for s in dataset["subsets"] if s["is_reg"]]
    assert sorted(Path(s["image_dir"]).relative_to(out).as_posix() for s in regs) == sorted(
        {f"reg/{r['repeats']}_{f}" for (f, _), r in reg.items()})
    cfg = tomllib.loads((out / "train_network.toml").read_text())
    assert {k: v for section in cfg.values() for k, v in section.items()}["prior_loss_weight"] == 0.5
    shutil.rmtree(out)


@pytest.mark.usefixtures("prefect_server")
def test_without_a_base_model_the_stage_is_skipped_saying_why(tmp_path: Path):
    recipe = _project(tmp_path)
    recipe.write_text(recipe.read_text().replace('base_model = "tiny"\n', ""), encoding="utf-8")
    run_id = bake(recipe, to_stage="regularisation")
    stage = stages(tmp_path / "work", run_id)["regularisation"]
    assert stage["status"] == "skipped" and "set [train] base_model" in stage["message"]
    assert _reg_rows(tmp_path / "work", run_id)[1] == {}
