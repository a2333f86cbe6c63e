"""Anima end to end: `bakery run` on the tiny Anima (bases/anima/tiny.py: the real classes and file layout, random
weights) through regularisation -> trigger check -> bake -> evaluate, then `bakery export-kohya`.

The recipe names the base by `train.architecture = "anima"` with `base_model = "tiny"`, at the tiny model's sizes
(64-128 px buckets overriding the family's 1024: a family only fills the keys left out). The run is SIGKILLed
once the bake has saved its first training state; run again it resumes, and its last LoRA file is byte for byte
the one an uninterrupted run of the same project writes. Run a third time, unchanged, every stage is cached.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bakery.cli import app
from bakery.craft.bake.networks import kohya_lora as K
from bakery.recipe import load_recipe
from bakery.testmodels.tiny_wd14 import write_tiny_wd14
from storage import Catalog
from tests.conftest import write_recipe
from tests.test_bake_flow import kill_at_first_state
from tests.test_flow import bake, stages
from tests.test_judges import JUDGE_TAGS
from tests.test_sdxl_flow import pictures

pytestmark = pytest.mark.usefixtures("prefect_server")
TRIGGER = "bakery_girl"
EPOCHS, WEIGHTS = (1, 2), (0.0, 0.5, 1.0)
RECIPE = f"""
[dedupe]
near = false

[[concepts]]
name = "chara"
trigger = "{TRIGGER}"
target_steps = 8

[autotag]
model = "tagger"

[buckets]
resolution = 64
min_side = 64
max_side = 128
step = 32

[train]
base_model = "tiny"
architecture = "anima"
optimizer = "adamw"
learning_rate = 0.01
epochs = {len(EPOCHS)}
batch_size = 2
network_dim = 4
network_alpha = 2
device = "cpu"

[regularisation]
enabled = true
steps = 2
device = "cpu"

[trigger_check]
steps = 2
size = 64
seeds = 2
controls = 1

