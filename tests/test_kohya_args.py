"""Export parity (issue 25 item 5): every [train] key maps to an sd-scripts argument or says why not, and the
exported TOML files carry the recipe's values under names and in forms sd-scripts takes."""

from __future__ import annotations

import itertools
import os
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image

from bakery.craft.bake import data as bake_data
from bakery.craft.bake import kohya_args
from bakery.craft.bake import kohya_dataset as kohya
from bakery.craft.bake.optim import make_scheduler
from bakery.kohya_export import settings, train_values
from bakery.manifest import TrainImage, TrainSet
from bakery.recipe import parse_recipe
from bakery.recipe.bake import TrainParams
from storage import ContentStore
from tests import sd_scripts_schema

TRAIN_SECTIONS = ("model", "network", "optimizer", "training", "saving")


def test_every_train_key_is_mapped_or_says_why_not():
    fields, table = set(TrainParams.model_fields), set(kohya_args.TRAIN_ARGS)
    assert fields - table == set(), f"[train] keys with no entry in kohya_args.TRAIN_ARGS: {sorted(fields - table)}"
    assert table - fields == set(), f"entries for keys [train] does not have: {sorted(table - fields)}"
    for key, arg in kohya_args.TRAIN_ARGS.items():
        if isinstance(arg, str):
            assert len(arg) > 20, f"{key}: say why there is no sd-scripts argument"
        else:
            assert arg.place in (*TRAIN_SECTIONS, "dataset", "subset") and arg.names and arg.how, key


def test_every_name_the_table_writes_is_sd_scripts_own():
    """Names of train_network.toml against its parsers (train_network.py's, anima_train_network.py's: each
    export is checked against its own script's below); dataset/subset names against config_util's schema."""
    parser = {**sd_scripts_schema.train_arguments(), **sd_scripts_schema.train_arguments("anima_train_network.py")}
    subset = {**sd_scripts_schema.SUBSET_ASCENDABLE_SCHEMA, **sd_scripts_schema.DO_SUBSET_ASCENDABLE_SCHEMA}
    for key, arg in kohya_args.TRAIN_ARGS.items():
        if isinstance(arg, str):
            continue
        known = subset if arg.place == "subset" else (
            sd_scripts_schema.DATASET_ASCENDABLE_SCHEMA if arg.place == "dataset" else parser)
        assert set(arg.names) <= set(known), f"{key}: {sorted(set(arg.names) - set(known))} unknown to sd-scripts"
    fixed = {n for names in kohya_args.FIXED.values() for n in names}
    assert fixed <= set(parser) and {"dataset_config", "output_dir", "logging_dir", "training_comment"} <= set(parser)


def test_the_checker_refuses_what_sd_scripts_would_ignore():
    """The argument check can fail: a misspelt name, a bool for a number, a value off the choices."""
    assert sd_scripts_schema.argument_problems({"lr_scheduler_num_cycles": 2, "loss_type": "huber"}) == []
    problems = sd_scripts_schema.argument_problems({"num_cycles": 1, "huber_c": True, "loss_type": "l3",
                                                    "optimizer_args": "d_coef=2"})
    assert [p.split(":")[0] for p in problems] == ["num_cycles", "huber_c", "loss_type", "optimizer_args"]


