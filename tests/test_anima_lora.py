"""The Anima LoRA file is the one users load: sd-scripts' names and metadata, applied in full by sd-scripts' own
Anima loader (when BAKERY_SD_SCRIPTS names a checkout), by diffusers' AnimaLoraLoaderMixin (the ComfyUI/diffusers
form) and mapped by ComfyUI's key rules; our merge at taste equals the trained network.

Networks are attached by the bake's own `attach_network` on the tiny Anima (bases/anima/tiny.py), their factors
moved off their initial values (LoRA's up matrix starts at zero), and saved as the bake saves them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from bakery.cli import app
from bakery.craft.bake.bases.anima import FAMILY, tiny
from bakery.craft.bake.bases.anima import network as AN
from bakery.craft.bake.bases.family import Base
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris
from bakery.craft.bake.networks import lycoris_net as LN
from bakery.craft.bake.training import attach_network

BLOCK_LAYERS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_output_proj",
                "cross_attn_q_proj", "cross_attn_k_proj", "cross_attn_v_proj", "cross_attn_output_proj",
                "mlp_layer1", "mlp_layer2")  # sd-scripts' default: a Block's Linears minus `_modulation`
LOCON_EXTRA = ("x_embedder_proj_1", "t_embedder_1_linear_1", "t_embedder_1_linear_2", "final_layer_linear",
               "final_layer_adaln_modulation_1", "final_layer_adaln_modulation_2",
               *(f"blocks_{i}_adaln_modulation_{part}_{j}" for i in range(2)
                 for part in ("self_attn", "cross_attn", "mlp") for j in (1, 2)))  # include_patterns=['.*']
QWEN3_LAYERS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_o_proj",
                "mlp_gate_proj", "mlp_up_proj", "mlp_down_proj")


def _bake(folder: Path, network_type: str, train_te: bool) -> tuple[Path, dict]:
    """A kohya file of a network attached by the bake on the tiny Anima; returns it and the trained parts."""
    from peft import get_peft_model_state_dict

    parts = tiny.components()
    for name in ("transformer", "text_encoder"):
        parts[name].requires_grad_(False)  # as the bake loads the base: frozen, the network alone learns
    base = Base(SimpleNamespace(**parts), FAMILY, "")
    spec = K.NetworkSpec(network_type, dim=4, alpha=2.0, conv_dim=4, conv_alpha=2.0)
    network = attach_network(base, SimpleNamespace(seed=1, train_unet=True, train_text_encoder=train_te), spec)
    gen = torch.Generator().manual_seed(2)
    tensors = {}
    with torch.no_grad():
        for prefix, model, targets in network:
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)
            tensors.update(LN.file_tensors(model) if LN.is_attached(model) else
                           K.peft_to_kohya(get_peft_model_state_dict(model), prefix, targets, spec))
    meta = K.build_metadata(spec=spec, architecture="anima", output_name="anima_test", triggers=["bakery_girl"],
                            resolution=1024, epoch=1, num_epochs=1, steps=10, learning_rate=1e-4, unet_lr=1e-4,
                            text_encoder_lr=None, optimizer="torch.optim.AdamW", seed=1, clip_skip=1,
                            base_model="anima.safetensors", tag_freq={}, dataset_dirs={}, num_train_images=1)
    path = folder / f"{network_type}{'_te' if train_te else ''}.safetensors"
    K.save_kohya(path, tensors, meta, "fp32")
    return path, parts


def _modules(path: Path) -> set[str]:
    tensors, _ = K.read_kohya(path)
    return {k.split(".", 1)[0] for k in tensors}


def _dit_out(transformer) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 1, 8, 8, generator=gen)
    ctx = torch.randn(1, 6, tiny.HIDDEN, generator=gen)
    with torch.no_grad():
        return transformer(x, torch.tensor([0.4]), ctx, padding_mask=torch.zeros(1, 1, 8, 8)).sample


def _te_out(text_encoder) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(torch.tensor([[5, 9, 17, 33, 2]])).last_hidden_state


def _merged(path: Path, weight: float = 1.0) -> tuple[dict, lycoris.MergedNetwork]:
    """Fresh tiny parts with our taste merge of the file at `weight`."""
    parts = tiny.components()
    modules = lycoris.kohya_modules({"unet": parts["transformer"], "te": [parts["text_encoder"]]}, "anima")
    merged = lycoris.MergedNetwork(K.read_kohya(path)[0], modules)
    merged.set_weight(weight)
    return parts, merged


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    folder = tmp_path_factory.mktemp("anima-lora")
    return {"lora_te": _bake(folder, "lora", True), "locon": _bake(folder, "locon", False),
            "lokr": _bake(folder, "lokr", False), "loha": _bake(folder, "loha", False),
            "ia3_te": _bake(folder, "ia3", True), "diag-oft": _bake(folder, "diag-oft", False)}


def test_the_file_has_sd_scripts_names_and_anima_metadata(files):
    dit = {f"lora_unet_blocks_{i}_{n}" for i in range(2) for n in BLOCK_LAYERS}
    te = {f"lora_te_layers_{i}_{n}" for i in range(2) for n in QWEN3_LAYERS}
    assert _modules(files["lora_te"][0]) == dit | te
    assert _modules(files["locon"][0]) == dit | {f"lora_unet_{n}" for n in LOCON_EXTRA}
    assert _modules(files["lokr"][0]) == _modules(files["locon"][0])
    tensors, meta = K.read_kohya(files["lora_te"][0])
    assert {k.split(".", 1)[1] for k in tensors} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert meta["ss_base_model_version"] == "anima"
    assert meta["modelspec.architecture"] == "anima-preview/lora"
    assert meta["modelspec.implementation"] == "https://huggingface.co/circlestone-labs/Anima"
    assert meta["ss_network_module"] == "networks.lora_anima" and meta["ss_sdxl"] == "False"
    meta = K.read_kohya(files["locon"][0])[1]
    assert meta["ss_network_module"] == "networks.lora_anima"
    assert json.loads(meta["ss_network_args"]) == {"include_patterns": "['.*']"}


def test_lycoris_types_take_the_same_layers(files):
    """LoHa as LoKr (LoCon-style); IA3 LyCORIS's ia3 preset layers; Diag-OFT the LoRA layers."""
    assert _modules(files["loha"][0]) == _modules(files["lokr"][0])
    ia3 = {f"lora_unet_blocks_{i}_{a}_{p}_proj" for i in range(2) for a in ("self_attn", "cross_attn") for p in "kv"}
    ia3 |= {f"lora_unet_blocks_{i}_mlp_layer2" for i in range(2)}
    ia3 |= {f"lora_te_layers_{i}_self_attn_{p}_proj" for i in range(2) for p in "kv"}
    assert _modules(files["ia3_te"][0]) == ia3
    assert _modules(files["diag-oft"][0]) == {f"lora_unet_blocks_{i}_{n}" for i in range(2) for n in BLOCK_LAYERS}


