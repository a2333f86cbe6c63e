"""A base model the bake cannot train (SD3, Flux, an inpainting UNet, a LoRA, a VAE) is refused in one line
that says what it is and what is supported; tiny files carrying each family's tell-tale keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import checkpoint
from bakery.craft.bake.bases.load import load_base
from tests.lora_files import write_kohya_lora
from tests.test_kohya_lora import tiny  # noqa: F401  (a fixture)

Z = torch.zeros(2, 2)
FILES = {  # name: (tensors, what the error says)
    "sd3": ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": Z,
             "model.diffusion_model.x_embedder.proj.weight": Z}, "an SD3 checkpoint"),
    "flux": ({"double_blocks.0.img_attn.qkv.weight": Z, "single_blocks.0.linear1.weight": Z,
              "img_in.weight": Z}, "a Flux checkpoint"),
    "flux_ldm": ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": Z,
                  "model.diffusion_model.single_blocks.0.linear1.weight": Z}, "a Flux checkpoint"),
    "inpainting": ({checkpoint.FIRST_CONV: torch.zeros(8, 9, 3, 3), "model.diffusion_model.out.2.weight": Z,
                    "first_stage_model.encoder.conv_in.weight": Z}, "an inpainting UNet (9 input channels, not 4)"),
    "lycoris": ({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": Z,
                 "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(1.0)}, "a LoRA/LyCORIS network"),
    "vae": ({"encoder.conv_in.weight": Z, "decoder.conv_out.weight": Z}, "a VAE alone"),
    "other": ({"weight": Z}, "not a Stable Diffusion checkpoint"),
}


def _one_line(exc: BakeError) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    assert checkpoint.SUPPORTED in text  # ... and what is supported
    return text


@pytest.mark.parametrize("name", FILES)
def test_unsupported_single_file_is_refused_saying_what_it_is(tmp_path, name):
    tensors, what = FILES[name]
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))
    with pytest.raises(BakeError) as err:
        load_base(str(path), tmp_path)
    text = _one_line(err.value)
    assert text.startswith(f"train.base_model {str(path)!r} is {what}")


def test_a_kohya_lora_passed_as_the_base_is_refused(tiny, tmp_path):  # noqa: F811
    path = write_kohya_lora(tiny, tmp_path / "chara-000001.safetensors")
    with pytest.raises(BakeError) as err:
        load_base(str(path), tmp_path)
    assert "a LoRA/LyCORIS network, not a base model" in _one_line(err.value)


@pytest.mark.parametrize("class_name, channels, what", [
    ("StableDiffusion3Pipeline", None, "an SD3 model"),
    ("FluxPipeline", None, "a Flux model"),
    ("StableDiffusionInpaintPipeline", 9, "an inpainting model"),
    ("StableDiffusionPipeline", 9, "an inpainting model"),
])
def test_unsupported_diffusers_folder_is_refused(tmp_path, class_name, channels, what):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    if channels:
        (tmp_path / "m" / "unet").mkdir()
        (tmp_path / "m" / "unet" / "config.json").write_text(json.dumps({"in_channels": channels}))
    with pytest.raises(BakeError) as err:
        load_base(str(tmp_path / "m"), tmp_path)
    assert what in _one_line(err.value)


def test_sd15_and_sdxl_keys_are_what_they_are():
    conv = {checkpoint.FIRST_CONV: (320, 4, 3, 3)}
    sd15 = [checkpoint.FIRST_CONV, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    sdxl = [checkpoint.FIRST_CONV, "conditioner.embedders.1.model.token_embedding"]
    assert checkpoint.kind_of(sd15, conv.__getitem__) == "sd15" and checkpoint.refusal("sd15") is None
    assert checkpoint.kind_of(sdxl, conv.__getitem__) == "sdxl" and checkpoint.refusal("sdxl") is None
    assert checkpoint.folder_refusal("StableDiffusionXLPipeline", 4) is None


def test_the_tiny_model_still_loads(tiny, tmp_path):  # noqa: F811
    """A real SD1.5-shaped diffusers folder passes the check."""
    assert load_base(str(Path(tiny)), tmp_path).architecture == "sd15"