[evaluate]
weights = [{", ".join(map(str, WEIGHTS))}]
seeds = [1]
steps = 2
width = 64
height = 64
tags_per_prompt = 1
effect_min_ratio = 0.0
effect_min = 0.0
device = "cpu"
"""


def _project(folder: Path) -> Path:
    pictures(folder / "images", "1girl, blonde_hair, smile, red_dress")
    write_tiny_wd14(folder / "tagger", extra_tags=JUDGE_TAGS)  # blonde_hair: what the trigger absorbs
    return write_recipe(folder, RECIPE)


def test_anima_bakes_tastes_and_exports_end_to_end(tmp_path: Path):
    recipe = _project(tmp_path / "a")
    work = tmp_path / "a" / "work"
    r = load_recipe(recipe)  # architecture alone gets the anima family's defaults; what the recipe wrote wins
    assert r.train.architecture == "anima" and r.train.timestep_sampling == "sigmoid" and r.buckets.resolution == 64
    assert r.evaluate.cfg_scale == 4.0 and r.regularisation.cfg_scale == 4.0 and r.evaluate.sampler == "euler_a"

    # `bakery run` in a child, SIGKILLed once the bake saved a training state
    kill_at_first_state(f"import sys; from bakery.cli import main; sys.argv = ['bakery', 'run', {str(recipe)!r}]; "
                        "main()", work)
    killed_at = time.time()
    assert not list((work / "bakes").glob(f"*/t-{EPOCHS[-1]:06d}.safetensors"))
    run_id = bake(recipe)
    st = stages(work, run_id)
    assert st["bake"]["status"] == "ran" and st["evaluate"]["status"] == "ran"
    assert st["regularisation"]["status"] == st["trigger_check"]["status"] == "cached"  # done before the kill
    lora = _check_bake(work, killed_at)
    _check_evaluation(work)
    _check_trigger_check(work, run_id)
    _check_export(recipe, tmp_path / "kohya")

    again = bake(recipe)  # unchanged: nothing runs again
    assert {s: v["status"] for s, v in stages(work, again).items() if v["status"] == "ran"} == {}

    # The same project baked without interruption writes the same file, byte for byte.
    ref = _project(tmp_path / "b")
    bake(ref, to_stage="bake")
    (ref_lora,) = (tmp_path / "b" / "work" / "bakes").glob(f"*/t-{EPOCHS[-1]:06d}.safetensors")
    assert ref_lora.read_bytes() == lora.read_bytes()


def _check_bake(work: Path, killed_at: float) -> Path:
    """Resumed, not restarted: epoch 1's steps were logged before the kill. The file is sd-scripts' Anima LoRA."""
    files = sorted((work / "bakes").rglob("t-*.safetensors"))
    assert [f.name for f in files] == [f"t-{e:06d}.safetensors" for e in EPOCHS]
    with Catalog.open(work, read_only=True) as cat:
        key = cat.rows("SELECT bake_key FROM bake_log ORDER BY created_at DESC LIMIT 1")[0]["bake_key"]
        first = cat.rows("SELECT created_at FROM bake_log WHERE bake_key = ? AND epoch = 1", [key])
        validation = cat.validation_loss(key)
    assert first and all(row["created_at"].timestamp() < killed_at for row in first)
    assert [v["epoch"] for v in validation] == list(EPOCHS) and all(v["loss"] > 0 for v in validation)
    tensors, meta = K.read_kohya(files[-1])
    assert meta["ss_base_model_version"] == "anima" and meta["modelspec.architecture"] == "anima-preview/lora"
    assert (meta["ss_timestep_sampling"], meta["ss_discrete_flow_shift"]) == ("sigmoid", "1.0")  # as sd-scripts writes
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)  # the DiT alone (Qwen3 stays frozen)
    assert int(meta["ss_num_reg_images"]) > 0  # trained beside the regularisation images Anima drew
    return files[-1]


def _check_evaluation(work: Path) -> None:
    """A grid at every epoch x weight rendered by the Anima pipeline, judged by the tagger, ranked, and the
    validation loss read."""
    with Catalog.open(work, read_only=True) as cat:
        ev = cat.evaluation(bake_key=cat.rows("SELECT bake_key FROM evaluations")[0]["bake_key"])
        scores = cat.evaluation_scores(ev["eval_key"])
    cells = {(e, w) for e in EPOCHS for w in WEIGHTS}
    by: dict[str, set] = {}
    for s in scores:
        by.setdefault(s["judge"], set()).add((s["epoch"], s["weight"]))
    assert by["identity"] == cells and by["flexibility"] == cells and by["effect_ratio"] == {(e, 1.0) for e in EPOCHS}
    assert ev["recommended_epoch"] in EPOCHS
    report = Path(ev["report_path"])
    html = report.read_text(encoding="utf-8")
    for title in ("Identity", "Concept bleed", "Flexibility", "Ranking", "Validation loss"):
        assert f"<h2>{title}</h2>" in html, title
    # every judge this recipe can run ran: only the character judges, with no [judges] model, are skipped
    assert all("[judges]" in line for line in re.findall(r"SKIPPED[^<]*", html)), re.findall(r"SKIPPED[^<]*", html)
    assert "rectified flow" in html  # sampled as Anima is
    assert "Not measured: needs two or more outfits" in html  # bleed: one concept, no outfits
    assert "ranking: epoch" in html  # the cells are ranked by their tag scores
    grids = sorted(report.parent.glob("grid-*.png"))
    assert grids
    for g in grids:  # rows epochs, columns weights, 64 px cells
        w, h = Image.open(g).size
        assert w > 64 * len(WEIGHTS) and h > 64 * len(EPOCHS)


def _check_trigger_check(work: Path, run_id: str) -> None:
    """The trigger and the control rendered by Anima and judged by the tagger (before the bake)."""
    with Catalog.open(work, read_only=True) as cat:
        rows = cat.rows("SELECT * FROM trigger_checks ORDER BY is_control, trigger")
    assert [r["trigger"] for r in rows if not r["is_control"]] == [TRIGGER]
    assert sum(r["is_control"] for r in rows) == 1 and rows[0]["verdict"] in ("free", "contaminated")
    assert rows[0]["tag_shares"] is not None  # judged by the tagger


def _check_export(recipe: Path, out: Path) -> None:
    """export-kohya writes the training set and the Anima-drawn regularisation images as sd-scripts reads them."""
    done = CliRunner().invoke(app, ["export-kohya", str(recipe), str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "dataset_config.toml").is_file() and (out / "train_network.toml").is_file()
    regs = list((out / "reg").rglob("*.png"))
    assert regs and all(p.with_suffix(".txt").is_file() for p in regs)
    assert len(list((out / "img").rglob("*.png"))) == len(regs)
