"""kohya/A1111 LoRA files from peft networks: names, alphas, metadata, and diffusers loading them."""

from __future__ import annotations

import json

import pytest
import torch

from bakery.craft.bake.networks import kohya_lora as K

TRIGGER = "bakery_girl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bakery.testmodels.tiny_sd15 import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("tiny") / "sd15", words=[TRIGGER])


def _pipe(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe):
    return pipe(TRIGGER, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(1)).images


def _trained(folder, spec, with_te=True):
    """A pipeline with a peft network whose weights are not the identity (as after training)."""
    pipe = _pipe(folder)
    targets = {"unet": K.find_targets(pipe.unet, "unet", spec)}
    pipe.unet.add_adapter(K.peft_config(targets["unet"], spec))
    if with_te:
        targets["te"] = K.find_targets(pipe.text_encoder, "te", spec)
        pipe.text_encoder.add_adapter(K.peft_config(targets["te"], spec))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for model in (pipe.unet, pipe.text_encoder):
            for name, p in model.named_parameters():
                if any(s in name for s in ("lora_", "hada_", "lokr_")):
                    p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return pipe, targets


def _kohya_tensors(pipe, targets, spec):
    from peft import get_peft_model_state_dict

    out = K.peft_to_kohya(get_peft_model_state_dict(pipe.unet), "lora_unet", targets["unet"], spec)
    if "te" in targets:
        out.update(K.peft_to_kohya(get_peft_model_state_dict(pipe.text_encoder), "lora_te", targets["te"], spec))
    return out


def _metadata(spec):
    return K.build_metadata(
        spec=spec, architecture="sd15", output_name="chara", triggers=[TRIGGER], resolution=64, epoch=2,
        num_epochs=4, steps=20, learning_rate=1e-4, unet_lr=1e-4, text_encoder_lr=5e-5, optimizer="AdamW",
        seed=42, clip_skip=2, base_model="tiny",
        tag_freq=K.tag_frequency([("5_chara", f"{TRIGGER}, red_dress"), ("5_chara", f"{TRIGGER} ||| smile")]),
        dataset_dirs={"5_chara": {"n_repeats": 5, "img_count": 2}}, num_train_images=10,
    )


def test_layer_choice_is_kohyas(tiny):
    pipe = _pipe(tiny)
    lora = K.find_targets(pipe.unet, "unet", K.NetworkSpec("lora"))
    assert not lora.conv and all(".attentions." in n for n in lora.linear)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in lora.linear
    assert "down_blocks.0.attentions.0.proj_in" in lora.linear  # 1x1 conv counts as linear
    locon = K.find_targets(pipe.unet, "unet", K.NetworkSpec("locon"))
    assert "down_blocks.0.resnets.0.conv1" in locon.conv and "down_blocks.0.resnets.0.time_emb_proj" in locon.linear
    te = K.find_targets(pipe.text_encoder, "te", K.NetworkSpec("lora"))
    assert {n.rsplit(".", 1)[1] for n in te.linear} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


