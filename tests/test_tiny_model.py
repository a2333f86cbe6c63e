"""The tiny SD1.5-shaped base model: real classes and file layout, random weights."""

import json

import torch


def test_tiny_sd15_builds_loads_and_generates(tmp_path):
    from diffusers import StableDiffusionPipeline

    from bakery.testmodels.tiny_sd15 import MARKER, build_tiny_sd15

    folder = build_tiny_sd15(tmp_path / "tiny", words=["bakery_girl, red_dress"])
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (folder / MARKER).exists()
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    # A tag is whole-word tokens, as in the real CLIP vocabulary.
    assert pipe.tokenizer.tokenize("bakery_girl, red_dress") == ["bakery</w>", "_</w>", "girl</w>", ",</w>", "red</w>", "_</w>", "dress</w>"]
    assert pipe.vae_scale_factor == 8
    out = pipe("bakery_girl", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(1)).images
    assert out.shape == (1, 64, 64, 3)
    # Built once: a second call reuses the folder.
    mtime = (folder / "unet" / "config.json").stat().st_mtime
    assert build_tiny_sd15(folder) == folder and (folder / "unet" / "config.json").stat().st_mtime == mtime


def test_tiny_sd15_with_only_single_character_words(tmp_path):
    """No whole-word merges at all (a one-letter trigger): merges.txt must still parse."""
    from transformers import CLIPTokenizer

    from bakery.testmodels.tiny_sd15 import build_tiny_sd15

    folder = build_tiny_sd15(tmp_path / "tiny", words=["x"])
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tok.tokenize("x, y") == ["x</w>", ",</w>", "y</w>"]