# -- recipes through the real export ------------------------------------------------------------------
RECIPES = {
    "prodigy": ({"optimizer": "prodigy", "d_coef": 1.5, "weight_decay": 0.02}, {
        "optimizer_type": "Prodigy", "learning_rate": 1.0, "lr_scheduler": "cosine",
        "optimizer_args": ["decouple=True", "use_bias_correction=True", "safeguard_warmup=True", "weight_decay=0.02",
                           "d_coef=1.5"]}),
    "adamw_restarts": ({"optimizer": "adamw", "lr_restarts": 3, "lr_warmup_steps": 10, "unet_lr": 2e-4,
                        "text_encoder_lr": 5e-5}, {
        "optimizer_type": "AdamW", "learning_rate": 1e-4, "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 4, "lr_warmup_steps": 10, "unet_lr": 2e-4, "text_encoder_lr": 5e-5,
        "optimizer_args": ["weight_decay=0.01"]}),
    "came_rex": ({"optimizer": "came", "learning_rate": 1e-4}, {
        "optimizer_type": "came_pytorch.CAME", "lr_scheduler_type": kohya_args.REX_SCHEDULER}),
    "huber": ({"loss_type": "huber", "huber_schedule": "exponential", "huber_c": 0.2, "max_grad_norm": 0.5}, {
        "loss_type": "huber", "huber_schedule": "exponential", "huber_c": 0.2, "max_grad_norm": 0.5}),
    "unet_only": ({"train_text_encoder": False, "mixed_precision": "bf16", "save_precision": "fp32",
                   "gradient_checkpointing": False, "cache_latents": False}, {
        "network_train_unet_only": True, "mixed_precision": "bf16", "save_precision": "float"}),
    "ia3": ({"network_type": "ia3", "optimizer": "adamw", "learning_rate": 5e-3}, {
        "network_module": "lycoris.kohya", "network_args": ["algo=ia3", "preset=ia3"], "learning_rate": 5e-3}),
    "lokr": ({"network_type": "lokr", "network_dim": 16, "conv_dim": 8, "conv_alpha": 4.0, "noise_offset": 0.1,
              "multires_noise_iterations": 6, "multires_noise_discount": 0.4, "ip_noise_gamma": 0.1,
              "output_name": "mine"}, {
        "network_module": "lycoris.kohya", "network_args": ["algo=lokr", "conv_dim=8", "conv_alpha=4.0"],
        "network_dim": 16, "noise_offset": 0.1, "multires_noise_iterations": 6, "multires_noise_discount": 0.4,
        "ip_noise_gamma": 0.1, "output_name": "mine"}),
    "flip_and_captions": ({"flip_aug": True, "caption_dropout_rate": 0.1, "tag_dropout_rate": 0.05,
                           "token_warmup_min": 2, "token_warmup_step": 30, "keep_tokens": 3}, {}),
}
SUBSET_VALUES = {"flip_and_captions": {"flip_aug": True, "caption_dropout_rate": 0.1, "caption_tag_dropout_rate": 0.05,
                                       "token_warmup_min": 2, "token_warmup_step": 30, "keep_tokens": 3}}
NOT_WRITTEN = {"huber": ["lr_scheduler_num_cycles"], "unet_only": ["gradient_checkpointing", "cache_latents"],
               "prodigy": ["loss_type", "huber_c", "network_train_unet_only"], "came_rex": ["lr_scheduler"]}


def _export(tmp_path: Path, train: dict) -> tuple[dict, dict, kohya.TrainSettings, list[TrainImage], ContentStore]:
    store = ContentStore(tmp_path / "store")
    images = []
    for i, size in enumerate([(192, 320), (320, 192), (256, 256)]):
        Image.new("RGB", size, (i * 60, 90, 30)).save(tmp_path / f"p{i}.png")
        images.append(TrainImage("CharaA", f"p{i}", store.put_file(tmp_path / f"p{i}.png").sha256,
                                 "CharaA, smile, sitting", 3))
    recipe = parse_recipe({"project": {"name": "proj"}, "train": {"base_model": "x.safetensors", **train},
                           "buckets": {"resolution": 256, "min_side": 64, "max_side": 512, "step": 64}}, tmp_path)
    steps = 0
    if recipe.train.effective_lr_scheduler == "rex":
        from bakery.kohya_export import total_steps

        steps = total_steps(recipe, images, store)
    s = settings(recipe, ["CharaA"], False, steps)
    out = tmp_path / "out"
    kohya.export(out, images, store.path, s, {"CharaA": 1})
    cfg = tomllib.loads((out / "train_network.toml").read_text())
    flat = {k: v for section in cfg.values() for k, v in section.items()}
    checked = sd_scripts_schema.check_train_network(out / "dataset_config.toml", flat.get("masked_loss", False))
    return flat, checked, s, images, store


