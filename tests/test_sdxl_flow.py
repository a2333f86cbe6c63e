"""SDXL end to end: a real Prefect run of the whole chain on the tiny SDXL model, evaluation included.

The recipe names its family (`train.family = "pony"`): SDXL, the UNet alone with Prodigy... and
Pony's score tags at the head of every caption and every evaluation prompt. The sizes are the
tiny model's (64 px), overriding the family's 1024: a family only fills the keys left out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bakery.craft.bake.networks import kohya_lora as K
from bakery.recipe import load_recipe
from bakery.recipe.families import PONY_SCORE_TAGS
from storage import Catalog
from tests.conftest import write_recipe
from tests.tiny_sdxl import build_tiny_sdxl

pytestmark = pytest.mark.usefixtures("prefect_server")
TRIGGER = "bakery_girl"
RECIPE = """
[dedupe]
near = false

[[concepts]]
name = "chara"
trigger = "bakery_girl"
target_steps = 8

[buckets]
resolution = 64
min_side = 64
max_side = 128
step = 32

[train]
family = "pony"
base_model = "{model}"
optimizer = "adamw"
learning_rate = 0.001
epochs = 2
batch_size = 2
network_dim = 4
network_alpha = 2

[evaluate]
weights = [0.0, 1.0]
seeds = [1]
steps = 2
width = 64
height = 64
tags_per_prompt = 1
effect_min_ratio = 0.0
flexibility_prompts = []
device = "cpu"

[validation]
enabled = false
"""


def pictures(images: Path, caption: str) -> None:
    """Four small captioned pictures in two sizes (two buckets), each a colour with a patch."""
    images.mkdir(parents=True)
    colours = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60)]
    for i, colour in enumerate(colours):
        im = Image.new("RGB", (64 + 32 * (i % 2), 64), colour)
        im.paste((255 - colour[0], 128, 30 * i), (8, 8, 40, 40))
        im.save(images / f"a{i}.png")
        (images / f"a{i}.txt").write_text(caption, encoding="utf-8")


def _project(tmp_path: Path) -> Path:
    pictures(tmp_path / "images", "1girl, smile, red_dress")
    model = build_tiny_sdxl(tmp_path.parent / "sdxl-model-pony", words=[TRIGGER, *PONY_SCORE_TAGS, "red_dress"])
    return write_recipe(tmp_path, RECIPE.format(model=model))


def test_pony_family_bakes_and_evaluates_sdxl_end_to_end(tmp_path: Path):
    from flows.bake import bake_lora

    recipe_path = _project(tmp_path)
    recipe = load_recipe(recipe_path)
    # The family's defaults under what the recipe left out; what it wrote wins.
    assert recipe.train.architecture == "sdxl" and recipe.repeats.sdxl and recipe.train.clip_skip == 2
    assert recipe.train.train_text_encoder is True  # AdamW: the text encoder trains (UNet only is for Prodigy)
    assert recipe.buckets.resolution == 64 and recipe.train.keep_tokens == 1 + len(PONY_SCORE_TAGS)
    run_id = bake_lora(str(recipe_path))
    work = tmp_path / "work"
    with Catalog.open(work, read_only=True) as cat:
        stages = {s["stage"]: s for s in cat.stage_table(run_id)}
        captions = cat.train_captions(run_id)
        evaluation = cat.rows("SELECT * FROM evaluations")
    assert stages["bake"]["status"] == "ran" and stages["evaluate"]["status"] == "ran"
    head = ", ".join(PONY_SCORE_TAGS)
    assert captions and all(r["caption"].startswith(f"{head}, {TRIGGER}") for r in captions)

    files = sorted((work / "bakes").rglob("t-*.safetensors"))
    assert [f.name for f in files] == ["t-000001.safetensors", "t-000002.safetensors"]
    tensors, meta = K.read_kohya(files[-1])
    assert meta["ss_sdxl"] == "True" and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_v_parameterization"] == "False" and meta["modelspec.prediction_type"] == "epsilon"
    assert any(k.startswith("lora_te2_") for k in tensors) and any(k.startswith("lora_unet_") for k in tensors)

    assert len(evaluation) == 1
    report = Path(evaluation[0]["report_path"])
    grids = sorted(report.parent.glob("grid-*.png"))
    assert grids and all(Image.open(g).size[0] > 64 for g in grids)
    html = report.read_text(encoding="utf-8")
    assert f"{head}, {TRIGGER}" in html  # the evaluation prompts start with the score tags
