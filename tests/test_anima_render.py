"""Rendering through the family (bases/family.py's `use_sampler`, `render`) on the tiny Anima, and LoRA/LoCon
files merged by our own code (what taste applies to an Anima base, whose diffusers loader reads no kohya names).

The Anima renders go through diffusers' AnimaModularPipeline as taste, regularisation and the trigger check
call it (xyz.Taster); the merge is checked against the trained peft network on the tiny SD1.5, as test_lycoris
checks LoHa/LoKr.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bakery.craft.bake import regularisation as reg
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris
from bakery.craft.taste import xyz
from bakery.manifest import TrainImage, TrainSet
from tests.test_kohya_lora import _kohya_tensors, _trained, tiny  # noqa: F401  (tiny: a fixture)
from tests.test_lycoris import _outputs

WORDS = ["bakery_girl", "red_dress", "outdoors"]


@pytest.fixture(scope="module")
def anima_pipe():
    from diffusers import AnimaAutoBlocks, AnimaModularPipeline

    from bakery.craft.bake.bases.anima import tiny as tiny_anima

    pipe = AnimaModularPipeline(blocks=AnimaAutoBlocks())
    pipe.update_components(**tiny_anima.components(WORDS))
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


@pytest.mark.parametrize("network_type", ["lora", "locon"])
def test_lora_and_locon_files_merged_by_our_code_reproduce_the_network(tiny, tmp_path, network_type):  # noqa: F811
    """The merge taste uses where diffusers reads no kohya names: ΔW = up @ down * alpha/rank, convs included."""
    spec = K.NetworkSpec(network_type, dim=4, alpha=2, conv_dim=4, conv_alpha=1)
    trained, targets = _trained(tiny, spec)
    expected = _outputs(trained)
    tensors = {k: v.to(torch.float16) for k, v in _kohya_tensors(trained, targets, spec).items()}
    assert not lycoris.is_lycoris(tensors)
    pipe = xyz.Taster(str(tiny), "sd15", device="cpu").pipe
    base = _outputs(pipe)
    merged = lycoris.MergedNetwork(tensors, lycoris.kohya_modules({"unet": pipe.unet, "te": [pipe.text_encoder]},
                                                                  "sd15"))
    assert len(merged.parts) == len(lycoris.by_module(tensors))
    assert (network_type == "locon") == any(m.weight.dim() == 4 and m.kernel_size == (3, 3) for m, _, _ in merged.parts)
    merged.set_weight(1.0)
    for g, want, b in zip(_outputs(pipe), expected, base):
        assert (g - b).abs().max() > 0.05  # the network changes the model
        assert (g - want).abs().max() < 0.01 * max(1.0, want.abs().max().item())  # = the trained network (fp16 file)
    merged.remove()
    assert all(torch.equal(g, b) for g, b in zip(_outputs(pipe), base))