@pytest.mark.parametrize("name", RECIPES)
def test_the_export_carries_the_recipe_in_sd_scripts_terms(tmp_path: Path, name: str):
    train, want = RECIPES[name]
    flat, checked, _, _, _ = _export(tmp_path, train)
    assert sd_scripts_schema.argument_problems(flat) == []
    for key, value in want.items():
        assert flat.get(key) == value, f"{key}: {flat.get(key)!r}, the recipe says {value!r}"
    for key in NOT_WRITTEN.get(name, []):
        assert key not in flat, f"{key} written: {flat[key]!r}"
    (sub,) = checked["datasets"][0]["subsets"]
    for key, value in SUBSET_VALUES.get(name, {"keep_tokens": 1, "shuffle_caption": True}).items():
        assert sub[key] == value, key
    if name != "flip_and_captions":
        assert "flip_aug" not in sub and "caption_dropout_rate" not in sub
    assert checked["datasets"][0]["batch_size"] == TrainParams().batch_size


def test_rex_runs_over_the_bakes_steps(tmp_path: Path):
    """CAME + REX: pytorch-optimizer's REXScheduler over the bake's own step count, at the bake's rate."""
    flat, _, s, images, store = _export(tmp_path, {"optimizer": "came", "learning_rate": 2e-4, "lr_warmup_steps": 5})
    cfg = bake_data.DataConfig(256, 64, 512, 64, TrainParams().batch_size)
    per_epoch = bake_data.steps_per_epoch(bake_data.plan_samples(TrainSet(images, []), store.path, cfg), 1)
    assert per_epoch == 9  # three pictures, three repeats, three buckets, batch 1
    total = per_epoch * TrainParams().epochs
    assert flat["lr_scheduler_args"] == [f"total_steps={total}", "max_lr=0.0002"]
    assert "lr_warmup_steps" not in flat  # sd-scripts refuses warmup with a scheduler class: said instead
    lost = kohya_args.left_out(s.train, s.context(False, False))
    assert lost == ["REX: lr_warmup_steps 5 (sd-scripts takes no warmup with a scheduler class)",
                    "mixed_precision 'auto' (bf16 where the card has it): written as fp16, which every card runs"]
    text = (tmp_path / "out/train_network.toml").read_text()
    assert "# not as the recipe says: REX: lr_warmup_steps 5" in text