@pytest.mark.parametrize("kind", ["lora_te", "locon", "lokr", "loha", "ia3_te", "diag-oft"])
def test_our_merge_at_weight_1_is_the_trained_network(files, kind):
    path, trained = files[kind]
    parts, merged = _merged(path)
    assert len(merged.parts) == len(_modules(path))
    assert torch.allclose(_dit_out(parts["transformer"]), _dit_out(trained["transformer"]), atol=1e-5)
    assert torch.allclose(_te_out(parts["text_encoder"]), _te_out(trained["text_encoder"]), atol=1e-5)
    merged.set_weight(0.0)
    assert torch.equal(_dit_out(parts["transformer"]), _dit_out(tiny.components()["transformer"]))


def test_the_comfy_form_names_every_module_by_its_original_path(files):
    """ComfyUI/diffusers names: `diffusion_model.` + the DiT file's path; Qwen3 under sd-scripts' converter's
    prefix; alpha folded into lora_B."""
    tensors, _ = K.read_kohya(files["lora_te"][0])
    form = AN.comfy_form(tensors)
    assert "diffusion_model.blocks.0.self_attn.q_proj.lora_A.weight" in form
    assert "text_encoders.qwen3_06b.transformer.model.layers.1.mlp.down_proj.lora_B.weight" in form
    assert not any(k.endswith(".alpha") for k in form)
    name = "lora_unet_blocks_1_mlp_layer2"
    scale = float(tensors[f"{name}.alpha"]) / tensors[f"{name}.lora_down.weight"].shape[0]
    assert torch.allclose(form["diffusion_model.blocks.1.mlp.layer2.lora_B.weight"],
                          tensors[f"{name}.lora_up.weight"] * scale)
    lokr = AN.comfy_form(K.read_kohya(files["lokr"][0])[0])
    assert "diffusion_model.x_embedder.proj.1.lokr_w1" in lokr and "diffusion_model.x_embedder.proj.1.alpha" in lokr
    with pytest.raises(ValueError, match="IA3"):
        AN.comfy_form(K.read_kohya(files["ia3_te"][0])[0])


