"""Anima from the files users have: the DiT single file (LLM adapter inside or beside), the Qwen3 text encoder
(folder or single file + the shipped config), the Qwen-Image VAE file in its Wan layout, the tokenizers; offline,
into diffusers' AnimaModularPipeline, on the tiny Anima of the real architecture and file layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import checkpoint
from bakery.craft.bake.bases.anima import files as F
from bakery.craft.bake.bases.anima import tiny
from bakery.craft.bake.bases.family import BaseFiles
from bakery.craft.bake.bases.load import load_base
from bakery.recipe import Recipe
from bakery.stage_params import base_fingerprint, model_fingerprint, regularisation_params_json

WORDS = ["bakery_girl"]
MODELS = ("transformer", "text_conditioner", "text_encoder", "vae")


@pytest.fixture(autouse=True)
def offline(tmp_path_factory, monkeypatch):
    """No network, and an empty hub cache: a tokenizer is found in the files named, or the error says so."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(F, "HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub-cache")))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tiny.TinyFiles:
    return tiny.write(tmp_path_factory.mktemp("anima") / "tiny", WORDS)


@pytest.fixture(scope="module")
def parts() -> dict:
    return tiny.components(WORDS)


def named(f: tiny.TinyFiles, **over: str | None) -> BaseFiles:
    given = {"vae": str(f.vae), "text_encoder": str(f.text_encoder), "t5_tokenizer": str(f.t5_tokenizer)}
    return BaseFiles(**{**given, **over})


def same_weights(model, expected) -> bool:
    got, want = model.state_dict(), expected.state_dict()
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_tiny_anima_loads_from_its_files_offline_and_renders(tmp_path, files, parts):
    base = load_base("tiny", tmp_path, architecture="anima", words=WORDS)
    assert base.architecture == "anima" and Path(base.source).name == "anima.safetensors"
    assert type(base.pipe).__name__ == "AnimaModularPipeline"
    for name in MODELS:
        assert same_weights(getattr(base.pipe, name), parts[name]), name
    for name in ("transformer", "text_conditioner", "vae"):  # every config value shipped or read from the shapes
        got, want = dict(getattr(base.pipe, name).config), dict(parts[name].config)
        assert {k: v for k, v in got.items() if not k.startswith("_")} == \
               {k: v for k, v in want.items() if not k.startswith("_")}, name
    for name in ("tokenizer", "t5_tokenizer"):  # the same tokens, the same ids
        assert getattr(base.pipe, name).get_vocab() == parts[name].get_vocab(), name
    assert base.files.text_encoder and base.files.vae and base.files.t5_tokenizer  # what taste loads again
    image = base.pipe(prompt=["bakery_girl, 1girl"], negative_prompt=[""], height=64, width=64, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0), output="images")[0]
    assert image.size == (64, 64) and len(set(image.getdata())) > 1


def test_vae_file_is_in_the_wan_layout_users_have(files, parts):
    with safe_open(str(files.vae), framework="pt") as f:
        keys = set(f.keys())
    assert {"encoder.conv1.weight", "conv1.weight", "conv2.weight", "decoder.upsamples.3.resample.1.weight",
            "decoder.upsamples.4.shortcut.weight", "encoder.downsamples.2.resample.1.weight"} <= keys
    assert not any(k.startswith(("encoder.conv_in", "quant_conv", "decoder.up_blocks")) for k in keys)
    assert same_weights(F.vae(str(files.vae)), parts["vae"])


def test_vae_diffusers_folder_replaces_the_file(tmp_path, files, parts):
    parts["vae"].save_pretrained(str(tmp_path / "qwen-vae"))
    base = load_base(str(files.dit), tmp_path, files=named(files, vae=str(tmp_path / "qwen-vae")))
    assert same_weights(base.pipe.vae, parts["vae"])