def test_cosine_with_restarts_cycles_are_the_bakes():
    """lr_scheduler_num_cycles = restarts + 1 gives the bake's own curve (both are diffusers' hard restarts)."""
    import torch
    from diffusers.optimization import (
        get_cosine_with_hard_restarts_schedule_with_warmup,
    )

    t = train_values(parse_recipe({"train": {"optimizer": "adamw", "lr_restarts": 2}}, Path(".")).train)
    args = kohya_args.arguments(t, kohya_args.Context("n", False, False, False), "optimizer")

    def curve(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        lrs = []
        for _ in range(60):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    ours = curve(lambda o: make_scheduler(o, "cosine_with_restarts", warmup=0, total=60, restarts=t["lr_restarts"]))
    theirs = curve(lambda o: get_cosine_with_hard_restarts_schedule_with_warmup(
        o, 0, 60, num_cycles=args["lr_scheduler_num_cycles"]))
    assert ours == pytest.approx(theirs) and sum(1 for a, b in itertools.pairwise(ours) if b > a) == 2  # two restarts


def test_the_bakes_text_encoder_and_unet_switches():
    t = train_values(parse_recipe({"train": {"train_unet": False}}, Path(".")).train)
    net = kohya_args.arguments(t, kohya_args.Context("n", False, False, False), "network")
    assert net["network_train_text_encoder_only"] is True and "network_train_unet_only" not in net
    t = train_values(parse_recipe({"train": {}}, Path(".")).train)
    style = kohya_args.arguments(t, kohya_args.Context("n", False, False, False, style_unet_only=True), "network")
    assert style["network_train_unet_only"] is True


def test_the_docs_show_the_codes_table():
    page = (Path(__file__).resolve().parent.parent / "docs" / "kohya.md").read_text(encoding="utf-8")
    assert kohya_args.markdown_table() in page, "docs/kohya.md: paste kohya_args.markdown_table() over its table"


# -- Anima: anima_train_network.py's own parser ---------------------------------------------------------
ANIMA = {"family": "anima", "base_model": "/models/anima-base.safetensors", "vae": "/models/qwen_image_vae.safetensors",
         "text_encoder": "/models/qwen_3_06b_base.safetensors", "shuffle_caption": False, "min_snr_gamma": 0}
SD_ONLY = ("clip_skip", "v2", "v_parameterization", "zero_terminal_snr", "min_snr_gamma", "noise_offset",
           "multires_noise_iterations", "multires_noise_discount")


def _flat(tmp_path: Path) -> dict:
    cfg = tomllib.loads((tmp_path / "out" / "train_network.toml").read_text())
    return {k: v for section in cfg.values() for k, v in section.items()}


def test_an_anima_recipe_exports_for_anima_train_network(tmp_path: Path):
    """The files, the timestep sampling and the caches, under anima_train_network.py's names; no SD-only key."""
    train = {**ANIMA, "llm_adapter": "/models/llm_adapter.safetensors", "t5_tokenizer": "/models/t5_tokenizer",
             "timestep_sampling": "shift", "discrete_flow_shift": 3.0, "sigmoid_scale": 1.3, "noise_offset": 0.05,
             "multires_noise_iterations": 4}
    flat, checked, s, _, _ = _export(tmp_path, train)
    assert sd_scripts_schema.argument_problems(flat, "anima_train_network.py") == []
    assert sd_scripts_schema.argument_problems(flat) != []  # train_network.py's parser has no qwen3
    assert {k: flat[k] for k in ("pretrained_model_name_or_path", "qwen3", "vae", "llm_adapter_path",
                                 "t5_tokenizer_path")} == {
        "pretrained_model_name_or_path": train["base_model"], "qwen3": train["text_encoder"], "vae": train["vae"],
        "llm_adapter_path": train["llm_adapter"], "t5_tokenizer_path": train["t5_tokenizer"]}
    assert (flat["timestep_sampling"], flat["discrete_flow_shift"], flat["sigmoid_scale"]) == ("shift", 3.0, 1.3)
    assert flat["network_module"] == "networks.lora_anima" and "network_args" not in flat
    assert flat["mixed_precision"] == "bf16" and flat["gradient_checkpointing"] and flat["cache_latents"]
    # Prodigy: UNet only (the family's rule), captions fixed: sd-scripts caches Qwen3's outputs and unloads it.
    assert flat["network_train_unet_only"] and flat["cache_text_encoder_outputs"]
    assert [k for k in SD_ONLY if k in flat] == []
    assert checked["datasets"][0]["bucket_reso_steps"] % 16 == 0  # AnimaNetworkTrainer.assert_extra_args
    head = (tmp_path / "out" / "dataset_config.toml").read_text().splitlines()[1]
    assert head.startswith("# train with: accelerate launch anima_train_network.py --config_file ")
    lost = kohya_args.left_out(s.train, s.context(False, False))
    assert lost == ["anima_train_network.py does not use: noise_offset 0.05, multires_noise_iterations 4"]


def test_an_anima_export_names_what_sd_scripts_still_needs(tmp_path: Path):
    """No VAE or Qwen3 in the recipe, shuffled captions: said in the TOML, not guessed."""
    train = {"family": "anima", "base_model": "circlestone-labs/Anima", "min_snr_gamma": 0}
    flat, _, s, _, _ = _export(tmp_path, train)
    assert "qwen3" not in flat and "vae" not in flat and "cache_text_encoder_outputs" not in flat
    text = (tmp_path / "out" / "train_network.toml").read_text()
    for line in ("base_model circlestone-labs/Anima: anima_train_network.py reads the DiT's single .safetensors file",
                 "vae unset: anima_train_network.py needs `vae` (the Qwen-Image VAE file)",
                 "text_encoder unset: anima_train_network.py needs `qwen3` (the Qwen3-0.6B folder or .safetensors "
                 "file)", "text-encoder outputs not cached"):
        assert f"# not as the recipe says: {line}" in text, line


@pytest.mark.parametrize("network", ["lokr", "loha", "locon", "dora"])
def test_anima_networks_wrap_the_layers_our_bake_wraps(tmp_path: Path, network: str):
    """LoRA/LoCon: networks.lora_anima (LoCon adds the embedders and final layer back: a DiT has no conv layers);
    the LyCORIS types: lycoris.kohya with a preset file of the same layers, no conv_dim."""
    flat, _, _, _, _ = _export(tmp_path, {**ANIMA, "network_type": network, "network_dim": 16})
    assert sd_scripts_schema.argument_problems(flat, "anima_train_network.py") == []
    preset = tmp_path / "out" / kohya_args.LYCORIS_PRESET
    if network == "locon":
        assert flat["network_module"] == "networks.lora_anima"
        assert flat["network_args"] == ["include_patterns=['.*(_embedder|final_layer).*']"] and not preset.exists()
        return
    algo = {"lokr": ["algo=lokr"], "loha": ["algo=loha"], "dora": ["algo=lora", "dora_wd=True"]}[network]
    assert flat["network_module"] == "lycoris.kohya" and flat["network_args"] == [*algo, f"preset={preset}"]
    layers = tomllib.loads(preset.read_text())
    assert layers["unet_target_module"] == (["Block"] if network == "dora" else
                                            ["Block", "PatchEmbed", "TimestepEmbedding", "FinalLayer"])
    assert layers["exclude_name"] == [r"blocks\.\d+\.adaln_modulation.*"]


@pytest.mark.skipif(not os.environ.get("BAKERY_SD_SCRIPTS"), reason="set BAKERY_SD_SCRIPTS to an sd-scripts checkout")
@pytest.mark.parametrize("network", ["lora", "locon", "lokr", "loha", "dora", "ia3", "dylora", "diag-oft"])
def test_sd_scripts_wraps_what_our_bake_wraps_on_anima(tmp_path: Path, network: str, monkeypatch):
    """The exported network arguments, given to sd-scripts' own networks.lora_anima / LyCORIS on sd-scripts' Anima
    built from the tiny DiT file, wrap the modules our bake wraps, under the same kohya names."""
    import importlib

    import lycoris.kohya

    from bakery.craft.bake.bases.anima import FAMILY, tiny
    from bakery.craft.bake.networks import kohya_lora as K

    monkeypatch.syspath_prepend(os.environ["BAKERY_SD_SCRIPTS"])
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    bake_anima = importlib.import_module("bake_anima")
    from library import anima_models, anima_utils, qwen_image_autoencoder_kl
    from networks import lora_anima

    files = tiny.write(tmp_path / "tiny")
    saved = anima_models.Anima, anima_models.LLMAdapter, qwen_image_autoencoder_kl.AutoencoderKLQwenImage
    bake_anima.shrink_sd_scripts(files)
    try:
        dit = anima_utils.load_anima_model("cpu", str(files.dit), "torch", False, "cpu", torch.float32)
    finally:
        anima_models.Anima, anima_models.LLMAdapter, qwen_image_autoencoder_kl.AutoencoderKLQwenImage = saved
    t = train_values(TrainParams.model_validate({**ANIMA, "network_type": network}))
    net = kohya_args.arguments(t, kohya_args.Context("n", False, False, False, architecture="anima",
                                                     folder=str(tmp_path)), "network")
    (tmp_path / kohya_args.LYCORIS_PRESET).write_text(kohya.to_toml(kohya_args.lycoris_preset(network)))
    kw = dict(a.split("=", 1) for a in net.get("network_args", []))
    module = lycoris.kohya if net["network_module"] == "lycoris.kohya" else lora_anima
    theirs = {m.lora_name for m in module.create_network(1.0, 4, 2.0, None, [], dit, **kw).unet_loras}
    spec = K.NetworkSpec(network, dim=4, alpha=2.0, conv_dim=4, conv_alpha=2.0)
    targets = FAMILY.targets(tiny.components()["transformer"], "unet", spec)
    ours = {"lora_unet_" + targets.renames.get(p, p).replace(".", "_") for p in targets.all}
    assert theirs == ours and len(ours) == (26 if network in kohya_args.CONV_NETWORKS else 20)


def test_an_anima_file_with_architecture_auto_exports_for_anima(tmp_path: Path):
    """train.architecture "auto" and an Anima DiT file (bases/checkpoint.py tells it apart): the Anima script."""
    from bakery.craft.bake.bases.anima import tiny

    files = tiny.write(tmp_path / "tiny")
    flat, _, _, _, _ = _export(tmp_path, {"base_model": str(files.dit), "vae": str(files.vae), "min_snr_gamma": 0,
                                          "text_encoder": str(files.text_encoder)})
    assert sd_scripts_schema.argument_problems(flat, "anima_train_network.py") == []
    assert flat["network_module"] == "networks.lora_anima" and "clip_skip" not in flat
    assert "anima_train_network.py" in (tmp_path / "out" / "dataset_config.toml").read_text()
