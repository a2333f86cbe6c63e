"""Sliders (LECO): the recipe, the objective, the judges, a resumed slide, and the whole flow on the tiny SD1.5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bakery.craft.bake import BakeError
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.slider import slide as S
from bakery.craft.slider import taste as T
from bakery.recipe import RecipeError, SliderParams, TrainParams, load_recipe, parse_recipe
from storage import Catalog
from tests.conftest import write_recipe

SLIDER = dict(target="skirt", positive=["long_skirt"], negative=["microskirt", "lowleg_skirt"])
SMALL = dict(resolution=64, steps=4, save_every_n_steps=2, max_denoising_steps=3)


# -- recipe ---------------------------------------------------------------------------------------

def test_slider_recipe_has_the_guides_numbers_and_refuses_fp16(tmp_path):
    s = parse_recipe({"slider": SLIDER}, tmp_path).slider
    assert (s.learning_rate, s.steps, s.save_precision, s.mixed_precision) == (1e-4, 500, "fp16", "auto")
    assert s.strengths == [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    assert s.positive_prompt == "long_skirt" and s.negative_prompt == "microskirt, lowleg_skirt"
    assert parse_recipe({}, tmp_path).slider is None
    with pytest.raises(RecipeError, match="slider.mixed_precision: fp16 gives NaN"):
        parse_recipe({"slider": {**SLIDER, "mixed_precision": "fp16"}}, tmp_path)
    with pytest.raises(RecipeError, match="slider.positive"):
        parse_recipe({"slider": {**SLIDER, "positive": []}}, tmp_path)


def test_precision_is_fp32_on_cpu_and_never_fp16():
    assert S.slider_precision("cpu", "auto").weight_dtype == torch.float32
    with pytest.raises(BakeError, match="bf16' needs CUDA"):
        S.slider_precision("cpu", "bf16")
    with pytest.raises(BakeError, match="fp16"):
        S.slider_precision("cpu", "fp16")


# -- objective ------------------------------------------------------------------------------------

def test_targets_move_the_neutral_prediction_along_positive_minus_negative():
    neutral, pos, neg = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0])
    plus, minus = S.slide_targets(neutral, pos, neg, guidance=0.5)
    assert torch.equal(plus, torch.tensor([2.0, 1.5])) and torch.equal(minus, torch.tensor([0.0, 2.5]))


def test_save_steps_every_n_and_the_last():
    assert S.save_steps(10, 4) == [4, 8, 10] and S.save_steps(4, 2) == [2, 4] and S.save_steps(3, 50) == [3]


def _use_global_generators(n: int = 97) -> None:
    """Draw from torch's, numpy's and Python's global generators, as other work in the process would."""
    import random

    torch.rand(n), np.random.rand(n), random.random()


def _slide(work: Path, fail_at: int | None = None, draw: bool = False, **kw):
    train = TrainParams(base_model="tiny", seed=3)
    slider = SliderParams(**SLIDER, **{**SMALL, **kw}, anchors=["1girl"])
    spec = S.SliderSpec("skirt", slider.positive_prompt, slider.negative_prompt, "skirt", ("1girl",))

    def on_step(info):
        if draw:  # between steps: a step that drew from a global generator would see other draws
            _use_global_generators(info.step)
        if info.step == fail_at:
            raise KeyboardInterrupt("killed")

    return S.slide(spec, train, slider, workdir=work, out_dir=work / "out", state_dir=work / "state", name="sk",
                   slide_key="key", on_step=on_step)