def test_adapter_beside_the_dit_file_loads_like_the_one_inside(tmp_path, files, parts):
    state = load_file(str(files.dit))
    save_file({k: v for k, v in state.items() if "llm_adapter" not in k}, str(tmp_path / "dit.safetensors"))
    save_file({k.removeprefix("net."): v for k, v in state.items() if "llm_adapter" in k},
              str(tmp_path / "llm_adapter.safetensors"))  # sd-scripts' prefix `llm_adapter.`, no `net.`
    with safe_open(str(tmp_path / "dit.safetensors"), framework="pt") as f:
        assert checkpoint.kind_of(f.keys(), lambda k: ()) == "cosmos"
    with pytest.raises(BakeError, match="train.llm_adapter") as err:
        load_base(str(tmp_path / "dit.safetensors"), tmp_path, files=named(files))
    assert "\n" not in str(err.value)
    base = load_base(str(tmp_path / "dit.safetensors"), tmp_path,
                     files=named(files, llm_adapter=str(tmp_path / "llm_adapter.safetensors")))
    assert base.architecture == "anima"  # auto: a Cosmos DiT with its adapter beside it
    assert same_weights(base.pipe.text_conditioner, parts["text_conditioner"])
    assert same_weights(base.pipe.transformer, parts["transformer"])


def test_architecture_auto_detected_from_the_dit_file(tmp_path, files):
    with safe_open(str(files.dit), framework="pt") as f:
        assert checkpoint.kind_of(f.keys(), lambda k: tuple(f.get_slice(k).get_shape())) == "anima"
    state = {k.removeprefix("net."): v for k, v in load_file(str(files.dit)).items()}
    save_file(state, str(tmp_path / "no-prefix.safetensors"))  # sd-scripts reads it with or without `net.`
    base = load_base(str(tmp_path / "no-prefix.safetensors"), tmp_path, files=named(files))
    assert base.architecture == "anima" and checkpoint.refusal("anima") is None


def test_qwen3_single_file_with_the_shipped_config(tmp_path, files, parts):
    folder = tmp_path / "te"
    folder.mkdir()
    save_file({f"model.{k}": v.contiguous() for k, v in parts["text_encoder"].state_dict().items()},
              str(folder / "qwen3.safetensors"))  # a Qwen3ForCausalLM-style file: `model.` names
    with pytest.raises(BakeError, match="train.text_encoder.*Qwen/Qwen3-0.6B") as err:
        load_base(str(files.dit), tmp_path, files=named(files, text_encoder=str(folder / "qwen3.safetensors")))
    assert "\n" not in str(err.value)  # no tokenizer beside it, none in the hub cache: never a made-up one
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(files.text_encoder / name, folder / name)
    base = load_base(str(files.dit), tmp_path, files=named(files, text_encoder=str(folder / "qwen3.safetensors")))
    assert same_weights(base.pipe.text_encoder, parts["text_encoder"])
    shipped = json.loads((F.CONFIGS / "qwen3_06b" / "config.json").read_text())
    assert base.pipe.text_encoder.config.rope_parameters["rope_theta"] == shipped["rope_parameters"]["rope_theta"]


def meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_shipped_configs_describe_qwen3_06b_and_cosmos_predict2_2b():
    """The real models' shapes (no weights) give the real configs: Qwen3-0.6B's, and diffusers' Cosmos-Predict2-2B
    transformer with sd-scripts' Anima positions."""
    qwen = {"embed_tokens.weight": (151936, 1024), "layers.0.self_attn.q_norm.weight": (128,),
            "layers.0.self_attn.q_proj.weight": (2048, 1024), "layers.0.self_attn.k_proj.weight": (1024, 1024),
            "layers.0.mlp.gate_proj.weight": (3072, 1024), **{f"layers.{i}.input_layernorm.weight": (1024,)
                                                             for i in range(28)}}
    config = F.qwen3_config(meta(qwen))
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"],
            config["head_dim"], config["intermediate_size"]) == (28, 16, 8, 128, 3072)
    dit = {"x_embedder.proj.1.weight": (2048, 68), "blocks.0.self_attn.q_norm.weight": (128,),
           "final_layer.linear.weight": (64, 2048), "blocks.0.mlp.layer1.weight": (8192, 2048),
           "blocks.0.cross_attn.k_proj.weight": (2048, 1024),
           "blocks.0.adaln_modulation_self_attn.1.weight": (256, 2048),
           **{f"blocks.{i}.layer_norm_self_attn.weight": (2048,) for i in range(28)}}
    config = F.transformer_config(meta(dit))
    assert (config["in_channels"], config["out_channels"], config["num_attention_heads"], config["attention_head_dim"],
            config["num_layers"], config["mlp_ratio"], config["text_embed_dim"], config["adaln_lora_dim"]) == \
           (16, 16, 16, 128, 28, 4.0, 1024, 256)
    assert config["rope_scale"] == (1.0, 4.0, 4.0) and config["extra_pos_embed_type"] is None