@pytest.mark.parametrize("network_type", ["lora", "locon"])
def test_file_loads_in_diffusers_and_reproduces_the_network(tiny, tmp_path, network_type):
    spec = K.NetworkSpec(network_type, dim=4, alpha=2, conv_dim=4, conv_alpha=1)
    trained, targets = _trained(tiny, spec)
    expected = _render(trained)
    tensors = _kohya_tensors(trained, targets, spec)
    path = tmp_path / "chara-000002.safetensors"
    K.save_kohya(path, tensors, _metadata(spec))

    saved, meta = K.read_kohya(path)
    names = {k.split(".")[0] for k in saved}
    # The literal names A1111/ComfyUI read: kohya prefixes, `.alpha` = the training alpha (not the rank).
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert all(n.startswith(("lora_unet_", "lora_te_")) for n in names)
    for n in names:
        assert {f"{n}.lora_down.weight", f"{n}.lora_up.weight", f"{n}.alpha"} <= set(saved)
        down = saved[f"{n}.lora_down.weight"]
        is_conv = n in {K.module_key("lora_unet", p) for p in targets["unet"].conv}
        assert saved[f"{n}.alpha"].item() == (1.0 if is_conv else 2.0)
        assert down.shape[0] == 4 and down.dtype == torch.float16
    if network_type == "locon":
        assert saved["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[-2:] == (3, 3)
        assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1"}
    # Metadata users' tools read.
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2" and meta["ss_base_model_version"] == "sd_v1"
    assert json.loads(meta["ss_tag_frequency"]) == {"5_chara": {TRIGGER: 2, "red_dress": 1, "smile": 1}}
    assert TRIGGER in meta["ss_training_comment"] and meta["modelspec.trigger_phrase"] == TRIGGER
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["ss_output_name"] == "chara"
    assert meta["sshs_model_hash"] == K.safetensors_hashes(saved, meta)[0]

    fresh = _pipe(tiny)
    base = _render(fresh)
    fresh.load_lora_weights(str(path), adapter_name="chara")
    from peft import get_peft_model_state_dict

    loaded = {**get_peft_model_state_dict(fresh.unet, adapter_name="chara"),
              **get_peft_model_state_dict(fresh.text_encoder, adapter_name="chara")}
    # Every key consumed: each module of the file became a peft module with its two matrices.
    assert len([k for k in loaded if "lora_A" in k]) == len(names)
    got = _render(fresh)
    assert abs(got - base).max() > 0.05  # the LoRA changes the image
    assert abs(got - expected).max() < 0.01  # weight 1.0 = the trained network (fp16 file)


@pytest.mark.parametrize("network_type", ["dora", "loha", "lokr"])
def test_lycoris_names_round_trip(tiny, tmp_path, network_type):
    """diffusers drops DoRA scales and does not read LoHa/LoKr: the file is checked by loading it back
    into the same peft network, and by its LyCORIS names (what ComfyUI/A1111 read)."""
    from peft import set_peft_model_state_dict

    spec = K.NetworkSpec(network_type, dim=4, alpha=2, conv_dim=4, conv_alpha=1)
    trained, targets = _trained(tiny, spec, with_te=False)
    path = tmp_path / "x.safetensors"
    K.save_kohya(path, _kohya_tensors(trained, targets, spec), _metadata(spec))
    saved, meta = K.read_kohya(path)
    suffixes = {k.split(".", 1)[1] for k in saved}
    expected = {
        "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"},
        "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
        "lokr": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    }[network_type]
    assert expected <= suffixes
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == ("lora" if network_type == "dora" else network_type)
    if network_type == "dora":
        assert saved["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale"].shape == (32, 1)
    if network_type == "lokr":
        # Where both Kronecker factors are full, readers apply no alpha/dim: the file holds w1 (x) (alpha/r * w2),
        # the very delta peft trained.
        from peft import get_peft_model_state_dict

        full = [k[: -len(".lokr_w2")] for k in saved if k.endswith(".lokr_w2") and k.replace("w2", "w1") in saved]
        assert full
        peft_sd = get_peft_model_state_dict(trained.unet)
        paths = {K.module_key("lora_unet", p): p for p in targets["unet"].all}
        name = full[0]
        w1, w2 = peft_sd[f"{paths[name]}.lokr_w1"], peft_sd[f"{paths[name]}.lokr_w2"]
        rank = 4
        alpha = saved[f"{name}.alpha"].item()
        want = torch.kron(w1, w2) * alpha / rank
        got_delta = torch.kron(saved[f"{name}.lokr_w1"].float(), saved[f"{name}.lokr_w2"].float())
        assert torch.allclose(got_delta, want.float(), atol=2e-3)

    fresh = _pipe(tiny)
    fresh.unet.add_adapter(K.peft_config(targets["unet"], spec))
    result = set_peft_model_state_dict(fresh.unet, K.kohya_to_peft(saved, "lora_unet", targets["unet"], spec))
    assert not result.unexpected_keys
    x, t, emb = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), 10, torch.randn(1, 77, 32)
    with torch.no_grad():
        want, got = trained.unet(x, t, emb).sample, fresh.unet(x, t, emb).sample
    assert (want - got).abs().max() < 5e-3


def test_sdxl_unet_names_are_kohyas_sgm_layout():
    up_attention = [True, True, False]  # SDXL: CrossAttnUpBlock2D x2, UpBlock2D
    names = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.2.attentions.1.proj_in": "input_blocks.8.1.proj_in",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.resnets.0.conv1": "input_blocks.4.0.in_layers.2",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "mid_block.attentions.0.transformer_blocks.9.ff.net.2": "middle_block.1.transformer_blocks.9.ff.net.2",
        "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
        "up_blocks.0.attentions.2.proj_out": "output_blocks.2.1.proj_out",
        "up_blocks.1.resnets.2.conv2": "output_blocks.5.0.out_layers.3",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
    }
    for path, sgm in names.items():
        assert K.sgm_unet_path(path, 2, up_attention) == sgm


def test_the_same_weights_and_metadata_give_the_same_file_bytes(tmp_path):
    """safetensors writes its metadata in a different order on every save; save_kohya sorts the header."""
    import torch

    tensors = {f"lora_unet_block_{i}.lora_down.weight": torch.full((4, 8), float(i)) for i in range(6)}
    meta = {f"ss_key_{i}": str(i) for i in range(40)}
    files = [tmp_path / f"{n}.safetensors" for n in range(4)]
    for f in files:
        K.save_kohya(f, tensors, meta)
    assert len({f.read_bytes() for f in files}) == 1
    back, got = K.read_kohya(files[0])
    assert got.items() >= meta.items() and set(back) == set(tensors)
    assert all(torch.equal(back[k], tensors[k].half()) for k in tensors)
    size = int.from_bytes(files[0].read_bytes()[:8], "little")
    assert size % 8 == 0