def test_a_killed_slide_resumes_from_its_last_save_and_ends_with_the_same_file(tmp_path):
    whole = _slide(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _slide(tmp_path / "b", fail_at=3)  # killed after the save (and state) of step 2
    resumed = _slide(tmp_path / "b")
    assert resumed.resumed_from_epoch == 2 and [s for s, *_ in resumed.losses] == [3, 4]
    assert whole.losses[2:] == resumed.losses
    for step in (2, 4):
        assert Path(whole.files[step]).read_bytes() == Path(resumed.files[step]).read_bytes()
    tensors, meta = K.read_kohya(whole.files[4])
    assert all(k.startswith("lora_unet_") for k in tensors) and all(v.dtype == torch.float16 for v in tensors.values())
    assert (meta["ss_slider_target"], meta["ss_slider_positive"], meta["ss_slider_negative"]) == \
        ("skirt", "long_skirt", "microskirt, lowleg_skirt")
    assert json.loads(meta["ss_slider_anchors"]) == ["1girl"] and "slider: target skirt" in meta["ss_training_comment"]
    assert whole.losses[0][2] > 0  # at step 1 the LoRA is zero: the loss is the (positive - negative) gap


def test_a_slide_takes_no_global_draws_and_resumes_bitwise_from_a_later_save(tmp_path):
    """Every draw of a step comes from (seed, step): the global generators, used between steps, change nothing,
    and a slide killed after its second save (step 4 of 6) ends with the same files as one never killed."""
    whole = _slide(tmp_path / "a", steps=6)
    drawn = _slide(tmp_path / "d", steps=6, draw=True)
    with pytest.raises(KeyboardInterrupt):
        _slide(tmp_path / "b", fail_at=5, steps=6, draw=True)
    _use_global_generators(1000)
    resumed = _slide(tmp_path / "b", steps=6, draw=True)
    assert resumed.resumed_from_epoch == 4 and whole.losses == drawn.losses and whole.losses[4:] == resumed.losses
    for step in (2, 4, 6):
        assert Path(whole.files[step]).read_bytes() == Path(drawn.files[step]).read_bytes(), step
        assert Path(whole.files[step]).read_bytes() == Path(resumed.files[step]).read_bytes(), step


def test_an_sdxl_slider_is_saved_in_kohya_sgm_names_and_loaded_by_diffusers(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_sdxl import build_tiny_sdxl

    folder = build_tiny_sdxl(tmp_path / "sdxl")
    train = TrainParams(base_model=str(folder), seed=3)
    slider = SliderParams(**SLIDER, resolution=64, steps=2, save_every_n_steps=2, max_denoising_steps=2)
    spec = S.SliderSpec("skirt", slider.positive_prompt, slider.negative_prompt, "skirt")
    out = S.slide(spec, train, slider, workdir=tmp_path, out_dir=tmp_path / "out", state_dir=tmp_path / "st",
                  name="xl", slide_key="k")
    tensors, meta = K.read_kohya(out.files[2])
    assert meta["ss_sdxl"] == "True" and any(k.startswith("lora_unet_input_blocks_") for k in tensors)
    assert not any("down_blocks" in k or "up_blocks" in k or k.startswith("lora_te") for k in tensors)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.load_lora_weights(out.files[2], adapter_name="slider")
    from peft.tuners.lora import LoraLayer
    assert sum(isinstance(m, LoraLayer) for m in pipe.unet.modules()) == len(tensors) // 3


# -- judges ---------------------------------------------------------------------------------------

def _img(v: float) -> np.ndarray:
    return np.full((8, 8, 3), v, dtype=np.uint8)


def test_overcooked_when_the_extremes_stop_changing_and_the_pick_is_the_earliest_right_save():
    strengths = [-2.0, 0.0, 2.0]
    # save 10: extremes 20 from strength 0; save 20: 60 (moved 40); save 30: 61 (moved 1 < 5% of 61).
    far = {10: 20, 20: 60, 30: 61}
    images = {(s, w, 0, 1): _img(100 + far[s] * w / 2) for s in far for w in strengths}
    base = {(0, 1): _img(100)}
    v = T.picture_judges(images, base, [10, 20, 30], strengths, 1, [1], still_ratio=0.05, effect_min=1.0)
    assert [x.moves for x in v] == pytest.approx([20, 60, 61], abs=0.6)
    assert [x.overcooked for x in v] == [False, False, True] and all(x.identity_kept for x in v)
    pick, reasons, flags = T.pick_save(v, tagged=False)  # the save before the extremes stopped changing
    assert pick == 20 and "step 30: overcooked" in flags[0] and "before the extremes stopped" in reasons[0]
    assert T.pick_save(v[:2], tagged=False)[0] == 20  # nothing overcooked yet: the last save
    # tags: long_skirt rises with strength only from save 20 on; microskirt falls
    tags = {(s, w, 0, 1): ({"long_skirt"} if w > 0 and s >= 20 else set()) | ({"microskirt"} if w < 0 else set())
            for s in far for w in strengths}
    rows = T.tag_judges(v, tags, ["long_skirt"], ["microskirt"], strengths, 1, margin=0.1)
    assert [x.right for x in v] == [False, True, True] and v[1].positive_rise == 1.0 and v[1].negative_rise == -1.0
    assert {r["judge"] for r in rows} == {"positive_recall", "negative_recall"}
    assert T.pick_save(v, tagged=True)[0] == 20


def test_no_pick_when_strength_zero_is_not_the_base_model():
    strengths = [-1.0, 0.0, 1.0]
    images = {(5, w, 0, 1): _img(100 + 30 * w) for w in strengths}
    v = T.picture_judges(images, {(0, 1): _img(90)}, [5], strengths, 1, [1], still_ratio=0.05, effect_min=1.0)
    pick, _reasons, flags = T.pick_save(v, tagged=False)
    assert pick is None and not v[0].identity_kept and any("strength 0 differs" in f for f in flags)


def test_the_grid_names_rows_steps_and_columns_strengths():
    from bakery.craft.taste import xyz

    images = {(s, w, 0, 1): _img(100) for s in (2, 4) for w in (-2.0, 0.0, 2.0)}
    layout = xyz.make_grid(images, [2, 4], [-2.0, 0.0, 2.0], 0, "skirt", [1], row_label="step", col_label="strength")
    texts = [t for t, _box in layout.labels]
    assert {"strength -2", "strength 0", "strength 2", "step 2", "step 4"} <= set(texts)


# -- the flow -------------------------------------------------------------------------------------

FLOW_RECIPE = """
[train]
base_model = "tiny"
seed = 5

[slider]
target = "skirt"
positive = ["long_skirt"]
negative = ["microskirt", "lowleg_skirt"]
resolution = 64
steps = 4
save_every_n_steps = 2
max_denoising_steps = 3
learning_rate = 0.01

[evaluate]
seeds = [7]
steps = 2
width = 64
height = 64

[autotag]
model = "wd14"
"""


def test_slider_flow_trains_on_the_tiny_sd15_and_tastes_a_strength_grid(tmp_path, prefect_server):
    from diffusers import StableDiffusionPipeline

    from flows.bake import bake_lora
    from tests.wd14_model import write_tiny_wd14

    write_tiny_wd14(tmp_path / "wd14", extra_tags=[("long_skirt", 0, (0.02, 0.02, 0.02), -2.0),
                                                   ("microskirt", 0, (-0.02, -0.02, -0.02), 2.0)])
    (tmp_path / "images").mkdir()
    recipe = write_recipe(tmp_path, FLOW_RECIPE)
    run_id = bake_lora(str(recipe))
    work = tmp_path / "work"
    with Catalog.open(work / "catalog.duckdb", read_only=True) as cat:
        stages = {s["stage"]: s for s in cat.stage_table(run_id)}
        ev = cat.evaluation(bake_key=None, eval_key=cat.rows("SELECT eval_key FROM evaluations")[0]["eval_key"])
        scores = cat.evaluation_scores(ev["eval_key"])
        logged = cat.rows("SELECT count(*) AS n FROM bake_log")[0]["n"]
    assert stages["slide"]["status"] == "ran" and stages["evaluate"]["status"] == "ran"
    assert "ingest" not in stages and "bake" not in stages and logged == 4
    files = sorted((work / "bakes").glob("t-*/t-*.safetensors"))
    assert [f.name for f in files] == ["t-000002.safetensors", "t-000004.safetensors"]
    assert (ev["weight_min"], ev["weight_max"]) == (-2.0, 2.0)
    assert {"moves", "identity_diff", "positive_recall", "negative_recall"} <= {s["judge"] for s in scores}
    report = Path(ev["report_path"])
    assert "| step | moves |" in report.read_text() and (report.parent / "grid-01.png").is_file()
    from PIL import Image
    with Image.open(report.parent / "grid-01.png") as grid:  # 7 strengths x 64 px wide, 2 saves x 64 px high
        assert grid.width > 7 * 64 and grid.height > 2 * 64

    # The file as users load it: diffusers' load_lora_weights, every module matched; -1 moves against +1.
    pipe = StableDiffusionPipeline.from_pretrained(next((work / "models").glob("tiny-*")), safety_checker=None)
    tensors, _meta = K.read_kohya(files[-1])
    pipe.load_lora_weights(str(files[-1]), adapter_name="slider")
    from peft.tuners.lora import LoraLayer
    assert sum(isinstance(m, LoraLayer) for m in pipe.unet.modules()) == len(tensors) // 3
    x, emb = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.randn(1, 77, 32)
    emb = emb[:, :, : pipe.unet.config.cross_attention_dim]
    outs = {}
    for w in (-1.0, 0.0, 1.0):
        pipe.set_adapters(["slider"], adapter_weights=[w])
        with torch.no_grad():
            outs[w] = pipe.unet(x, 500, emb).sample
    assert not torch.allclose(outs[1.0], outs[0.0])
    up, down = (outs[1.0] - outs[0.0]).flatten(), (outs[0.0] - outs[-1.0]).flatten()
    assert torch.nn.functional.cosine_similarity(up, down, dim=0) > 0.9

    again = bake_lora(str(recipe))  # unchanged: both stages cached
    with Catalog.open(work / "catalog.duckdb", read_only=True) as cat:
        assert {s["stage"]: s["status"] for s in cat.stage_table(again)} == {"slide": "cached", "evaluate": "cached"}


def test_slider_recipe_without_a_base_model_skips_the_slide_naming_the_key(tmp_path, prefect_server):
    from flows.bake import bake_lora

    (tmp_path / "images").mkdir()
    recipe = write_recipe(tmp_path, "[slider]\ntarget = \"skirt\"\npositive = [\"a\"]\nnegative = [\"b\"]\n")
    run_id = bake_lora(str(recipe))
    with Catalog.open(tmp_path / "work" / "catalog.duckdb", read_only=True) as cat:
        slide = {s["stage"]: s for s in cat.stage_table(run_id)}["slide"]
        warned = cat.stage_warnings(run_id)
    assert slide["status"] == "skipped" and "set [train] base_model" in slide["message"]
    # write_recipe gives it a folder source: unread by a slider, said with the run (not only in its log)
    assert [(w["stage"], w["message"].split(":")[0]) for w in warned] == [
        ("slide", "a [slider] recipe trains from prompts alone")]
    assert load_recipe(recipe).slider.target == "skirt"


KILL_RECIPE = FLOW_RECIPE.replace("steps = 4\nsave_every_n_steps = 2", "steps = 8\nsave_every_n_steps = 2")


def test_a_slide_killed_by_sigkill_resumes_when_the_flow_is_rerun(tmp_path, prefect_server):
    """Every slide here runs in a fresh child Python, so the three compare like with like: this long-lived test
    process has loaded and run other code (other models, LyCORIS, judges), and one slide computed here and one in a
    child may part in the last bits from the first step, a difference of processes and not of the resume."""
    import time

    from tests.test_bake_flow import kill_at_first_state, run_child

    for name in ("a", "b"):
        (tmp_path / name / "images").mkdir(parents=True)
        write_recipe(tmp_path / name, KILL_RECIPE.replace('[autotag]\nmodel = "wd14"\n', ""))
    work = tmp_path / "a" / "work"

    def rerun(name: str) -> str:
        recipe = str(tmp_path / name / "recipe.toml")
        return f"from flows.bake import bake_lora; bake_lora({recipe!r}, to_stage='slide')"

    # step 2 saved, the next steps running
    kill_at_first_state(rerun("a"), work)
    killed_at = time.time()
    assert not list((work / "bakes").glob("*/t-000008.safetensors"))

    run_child(rerun("a"))
    # The same slide, never killed, after other draws from the global generators (as in a long test session).
    run_child(f"from tests.test_slider import _use_global_generators; _use_global_generators(1000); {rerun('b')}")
    with Catalog.open(work / "catalog.duckdb", read_only=True) as cat:
        log = cat.rows("SELECT step, created_at FROM bake_log ORDER BY step")
    assert [r["step"] for r in log] == list(range(1, 9))
    assert all(r["created_at"].timestamp() < killed_at for r in log[:2])  # steps 1-2 were not trained again
    for step in (2, 4, 6, 8):  # the first save that differs says where the two slides parted
        resumed = list((work / "bakes").glob(f"t-*/t-{step:06d}.safetensors"))
        whole = list((tmp_path / "b" / "work" / "bakes").glob(f"t-*/t-{step:06d}.safetensors"))
        assert len(resumed) == len(whole) == 1, (resumed, whole)
        assert resumed[0].read_bytes() == whole[0].read_bytes(), f"step {step}"
