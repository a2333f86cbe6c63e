"""Rendering through the family (bases/family.py's `use_sampler`, `render`) on the tiny Anima: diffusers'
AnimaModularPipeline called as taste, regularisation and the trigger check call it (xyz.Taster), and an Anima
LoRA file applied by taste's own merge at every weight (test_anima_lora checks the merge against the network).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bakery.craft.bake import regularisation as reg
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris
from bakery.craft.taste import xyz
from bakery.manifest import TrainImage, TrainSet
from tests.test_anima_lora import _bake


@pytest.fixture(scope="module")
def anima_pipe():
    from diffusers import AnimaAutoBlocks, AnimaModularPipeline

    from bakery.craft.bake.bases.anima import tiny as tiny_anima

    pipe = AnimaModularPipeline(blocks=AnimaAutoBlocks())
    pipe.update_components(**tiny_anima.components())  # the words of anima-lora's files: the same vocabulary
    return pipe


def _taster(pipe, sampler: str = "euler_a") -> xyz.Taster:
    return xyz.Taster("tiny", "anima", sampler=sampler, device="cpu", pipe=pipe)


def test_anima_renders_each_seed_reproducibly_with_the_recipes_cfg(anima_pipe):
    taster = _taster(anima_pipe)
    assert taster.prediction.describe() == "rectified flow (velocity), ancestral flow-match Euler, flow shift 3"
    a = taster.render(["bakery_girl, red_dress"], "lowres", [1, 2], 3, 4.0, 64, 96)
    assert [im.shape for im in a] == [(96, 64, 3)] * 2 and a[0].dtype == np.uint8
    again = taster.render(["bakery_girl, red_dress"], "lowres", [1, 2], 3, 4.0, 64, 96)
    assert all(np.array_equal(x, y) for x, y in zip(a, again))  # the ancestral noise comes from the seeds
    assert np.abs(a[0].astype(int) - a[1]).mean() > 1  # another seed, another picture
    no_cfg = taster.render(["bakery_girl, red_dress"], "lowres", [1], 3, 1.0, 64, 96)[0]
    assert np.abs(no_cfg.astype(int) - a[0]).mean() > 0.5  # the guider takes the recipe's scale
    euler = _taster(anima_pipe, "euler").render(["bakery_girl, red_dress"], "lowres", [1], 3, 4.0, 64, 96)[0]
    assert np.abs(euler.astype(int) - a[0]).mean() > 0.5  # the ODE step, not the ancestral one


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_karras", "ddim"])
def test_samplers_without_a_flow_form_are_refused_in_one_line(anima_pipe, sampler):
    with pytest.raises(xyz.ModelError) as err:
        _taster(anima_pipe, sampler)
    assert "\n" not in str(err.value) and f"sampler {sampler!r} has no rectified-flow form" in str(err.value)
    assert "'euler_a' or 'euler'" in str(err.value)


def test_a_regularisation_image_is_drawn_by_anima_at_its_bucket(anima_pipe):
    """regularisation.render_png draws through the Taster, as the stage does; the image depends on its job alone."""
    taster = _taster(anima_pipe)
    settings = reg.RegSettings(steps=2, size=96, min_side=64, max_side=128, step=32, cfg_scale=4.0)
    job = reg.plan_reg(TrainSet([TrainImage("c", "a", "h1", "bakery_girl, red_dress, outdoors", 1)],
                                    ["bakery_girl"]), {"h1": (64, 128)}, settings)[0]
    png = reg.render_png(taster.render, job, settings)
    assert Image.open(io.BytesIO(png)).size == (job.width, job.height) == (64, 128)
    assert job.prompt == "red_dress, outdoors" and reg.render_png(taster.render, job, settings) == png


def test_an_anima_lora_file_is_merged_by_taste_at_every_weight(anima_pipe, tmp_path):
    """diffusers' Anima loader reads no kohya names: the Taster merges the file itself, each weight a re-merge."""
    path, _ = _bake(tmp_path, "lora", True)
    taster = _taster(anima_pipe, "euler")
    draw = lambda: taster.render(["bakery_girl, red_dress"], "lowres", [1], 2, 4.0, 64, 64)[0].astype(int)
    base = draw()
    taster.load_lora(path, "epoch1")
    assert taster.merged is not None and len(taster.merged.parts) == len(lycoris.by_module(K.read_kohya(path)[0]))
    taster.set_weight(0.0)
    assert np.array_equal(draw(), base)
    taster.set_weight(1.0)
    full = np.abs(draw() - base).mean()
    taster.set_weight(0.5)
    assert 0 < np.abs(draw() - base).mean() < full
    taster.unload_lora()
    assert np.array_equal(draw(), base)