# -- ComfyUI, from its source ------------------------------------------------------------------------------
# comfy/lora.py `model_lora_keys_unet`: for every `diffusion_model.<k>.weight` of the model's state dict,
# `lora_unet_<k with . -> _>` and `diffusion_model.<k>` name it; `model_lora_keys_clip`: `text_encoders.<k>` names
# the text encoder's `<k>.weight`. comfy/ldm/anima/model.py: Anima is Cosmos-Predict2's MiniTrainDIT (the file's
# names) plus `llm_adapter`; its state dict is the DiT file's without `net.`. Qwen3's keys are
# `qwen3_06b.transformer.model.<path>` (sd-scripts' convert_anima_lora_to_comfy.py); ComfyUI has no `lora_te_`
# rule for Qwen3 (sd-scripts' docs/anima_train_network.md: "ComfyUI does not directly support sd-scripts format
# Qwen3 LoRA").
def _comfy_key_map(dit_file: Path, text_encoder) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(dit_file), "pt") as f:
        for k in f.keys():
            shapes["diffusion_model." + k.removeprefix("net.")] = tuple(f.get_slice(k).get_shape())
    for k, v in text_encoder.state_dict().items():
        shapes["qwen3_06b.transformer.model." + k] = tuple(v.shape)
    key_map = {}
    for k, shape in shapes.items():
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_map["lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")] = shape
            key_map[k[: -len(".weight")]] = shape
        elif k.endswith(".weight"):
            key_map["text_encoders." + k[: -len(".weight")]] = shape
    return key_map


def _module_shape(factors: dict) -> tuple[int, ...]:
    """The weight shape a module's factors change (kohya's or ComfyUI's LoRA names, LoKr)."""
    f = {k.replace("lora_A", "lora_down").replace("lora_B", "lora_up"): v for k, v in factors.items()}
    if "lora_down.weight" in f:
        return (f["lora_up.weight"].shape[0], f["lora_down.weight"].shape[1])
    return tuple(lycoris.lokr_delta(f).shape)


def _comfy_modules(form: dict) -> dict[str, dict]:
    """ComfyUI-form tensors by module (`<module>.lora_A.weight`, `<module>.lokr_w1`, `<module>.alpha`)."""
    out: dict[str, dict] = {}
    for key, tensor in form.items():
        module, sep, suffix = key.rpartition(".lora_") if ".lora_" in key else key.rpartition(".")
        out.setdefault(module, {})["lora_" + suffix if sep == ".lora_" else suffix] = tensor
    return out


@pytest.mark.parametrize("kind", ["lora_te", "lokr"])
def test_comfyui_maps_every_module_onto_a_weight_of_its_shape(tmp_path, files, kind):
    path, _ = files[kind]
    tiny_files = tiny.write(tmp_path / "tiny")
    key_map = _comfy_key_map(tiny_files.dit, tiny.components()["text_encoder"])
    tensors, _ = K.read_kohya(path)
    kohya = lycoris.by_module(tensors)
    dit = {n: f for n, f in kohya.items() if n.startswith("lora_unet_")}
    assert dit and all(key_map[n] == _module_shape(f) for n, f in dit.items())  # DiT: kohya's file as it is
    comfy = _comfy_modules(AN.comfy_form(tensors))  # Qwen3 (and the DiT): the ComfyUI form
    assert len(comfy) == len(kohya)
    assert all(key_map[n] == _module_shape(f) for n, f in comfy.items())


# -- diffusers ----------------------------------------------------------------------------------------------
def _pipeline():
    from diffusers import AnimaAutoBlocks, AnimaModularPipeline

    pipe = AnimaModularPipeline(blocks=AnimaAutoBlocks())
    pipe.update_components(**tiny.components())
    return pipe


