"""A local single-file checkpoint in the original (LDM) layout loads with no network (HF_HUB_OFFLINE=1),
SD1.5 and SDXL: tiny checkpoints written in that layout (bakery/testmodels/ldm.py), configs from a local
folder (bakery/craft/bake/bases/single_file.py); the shipped SD1.5/SDXL configs build the real architectures and CLIP's
real tokenizer offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bakery.craft.bake.bases import single_file as S
from bakery.testmodels.ldm import ldm_state_dict, write_single_file
from bakery.testmodels.tiny_sd15 import build_tiny_sd15, write_clip_tokenizer


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def tiny_sdxl(folder: Path) -> Path:
    """A tiny SDXL whose two text encoders differ in width, as SDXL's do (768/1280): diffusers tells
    them apart by that width when it reads a single file."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    vocab = write_clip_tokenizer(folder / "tok", ["bakery_girl"])
    tok = CLIPTokenizer(str(folder / "tok/vocab.json"), str(folder / "tok/merges.txt"), pad_token="<|endoftext|>")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=48 + 6 * 8, cross_attention_dim=32 + 48, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                        norm_num_groups=8, sample_size=64)
    common = dict(vocab_size=vocab, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                  bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, projection_dim=32, **common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, intermediate_size=64, projection_dim=48, **common))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=sched)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _configs_of(folder: Path, dest: Path) -> Path:
    """The diffusers folder's configs and tokenizer files, no weights: the config folder of its own shapes."""
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "tok"))
    return dest


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_tiny_ldm_checkpoint_loads_offline_with_local_configs(tmp_path, architecture):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from bakery.craft.bake.bases import checkpoint

    cls = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
    folder = (tiny_sdxl if architecture == "sdxl" else lambda f: build_tiny_sd15(f, words=["bakery_girl"]))(tmp_path / "m")
    pipe = cls.from_pretrained(folder)
    path = write_single_file(pipe, tmp_path / f"{architecture}.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # the original layout, as users' files are
        keys = list(f.keys())
        assert checkpoint.kind_of(keys, lambda k: tuple(f.get_slice(k).get_shape())) == architecture
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model." if architecture == "sd15"
                            else "conditioner.embedders.1.model.transformer.resblocks.") for k in keys)

    config = S.config_folder(architecture, tmp_path / "configs", source=_configs_of(folder, tmp_path / "src"))
    loaded = S.load_single_file(cls, path, config)
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if architecture == "sdxl" else [])
    for name in parts:
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(want) <= set(got), name
        assert all(torch.equal(want[k], got[k].to(want[k].dtype)) for k in want), name
    assert loaded.tokenizer("bakery_girl").input_ids == pipe.tokenizer("bakery_girl").input_ids
    # An external VAE file (train.vae), its keys without the checkpoint's prefix: loaded as bake loads it.
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    vae_file = tmp_path / "vae.safetensors"
    save_file({k.removeprefix("first_stage_model."): v for k, v in load_file(str(path)).items()
               if k.startswith("first_stage_model.")}, str(vae_file))
    vae = AutoencoderKL.from_single_file(str(vae_file), config=str(config), subfolder="vae", local_files_only=True)
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in pipe.vae.state_dict().items())


REAL_SIZES = {  # parameters of the real models (millions), what the shipped configs must build
    "sd15": {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06},
    "sdxl": {"unet": 2567.46, "vae": 83.65, "text_encoder": 123.06, "text_encoder_2": 694.66},
}


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_shipped_configs_build_the_real_models_and_clip_tokenizer_offline(tmp_path, architecture):
    """No weights: the architectures on the meta device, their LDM names as diffusers reads a real file."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    config = S.config_folder(architecture, tmp_path)
    assert S.config_folder(architecture, tmp_path) == config  # built once
    shipped = S.shipped_config(architecture)  # what bake and evaluate load with
    ldm_file = tmp_path / "keys.safetensors"
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(ldm_file))
    assert S.config_for(ldm_file, architecture) == shipped
    save_file({"cond_stage_model.model.positional_embedding": torch.zeros(1)}, str(ldm_file))  # SD2.x: the hub's
    assert S.config_for(ldm_file, architecture) is None
    assert (shipped / "model_index.json").read_text() == (config / "model_index.json").read_text()
    assert (shipped / "tokenizer" / "vocab.json").read_bytes() == (config / "tokenizer" / "vocab.json").read_bytes()
    models = {}
    with init_empty_weights():
        models["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        models["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        models["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        if architecture == "sdxl":
            models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2"))
    for name, millions in REAL_SIZES[architecture].items():
        assert sum(p.numel() for p in models[name].parameters()) / 1e6 == pytest.approx(millions, abs=0.01), name

    class Pipe:  # the parts ldm_state_dict reads
        pass

    pipe = Pipe()
    for name, model in models.items():
        setattr(pipe, name, model)
    if architecture == "sd15":
        pipe.text_encoder_2 = None
    ldm = ldm_state_dict(pipe)
    assert infer_diffusers_model_type(ldm) == {"sd15": "v1", "sdxl": "xl_base"}[architecture]

    for name in ("tokenizer", "tokenizer_2") if architecture == "sdxl" else ("tokenizer",):
        tok = CLIPTokenizer.from_pretrained(config / name)
        assert len(tok) == 49408
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's own ids
    if architecture == "sdxl":
        assert CLIPTokenizer.from_pretrained(config / "tokenizer_2").pad_token == "!"
