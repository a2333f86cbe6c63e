"""LoHa and LoKr files applied by our own code (bakery/craft/bake/networks/lycoris.py) reproduce the trained peft network.

The check is the one test_kohya_lora does for LoRA/LoCon through diffusers: a peft network with
non-identity weights, written as the bake writes it (fp16 kohya/LyCORIS file), applied at weight 1
to a fresh base model must give the network's own UNet and text-encoder outputs; at weight 0 the
base model's, exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris
from bakery.craft.taste.xyz import Taster
from tests.test_kohya_lora import _kohya_tensors, _metadata, _trained, tiny  # noqa: F401  (tiny: a fixture)

# -- ΔW from the factors, against peft's own get_delta_weight ------------------------------------------

class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 48)  # LoKr: w1 (6x8), w2 (8x8): rank 2 factors both when asked
        self.conv = nn.Conv2d(16, 32, 3, padding=1)

    def forward(self, x, img):
        return self.lin(x), self.conv(img)


CASES = {  # (network, conv rank, peft options): every form of the two networks
    "loha": ("loha", 2, {}),
    "loha tucker": ("loha", 2, {"use_effective_conv2d": True}),
    "lokr full factors": ("lokr", 8, {}),  # conv: w1 and w2 full (scale folded into the file's w2)
    "lokr factored": ("lokr", 2, {"decompose_both": True, "use_effective_conv2d": True}),  # w1_a/b, w2 Tucker
}


def _peft_two(network: str, conv_dim: int, options: dict):
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    spec = K.NetworkSpec(network, dim=2, alpha=3, conv_dim=conv_dim, conv_alpha=5)
    targets = K.Targets(linear=["lin"], conv=["conv"])
    config = K.peft_config(targets, spec)
    for key, value in options.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = inject_adapter_in_model(config, _Two())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hada_" in name or "lokr_" in name:
                p.copy_(torch.randn(p.shape) * 0.5)
    tensors = K.peft_to_kohya(get_peft_model_state_dict(model), "lora_unet", targets, spec)
    return model, tensors


@pytest.mark.parametrize("case", CASES)
def test_delta_from_the_factors_is_peft_own(case):
    network, conv_dim, options = CASES[case]
    model, tensors = _peft_two(network, conv_dim, options)
    groups = lycoris.by_module(tensors)
    suffixes = set(groups["lora_unet_conv"])
    if "use_effective_conv2d" in options:
        assert {"hada_t1", "hada_t2"} <= suffixes or "lokr_t2" in suffixes  # the Tucker form is exercised
    if case == "lokr factored":
        assert {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"} <= set(groups["lora_unet_lin"])
    if case == "lokr full factors":
        assert {"lokr_w1", "lokr_w2"} <= suffixes
    for name, module in (("lora_unet_lin", model.lin), ("lora_unet_conv", model.conv)):
        want = module.get_delta_weight("default")
        got = lycoris.delta_weight(groups[name], module.base_layer.weight.shape)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), name


def test_merged_network_sets_any_weight_and_restores_the_original():
    model, tensors = _peft_two("loha", 2, {})
    base = _Two()
    base.load_state_dict({k.replace("base_layer.", ""): v for k, v in model.state_dict().items()
                          if "hada_" not in k})
    w0 = {k: v.clone() for k, v in base.state_dict().items()}
    merged = lycoris.MergedNetwork(tensors, {"lora_unet_lin": base.lin, "lora_unet_conv": base.conv})
    x, img = torch.randn(3, 64), torch.randn(1, 16, 6, 6)
    merged.set_weight(1.0)
    with torch.no_grad():
        for got, want in zip(base(x, img), model(x, img)):
            assert torch.allclose(got, want, atol=1e-4)
    merged.set_weight(0.5)
    delta = model.lin.get_delta_weight("default")
    assert torch.allclose(base.lin.weight, w0["lin.weight"] + 0.5 * delta, atol=1e-5)
    merged.set_weight(0.0)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in w0.items())
    merged.set_weight(0.75)
    merged.remove()
    assert all(torch.equal(base.state_dict()[k], v) for k, v in w0.items())
    with pytest.raises(ValueError, match="not in the base model"):
        lycoris.MergedNetwork({"lora_unet_nope.hada_w1_a": torch.zeros(1)}, {"lora_unet_lin": base.lin})


def test_is_lycoris_reads_the_tensor_names():
    assert lycoris.is_lycoris(["lora_unet_a.hada_w1_a", "lora_unet_a.alpha"])
    assert lycoris.is_lycoris(["lora_te_b.lokr_w1", "lora_te_b.lokr_w2_a"])
    assert not lycoris.is_lycoris(["lora_unet_a.lora_down.weight", "lora_unet_a.dora_scale", "lora_unet_a.alpha"])


# -- a file on the tiny SD1.5, through evaluate's Taster -----------------------------------------------

def _outputs(pipe):
    """UNet noise prediction and text-encoder hidden states for fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
    ids = pipe.tokenizer(["bakery_girl, red dress"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.unet(x, 10, emb).sample, pipe.text_encoder(ids)[0]


@pytest.mark.parametrize("network_type", ["loha", "lokr"])
def test_file_applied_by_the_taster_reproduces_the_network(tiny, tmp_path, network_type):  # noqa: F811
    spec = K.NetworkSpec(network_type, dim=4, alpha=2, conv_dim=4, conv_alpha=1)
    trained, targets = _trained(tiny, spec)
    expected = _outputs(trained)
    path = tmp_path / "chara-000002.safetensors"
    tensors = _kohya_tensors(trained, targets, spec)
    K.save_kohya(path, tensors, _metadata(spec))

    taster = Taster(str(tiny), "sd15", device="cpu")
    base = _outputs(taster.pipe)
    taster.load_lora(path, "epoch2")
    # Every module of the file is applied, convs included.
    assert len(taster.merged.parts) == len(lycoris.by_module(tensors))
    assert any(m.weight.dim() == 4 and m.kernel_size == (3, 3) for m, _, _ in taster.merged.parts)
    taster.set_weight(1.0)
    got = _outputs(taster.pipe)
    for g, want, b in zip(got, expected, base):
        assert (g - b).abs().max() > 0.05  # the network changes the model
        assert (g - want).abs().max() < 0.01 * max(1.0, want.abs().max().item())  # = the trained network (fp16 file)
    taster.set_weight(0.0)
    assert all(torch.equal(g, b) for g, b in zip(_outputs(taster.pipe), base))  # weight 0 = the base model
    taster.set_weight(0.5)
    half = _outputs(taster.pipe)
    assert all(0 < (h - b).abs().max() < (g - b).abs().max() for h, g, b in zip(half, got, base))
    taster.unload_lora()
    assert all(torch.equal(g, b) for g, b in zip(_outputs(taster.pipe), base))


def test_sdxl_file_in_kohya_sgm_names_reproduces_the_network(tmp_path):
    """SDXL: the UNet named in kohya's sgm layout, two text encoders (`lora_te1_`/`lora_te2_`)."""
    from peft import get_peft_model_state_dict

    from tests.tiny_sdxl import build_tiny_sdxl

    folder = build_tiny_sdxl(tmp_path / "sdxl")
    spec = K.NetworkSpec("loha", dim=4, alpha=2, conv_dim=4, conv_alpha=1)
    trained = Taster(str(folder), "sdxl", device="cpu").pipe
    models = [("lora_unet", trained.unet, "unet"), ("lora_te1", trained.text_encoder, "te"),
              ("lora_te2", trained.text_encoder_2, "te")]
    tensors, gen = {}, torch.Generator().manual_seed(3)
    for prefix, model, kind in models:
        targets = K.find_targets(model, kind, spec, sgm=kind == "unet")
        model.add_adapter(K.peft_config(targets, spec))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "hada_" in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        tensors.update(K.peft_to_kohya(get_peft_model_state_dict(model), prefix, targets, spec))
    assert any(k.startswith("lora_unet_input_blocks_") for k in tensors) and any(k.startswith("lora_te2_") for k in tensors)
    path = tmp_path / "xl.safetensors"
    K.save_kohya(path, tensors, {})

    taster, base = check_sdxl_file(folder, path, trained, tensors, min_effect=0.05)
    taster.set_weight(0.0)
    assert all(torch.equal(g, b) for g, b in zip(sdxl_outputs(taster.pipe), base))


def sdxl_outputs(pipe):
    """The tiny SDXL's UNet prediction and both text encoders' hidden states for fixed inputs."""
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 64, generator=g)
    cond = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.randn(1, 6, generator=g)}
    ids = pipe.tokenizer(["bakery_girl"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return (pipe.unet(x, 10, emb, added_cond_kwargs=cond).sample, pipe.text_encoder(ids)[0],
                pipe.text_encoder_2(ids)[0])


def check_sdxl_file(folder, path, trained, tensors, min_effect):
    """The file applied by the Taster at weight 1 gives the trained pipeline's outputs; returns (taster, base)."""
    expected = sdxl_outputs(trained)
    taster = Taster(str(folder), "sdxl", device="cpu")
    base = sdxl_outputs(taster.pipe)
    taster.load_lora(path, "xl")
    assert len(taster.merged.parts) == len(lycoris.by_module(tensors))
    taster.set_weight(1.0)
    for g, want, b in zip(sdxl_outputs(taster.pipe), expected, base):
        assert (g - b).abs().max() > min_effect
        assert (g - want).abs().max() < 0.01 * max(1.0, want.abs().max().item())
    return taster, base