def test_diffusers_applies_every_key_of_the_comfy_form_as_our_merge(tmp_path, files):
    from peft.tuners.lora import LoraLayer

    path, _ = files["locon"]
    pipe = _pipeline()
    pipe.load_lora_weights(str(path), adapter_name="kohya")  # kohya's `lora_unet_*` names: silently nothing
    assert not any(isinstance(m, LoraLayer) for m in pipe.transformer.modules())
    before = path.read_bytes()
    result = CliRunner().invoke(app, ["diffusers-form", str(path)])  # what a user runs
    out = AN.comfy_path(path)
    assert result.exit_code == 0 and result.output.strip() == f"wrote {out}", result.output
    assert path.read_bytes() == before
    pipe.load_lora_weights(str(out), adapter_name="bakery")
    wrapped = {n for n, m in pipe.transformer.named_modules() if isinstance(m, LoraLayer)}
    assert {AN.original_path(n) for n in wrapped} == {AN.dotted(n[len("lora_unet_"):]) for n in _modules(path)}
    ours, _ = _merged(path)
    assert torch.allclose(_dit_out(pipe.transformer), _dit_out(ours["transformer"]), atol=1e-5)


def test_diffusers_form_refuses_what_has_no_such_form_in_one_line(files):
    path, _ = files["ia3_te"]
    result = CliRunner().invoke(app, ["diffusers-form", str(path)])
    assert result.exit_code == 1 and "IA3" in result.output and len(result.output.strip().splitlines()) == 1
    assert not AN.comfy_path(path).exists()


# -- sd-scripts' own Anima loader -----------------------------------------------------------------------------
needs_sd_scripts = pytest.mark.skipif(not os.environ.get("BAKERY_SD_SCRIPTS"),
                                      reason="set BAKERY_SD_SCRIPTS to an sd-scripts checkout")


def _sd_scripts_anima(checkout: str, dit_file: Path):
    """sd-scripts' Anima from our DiT file with its own loader (`load_anima_model`: `net.` stripped, strict keys).
    Its config is fixed to the 2B model's widths, so the tiny model's widths are read from the file first."""
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    from library import anima_models, anima_utils
    from safetensors import safe_open

    with safe_open(str(dit_file), "pt") as f:
        shape = {k.removeprefix("net."): f.get_slice(k).get_shape() for k in f.keys()}
    width = shape["x_embedder.proj.1.weight"][0]
    blocks = 1 + max(int(k.split(".")[1]) for k in shape if k.startswith("blocks."))
    adapter_width = shape["llm_adapter.out_proj.weight"][0]
    adapter = {"source_dim": shape["llm_adapter.blocks.0.cross_attn.k_proj.weight"][1],
               "target_dim": adapter_width, "model_dim": adapter_width,
               "num_layers": 1 + max(int(k.split(".")[2]) for k in shape if k.startswith("llm_adapter.blocks.")),
               "num_heads": adapter_width // shape["llm_adapter.blocks.0.self_attn.q_norm.weight"][0],
               "self_attn": True}

    class Adapter(anima_models.LLMAdapter):
        def __init__(self, **_kw):
            super().__init__(**adapter)
            self.embed = torch.nn.Embedding(shape["llm_adapter.embed.weight"][0], adapter["target_dim"])

    init = anima_models.Anima.__init__

    def tiny_init(self, **kw):
        init(self, **{**kw, "model_channels": width, "num_blocks": blocks,
                      "num_heads": width // shape["blocks.0.self_attn.q_norm.weight"][0],
                      "crossattn_emb_channels": shape["blocks.0.cross_attn.k_proj.weight"][1],
                      "adaln_lora_dim": shape["blocks.0.adaln_modulation_self_attn.1.weight"][0]})

    mp = pytest.MonkeyPatch()
    mp.setattr(anima_models, "LLMAdapter", Adapter)
    mp.setattr(anima_models.Anima, "__init__", tiny_init)
    try:
        return anima_utils.load_anima_model("cpu", str(dit_file), "torch", False, "cpu", torch.float32)
    finally:
        mp.undo()