@pytest.mark.parametrize("key", ["text_encoder", "vae", "t5_tokenizer"])
def test_each_missing_file_is_one_line_naming_its_key(tmp_path, files, key):
    for value in (None, str(tmp_path / "nowhere")):
        with pytest.raises(BakeError, match=f"train.{key}") as err:
            load_base(str(files.dit), tmp_path, files=named(files, **{key: value}))
        assert "\n" not in str(err.value)


def test_folder_of_the_modular_pipeline(tmp_path, files, parts):
    base = load_base(str(files.dit), tmp_path, files=named(files))
    base.pipe.save_pretrained(str(tmp_path / "folder"), overwrite_modular_index=True)
    again = load_base(str(tmp_path / "folder"), tmp_path)
    assert again.architecture == "anima" and same_weights(again.pipe.transformer, parts["transformer"])


def test_companion_files_are_in_the_cache_keys_only_when_set(tmp_path, files):
    recipe = Recipe.model_validate({"project": {"name": "p"}, "train": {"base_model": str(files.dit)}})
    assert base_fingerprint(str(files.dit), recipe.train) == model_fingerprint(str(files.dit))
    assert "text_encoder" not in regularisation_params_json(recipe)
    named_te = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"text_encoder": str(files.text_encoder)})})
    assert base_fingerprint(str(files.dit), named_te.train) != model_fingerprint(str(files.dit))
    assert "text_encoder_fingerprint" in regularisation_params_json(named_te)


def test_tokenizers_from_the_hub_cache(tmp_path, files, monkeypatch, parts):
    """Unset train.t5_tokenizer, a single-file text encoder: the hub cache's tokenizers (as huggingface_hub lays
    them out), never fetched."""
    cache = tmp_path / "hub"
    for repo, folder in ((F.T5_HUB, files.t5_tokenizer), (F.QWEN3_HUB, files.text_encoder)):
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("0" * 40)
        snapshot = root / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(folder / name, snapshot / name)
    monkeypatch.setattr(F, "HUB_CACHE", str(cache))
    (tmp_path / "te").mkdir()
    save_file({k: v.contiguous() for k, v in parts["text_encoder"].state_dict().items()},
              str(tmp_path / "te" / "qwen3.safetensors"))
    base = load_base(str(files.dit), tmp_path, files=named(files, t5_tokenizer=None,
                                                            text_encoder=str(tmp_path / "te" / "qwen3.safetensors")))
    assert base.pipe.t5_tokenizer.get_vocab() == F.t5_tokenizer(str(files.t5_tokenizer)).get_vocab()
    assert base.pipe.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(str(files.text_encoder)).get_vocab()


def test_recipe_takes_the_tiny_anima():
    for train in ({"base_model": "tiny", "architecture": "anima"}, {"base_model": "tiny", "family": "anima"}):
        recipe = Recipe.model_validate({"project": {"name": "p"}, "train": train})
        assert recipe.train.architecture == "anima"
    with pytest.raises(ValueError, match="architecture"):
        Recipe.model_validate({"project": {"name": "p"}, "train": {"base_model": "tiny", "architecture": "sdxl"}})