def _sd_scripts_parts(tmp_path: Path):
    """sd-scripts' Anima DiT and Qwen3 from our tiny files, loaded by sd-scripts' own loaders."""
    checkout = os.environ["BAKERY_SD_SCRIPTS"]
    tiny_files = tiny.write(tmp_path / "tiny")
    dit = _sd_scripts_anima(checkout, tiny_files.dit)
    from library import anima_utils

    te, _tok = anima_utils.load_qwen3_text_encoder(str(tiny_files.text_encoder), dtype=torch.float32)
    return dit, te


def _names(network) -> set[str]:
    return {m.lora_name for m in network.text_encoder_loras + network.unet_loras}


@needs_sd_scripts
def test_sd_scripts_and_lycoris_choose_the_layers_we_choose(tmp_path, files):
    """sd-scripts' default LoRA, sd-scripts with include_patterns=['.*'] and LyCORIS's default LoKr on sd-scripts'
    own Anima: the modules of our lora, locon and lokr files."""
    dit, te = _sd_scripts_parts(tmp_path)
    from lycoris import kohya as lycoris_kohya
    from networks import lora_anima

    assert _names(lora_anima.create_network(1.0, 4, 2.0, None, [te], dit)) == _modules(files["lora_te"][0])
    every = lora_anima.create_network(1.0, 4, 2.0, None, [], dit, include_patterns="['.*']")
    assert _names(every) == _modules(files["locon"][0])
    lokr = lycoris_kohya.create_network(1.0, 4, 2.0, None, None, dit, algo="lokr")
    assert _names(lokr) == _modules(files["lokr"][0])


@needs_sd_scripts
def test_lycoris_applies_our_lokr_file_to_sd_scripts_anima_as_we_do(tmp_path, files):
    """LyCORIS (sd-scripts' `--network_module lycoris.kohya`) loads every module of our LoKr file onto sd-scripts'
    Anima; each wrapped layer's output equals our merged layer's. (LyCORIS 4.1.3's `merge_to` applies alpha/rank
    twice to decomposed LoKr factors, `get_diff_weight` on top of `get_weight`; its forward, ComfyUI and A1111
    apply it once, as we do.)"""
    path, _ = files["lokr"]
    dit, _te = _sd_scripts_parts(tmp_path)
    from lycoris import kohya as lycoris_kohya

    weights = K.read_kohya(path)[0]
    net, _ = lycoris_kohya.create_network_from_weights(1.0, str(path), None, None, dit, dict(weights))
    assert _names(net) == _modules(path)
    net.apply_to(None, dit, apply_text_encoder=False, apply_unet=True)
    ours, _ = _merged(path)
    our_modules = lycoris.kohya_modules({"unet": ours["transformer"], "te": []}, "anima")
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name in _modules(path):
            theirs = dit.get_submodule(AN.dotted(name[len("lora_unet_"):]))
            x = torch.randn(3, our_modules[name].in_features, generator=gen)
            assert torch.allclose(theirs(x), our_modules[name](x), atol=1e-5), name


@needs_sd_scripts
@pytest.mark.parametrize("kind", ["lora_te", "locon"])
def test_sd_scripts_anima_loader_consumes_every_key_and_merges_as_we_do(tmp_path, files, kind):
    path, _ = files[kind]
    dit, te = _sd_scripts_parts(tmp_path)
    from networks import lora_anima

    applied, weights = lora_anima.create_network_from_weights(1.0, str(path), None, [te], dit)
    applied.apply_to([te], dit)
    applied.load_state_dict(weights, strict=True)  # its load_weights, strict: every key consumed, none missing
    net, _ = lora_anima.create_network_from_weights(1.0, str(path), None, [te], dit, weights, for_inference=True)
    loras = {m.lora_name: m for m in net.text_encoder_loras + net.unet_loras}
    assert set(loras) == _modules(path)  # every module of the file, and nothing else, is built
    net.merge_to([te], dit, weights, dtype=torch.float32, device="cpu")
    ours, _ = _merged(path)
    our_modules = lycoris.kohya_modules({"unet": ours["transformer"], "te": [ours["text_encoder"]]}, "anima")
    for name, lora in loras.items():
        root = te if name.startswith(AN.TE_PREFIX + "_") else dit
        theirs = root.get_submodule(lora.original_name).weight
        assert torch.allclose(theirs, our_modules[name].weight, atol=1e-6), name
