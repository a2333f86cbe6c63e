"""Every [train] key of the recipe and the kohya sd-scripts argument it becomes, or why it has none: TRAIN_ARGS.

`bakery export-kohya` writes its two TOML files from this table alone, so the exported run trains what our
bake trains; tests/test_kohya_args.py fails when a key of `TrainParams` has no entry, and checks every name
written against sd-scripts' own argument parser (tests/sd_scripts_args.json).

An entry is an `Arg` (where it goes, the sd-scripts names it may write, how) or a string: why there is no
argument. Places: a section of train_network.toml (`--config_file`; sd-scripts flattens the sections), or
"dataset" / "subset" of dataset_config.toml (`--dataset_config`: a training subset's keys, one per folder).
The architecture picks the script (`SCRIPTS`): train_network.py (SD1.5), sdxl_train_network.py, or
anima_train_network.py, a rectified-flow script whose parser (tests/sd_scripts_anima_args.json) takes the model
files apart (`qwen3`, `vae`, `llm_adapter_path`, `t5_tokenizer_path`) and the timestep sampling, and does
without the SD-only keys (clip skip, v-prediction: sd-scripts' docs/anima_train_network.md §4.1; min-SNR,
noise offset: its AnimaNetworkTrainer draws plain noise and weights no loss by SNR).
`write` gets the [train] values as `TrainParams.model_dump()` gives them, with `learning_rate` and
`lr_scheduler` resolved to what the bake uses, and the export's `Context`; it returns the arguments
(nothing when the value is sd-scripts' default or off). `lost` says what of a value sd-scripts cannot take.
No Prefect, no catalog, no recipe import: plain values in, plain values out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Train = Mapping[str, Any]

# Our network types -> sd-scripts network module and its fixed network_args (conv_dim/conv_alpha: CONV_NETWORKS).
NETWORKS: dict[str, tuple[str, list[str]]] = {
    "lora": ("networks.lora", []),
    "locon": ("networks.lora", []),  # kohya's LoRA-C3Lier: networks.lora with conv_dim
    "dora": ("lycoris.kohya", ["algo=lora", "dora_wd=True"]),
    "loha": ("lycoris.kohya", ["algo=loha"]),
    "lokr": ("lycoris.kohya", ["algo=lokr"]),
    # LyCORIS's own modules, on the layers our bake wraps (lycoris_net): ia3's preset, LoRA's layers (attn-mlp).
    "ia3": ("lycoris.kohya", ["algo=ia3", "preset=ia3"]),
    "dylora": ("lycoris.kohya", ["algo=dylora", "block_size=4", "preset=attn-mlp"]),
    "diag-oft": ("lycoris.kohya", ["algo=diag-oft", "preset=attn-mlp"]),
}
CONV_NETWORKS = ("locon", "loha", "lokr")  # the types our bake gives conv layers (conv_dim / conv_alpha)
# anima_train_network.py, on the layers our bake wraps (bases/anima/network.py): each block's attention and MLP,
# sd-scripts' networks.lora_anima default; the LoCon-style types (CONV_NETWORKS: a DiT has no conv layers) add the
# patch and timestep embedders and the final layer, which lora_anima's default exclude pattern leaves out.
ANIMA_LOCON_INCLUDE = "include_patterns=['.*(_embedder|final_layer).*']"
# The LyCORIS types go through lycoris.kohya with a preset file written beside the configs (LYCORIS_PRESET):
# LyCORIS's own presets for Anima wrap every Linear of a block, its adaLN modulation too.
LYCORIS_PRESET = "lycoris_preset.toml"
ANIMA_NETWORKS: dict[str, tuple[str, list[str]]] = {
    **{k: (m, [a for a in args if not a.startswith("preset=")]) for k, (m, args) in NETWORKS.items()
       if m == "lycoris.kohya"},
    "lora": ("networks.lora_anima", []),
    "locon": ("networks.lora_anima", [ANIMA_LOCON_INCLUDE]),
}


def lycoris_preset(network_type: str) -> dict[str, Any]:
    """LyCORIS's preset (lycoris/config_sdk.py PresetConfig) for our layers on sd-scripts' Anima model classes."""
    extra = ["PatchEmbed", "TimestepEmbedding", "FinalLayer"] if network_type in CONV_NETWORKS else []
    return {"enable_conv": False, "unet_target_module": ["Block", *extra], "unet_target_name": [],
            "text_encoder_target_module": ["Qwen3Attention", "Qwen3MLP"], "text_encoder_target_name": [],
            "exclude_name": [r"blocks\.\d+\.adaln_modulation.*"]}
# Our optimizers -> sd-scripts optimizer_type and the fixed optimizer_args our bake passes (optim.make_optimizer).
OPTIMIZERS: dict[str, tuple[str, list[str]]] = {
    "prodigy": ("Prodigy", ["decouple=True", "use_bias_correction=True", "safeguard_warmup=True"]),
    "adamw": ("AdamW", []),
    "adamw8bit": ("AdamW8bit", []),
    "came": ("came_pytorch.CAME", []),  # betas and eps: came_pytorch's defaults, as our bake passes them
}
# REX (Chen et al.): sd-scripts has none of its own; pytorch-optimizer (an sd-scripts requirement) has it.
REX_SCHEDULER = "pytorch_optimizer.lr_scheduler.rex.REXScheduler"
SAVE_PRECISION = {"fp16": "fp16", "bf16": "bf16", "fp32": "float"}


@dataclass(frozen=True)
class Script:
    """One sd-scripts training script: its file and the network modules it trains ours with."""

    file: str
    networks: dict[str, tuple[str, list[str]]]
    flow: bool = False  # rectified flow: no clip skip, v-prediction, min-SNR, noise offset; timestep sampling


SCRIPTS = {"sd15": Script("train_network.py", NETWORKS), "sdxl": Script("sdxl_train_network.py", NETWORKS),
           "anima": Script("anima_train_network.py", ANIMA_NETWORKS, flow=True)}


@dataclass(frozen=True)
class Context:
    """What the export knows beside [train]."""

    name: str  # output name
    sdxl: bool
    masked: bool  # some picture has a mask and train.masked_loss is on
    has_reg: bool
    style_unet_only: bool = False  # a style_no_tags concept: UNet only (rules.md §10)
    v_parameterization: bool = False  # resolved from the recipe and the base model
    zero_terminal_snr: bool = False
    total_steps: int = 0  # the bake's optimizer steps (epochs x batches per epoch); REX needs it
    head: int = 0  # a subset's triggers (and prefix tags): kept at the caption's head
    architecture: str = ""  # a name in SCRIPTS; "": sd15, or sdxl when `sdxl`
    folder: str = "."  # where the export writes (a flow script's LyCORIS preset file)

    @property
    def script(self) -> Script:
        return SCRIPTS[self.architecture or ("sdxl" if self.sdxl else "sd15")]


@dataclass(frozen=True)
class Arg:
    place: str  # "model" | "network" | "optimizer" | "training" | "saving" | "dataset" | "subset"
    names: tuple[str, ...]  # every sd-scripts argument `write` may give
    write: Callable[[Train, Context], dict[str, Any]]
    how: str  # for docs/kohya.md
    lost: Callable[[Train, Context], str | None] | None = None


def same(name: str, place: str, skip: Any = None, how: str = "same name") -> Arg:
    """The key under its own name; left out when it equals `skip` (sd-scripts' default or off)."""
    return Arg(place, (name,), lambda t, c: {} if t[name] == skip else {name: t[name]}, how)


def renamed(key: str, name: str, place: str, skip: Any = None) -> Arg:
    return Arg(place, (name,), lambda t, c: {} if t[key] == skip else {name: t[key]}, f"`{name}`")


def _when(cond: bool, args: dict[str, Any]) -> dict[str, Any]:
    return args if cond else {}


def _scheduler(t: Train, c: Context) -> dict[str, Any]:
    name = t["lr_scheduler"]
    if name == "rex":  # an absolute lr over total_steps, as our REX (optim.rex_factor) multiplies the base rate
        return {"lr_scheduler_type": REX_SCHEDULER,
                "lr_scheduler_args": [f"total_steps={c.total_steps}", f"max_lr={t['unet_lr'] or t['learning_rate']}"]}
    if name == "constant" and t["lr_warmup_steps"]:
        return {"lr_scheduler": "constant_with_warmup"}  # sd-scripts refuses warmup steps with "constant"
    return {"lr_scheduler": name}


def _rex_lost(t: Train, c: Context) -> str | None:
    if t["lr_scheduler"] != "rex":
        return None
    lost = []
    if t["lr_warmup_steps"]:
        lost.append(f"lr_warmup_steps {t['lr_warmup_steps']} (sd-scripts takes no warmup with a scheduler class)")
    rates = {t["unet_lr"] or t["learning_rate"], t["text_encoder_lr"] or t["learning_rate"]}
    if t["train_text_encoder"] and t["train_unet"] and len(rates) > 1:
        lost.append("the text encoder's own learning rate (REXScheduler sets one rate for every group)")
    if not c.total_steps:
        lost.append("total_steps is unknown: set it in lr_scheduler_args")
    return "REX: " + "; ".join(lost) if lost else None


def _network_module(t: Train, c: Context) -> dict[str, Any]:
    module, args = c.script.networks[t["network_type"]]
    if c.script.flow and module == "lycoris.kohya":
        args = [*args, f"preset={c.folder.rstrip('/')}/{LYCORIS_PRESET}"]
    return {"network_module": module, **_when(bool(args), {"network_args": list(args)})}


def _conv(key: str) -> Callable[[Train, Context], dict[str, Any]]:
    """conv_dim= / conv_alpha= for the networks our bake gives conv layers (a DiT has none)."""
    return lambda t, c: _when(t["network_type"] in CONV_NETWORKS and not c.script.flow,
                              {"network_args": [f"{key}={t[key]}"]})


def _sd_only(written: Callable[[Train, Context], dict[str, Any]]) -> Callable[[Train, Context], dict[str, Any]]:
    """An SD-only argument: nothing for a rectified-flow script (it ignores it)."""
    return lambda t, c: {} if c.script.flow else written(t, c)


def _sd_same(name: str) -> Arg:
    """An SD-only key under its own name, left out when 0."""
    return Arg("training", (name,), _sd_only(lambda t, c: _when(bool(t[name]), {name: t[name]})),
               "same name (left out when 0; not Anima)")


def _flow_only(name: str) -> Arg:
    """A rectified-flow key under its own name, for a flow script only (always written: it is in the metadata)."""
    return Arg("training", (name,), lambda t, c: _when(c.script.flow, {name: t[name]}), "same name (Anima)")


def _flow_ignores(t: Train, c: Context) -> str | None:
    """What an SD key asks that a rectified-flow script does not do (AnimaNetworkTrainer: plain noise, no SNR)."""
    if not c.script.flow:
        return None
    asked = [f"{k} {t[k]}" for k in ("min_snr_gamma", "noise_offset", "multires_noise_iterations") if t[k]]
    asked += [f"{k} true" for k in ("v_parameterization", "zero_terminal_snr") if t[k]]
    if t["loss_type"] != "l2" and t["huber_schedule"] == "snr":
        asked.append("huber_schedule snr (sd-scripts refuses it without an SNR schedule: use exponential)")
    return f"{c.script.file} does not use: " + ", ".join(asked) if asked else None


def _path(key: str, name: str, needed: str = "") -> Arg:
    """A model file a flow script takes apart from the base (`needed`: what it is, when the script needs it)."""
    def lost(t: Train, c: Context) -> str | None:
        return (f"{key} unset: {c.script.file} needs `{name}` ({needed})"
                if needed and c.script.flow and not t[key] else None)
    return Arg("model", (name,), lambda t, c: _when(c.script.flow and bool(t[key]), {name: t[key]}),
               f"`{name}` (Anima" + (f": {needed})" if needed else ")"), lost)


def _optimizer(t: Train, c: Context) -> dict[str, Any]:
    kind, args = OPTIMIZERS[t["optimizer"]]
    return {"optimizer_type": kind, **_when(bool(args), {"optimizer_args": list(args)})}


def _mixed_precision(t: Train, c: Context) -> dict[str, Any]:
    auto = "bf16" if c.script.flow else "fp16"  # Anima trains in bf16 (sd-scripts' Anima guide)
    return {"mixed_precision": auto if t["mixed_precision"] == "auto" else t["mixed_precision"]}


def _keep_tokens(t: Train, c: Context) -> dict[str, Any]:
    return {"keep_tokens": max(c.head, t["keep_tokens"])}


def _base_model(t: Train, c: Context) -> dict[str, Any]:
    model = t["base_model"]
    return {} if model in (None, "tiny") else {"pretrained_model_name_or_path": model}


def _base_lost(t: Train, c: Context) -> str | None:
    model = t["base_model"]
    if model == "tiny":
        return "base_model 'tiny' is our random-weight test model: set pretrained_model_name_or_path"
    if c.script.flow and model and not str(model).endswith(".safetensors"):
        return f"base_model {model}: {c.script.file} reads the DiT's single .safetensors file"
    return None


def _vae_lost(t: Train, c: Context) -> str | None:
    return f"vae unset: {c.script.file} needs `vae` (the Qwen-Image VAE file)" \
        if c.script.flow and not t["vae"] else None


def _auto_precision_lost(t: Train, c: Context) -> str | None:
    return "mixed_precision 'auto' (bf16 where the card has it): written as fp16, which every card runs" \
        if t["mixed_precision"] == "auto" and not c.script.flow else None


def _unet_only(t: Train, c: Context) -> dict[str, Any]:
    return _when(not t["train_text_encoder"] or c.style_unet_only, {"network_train_unet_only": True})


def _fixed_captions(t: Train) -> bool:
    """Captions the same every epoch: what sd-scripts caches text-encoder outputs for (caption dropout aside)."""
    return not t["shuffle_caption"] and not t["token_warmup_step"] and not t["tag_dropout_rate"]


def _text_encoder_side(t: Train, c: Context) -> dict[str, Any]:
    """UNet only; a flow script also caches the text encoder's outputs then, when it can (its assert_extra_args)."""
    out = _unet_only(t, c)
    return {**out, **_when(c.script.flow and bool(out) and _fixed_captions(t), {"cache_text_encoder_outputs": True})}


def _uncached_text(t: Train, c: Context) -> str | None:
    if c.script.flow and _unet_only(t, c) and not _fixed_captions(t):
        return ("text-encoder outputs not cached: sd-scripts caches them only for fixed captions (no "
                "shuffle_caption, token_warmup_step or tag_dropout_rate), so Qwen3 stays loaded")
    return None


HOW_SCHEDULER = ("`lr_scheduler` (cosine, cosine_with_restarts; constant, or constant_with_warmup with warmup "
                 "steps); rex: `lr_scheduler_type = \"" + REX_SCHEDULER + "\"` with `lr_scheduler_args` "
                 "total_steps (the bake's step count) and max_lr (REXScheduler starts "
                 "at lr 0 for its first step, then follows the bake's curve)")

TRAIN_ARGS: dict[str, Arg | str] = {
    "profile": "a preset of other [train] keys, already in them when the recipe loads",
    "family": "fills other keys when the recipe loads (architecture, clip_skip, buckets, ...): exported through them",
    "base_model": Arg("model", ("pretrained_model_name_or_path",), _base_model,
                      "`pretrained_model_name_or_path` (not for \"tiny\", our test model; Anima: the DiT file)",
                      _base_lost),
    "vae": Arg("model", ("vae",), lambda t, c: _when(t["vae"] is not None, {"vae": t["vae"]}),
               "same name (Anima: the Qwen-Image VAE file, needed)", _vae_lost),
    "architecture": "picks the script, not an argument: sdxl_train_network.py for SDXL, anima_train_network.py "
                    "for Anima (the TOML's first comment)",
    "text_encoder": _path("text_encoder", "qwen3", "the Qwen3-0.6B folder or .safetensors file"),
    "llm_adapter": _path("llm_adapter", "llm_adapter_path"),
    "t5_tokenizer": _path("t5_tokenizer", "t5_tokenizer_path"),
    "timestep_sampling": _flow_only("timestep_sampling"),
    "discrete_flow_shift": _flow_only("discrete_flow_shift"),
    "sigmoid_scale": _flow_only("sigmoid_scale"),
    "output_name": Arg("saving", ("output_name",), lambda t, c: {"output_name": c.name},
                       "`output_name` (unset: project.name)"),
    "clip_skip": Arg("model", ("clip_skip",), _sd_only(lambda t, c: _when(not c.sdxl, {"clip_skip": t["clip_skip"]})),
                     "`clip_skip` (SD1.5; SDXL trains on the penultimate layer whatever it says; not Anima)"),
    "v_parameterization": Arg("model", ("v_parameterization",),
                              _sd_only(lambda t, c: _when(c.v_parameterization, {"v_parameterization": True})),
                              "`v_parameterization` (unset: as the base model says; not Anima)"),
    "zero_terminal_snr": Arg("training", ("zero_terminal_snr",),
                             _sd_only(lambda t, c: _when(c.zero_terminal_snr, {"zero_terminal_snr": True})),
                             "`zero_terminal_snr` (unset: as the base model says; not Anima)"),
    "network_type": Arg("network", ("network_module", "network_args"), _network_module,
                        "`network_module`: networks.lora (lora, locon) or lycoris.kohya with `algo=` in `network_args`; "
                        "Anima: networks.lora_anima (locon: + `include_patterns` of the embedders and final layer), "
                        "lycoris.kohya with `preset=` " + LYCORIS_PRESET),
    "network_dim": same("network_dim", "network"),
    "network_alpha": same("network_alpha", "network"),
    "conv_dim": Arg("network", ("network_args",), _conv("conv_dim"), "`network_args` conv_dim= (locon, loha, lokr; "
                    "not Anima: a DiT has no conv layers)"),
    "conv_alpha": Arg("network", ("network_args",), _conv("conv_alpha"), "`network_args` conv_alpha= (locon, loha, "
                      "lokr; not Anima)"),
    "train_unet": Arg("network", ("network_train_text_encoder_only",),
                      lambda t, c: _when(not t["train_unet"], {"network_train_text_encoder_only": True}),
                      "false: `network_train_text_encoder_only = true`"),
    "train_text_encoder": Arg("network", ("network_train_unet_only", "cache_text_encoder_outputs"),
                              _text_encoder_side, "false (or a style_no_tags concept): `network_train_unet_only = "
                              "true`; Anima: also `cache_text_encoder_outputs` when the captions are fixed",
                              _uncached_text),
    "epochs": renamed("epochs", "max_train_epochs", "training"),
    "batch_size": same("batch_size", "dataset", how="dataset `batch_size`"),
    "optimizer": Arg("optimizer", ("optimizer_type", "optimizer_args"), _optimizer,
                     "`optimizer_type` Prodigy (+ decouple, use_bias_correction, safeguard_warmup), AdamW, AdamW8bit, "
                     "came_pytorch.CAME"),
    "learning_rate": same("learning_rate", "optimizer", how="`learning_rate` (the optimizer's default when unset)"),
    "lr_batch_scaling": "applied before export: `learning_rate`, `unet_lr` and `text_encoder_lr` are written scaled "
                        "for the batch size (x1.2 per doubling, rules.md §12), as the bake trains them",
    "unet_lr": same("unet_lr", "optimizer"),
    "text_encoder_lr": same("text_encoder_lr", "optimizer"),
    "weight_decay": Arg("optimizer", ("optimizer_args",),
                        lambda t, c: {"optimizer_args": [f"weight_decay={t['weight_decay']}"]},
                        "`optimizer_args` weight_decay="),
    "d_coef": Arg("optimizer", ("optimizer_args",),
                  lambda t, c: _when(t["optimizer"] == "prodigy", {"optimizer_args": [f"d_coef={t['d_coef']}"]}),
                  "`optimizer_args` d_coef= (Prodigy)"),
    "lr_scheduler": Arg("optimizer", ("lr_scheduler", "lr_scheduler_type", "lr_scheduler_args"), _scheduler,
                        HOW_SCHEDULER, _rex_lost),
    "lr_restarts": Arg("optimizer", ("lr_scheduler_num_cycles",), lambda t, c: _when(
        t["lr_scheduler"] == "cosine_with_restarts", {"lr_scheduler_num_cycles": t["lr_restarts"] + 1}),
        "`lr_scheduler_num_cycles` = restarts + 1 (cosine_with_restarts: cycles, not restarts)"),
    "lr_warmup_steps": Arg("optimizer", ("lr_warmup_steps",), lambda t, c: _when(
        bool(t["lr_warmup_steps"]) and t["lr_scheduler"] != "rex", {"lr_warmup_steps": t["lr_warmup_steps"]}),
        "`lr_warmup_steps` (not with rex)"),
    "max_grad_norm": same("max_grad_norm", "optimizer", skip=1.0),
    "loss_type": same("loss_type", "training", skip="l2"),
    "huber_schedule": Arg("training", ("huber_schedule",), lambda t, c: _when(
        t["loss_type"] != "l2", {"huber_schedule": t["huber_schedule"]}), "`huber_schedule` (huber, smooth_l1)"),
    "huber_c": Arg("training", ("huber_c",), lambda t, c: _when(t["loss_type"] != "l2", {"huber_c": t["huber_c"]}),
                   "`huber_c` (huber, smooth_l1)"),
    "min_snr_gamma": Arg("training", ("min_snr_gamma",), _sd_same("min_snr_gamma").write,
                         "same name (left out when 0; not Anima, which weights no loss by SNR)", _flow_ignores),
    "noise_offset": _sd_same("noise_offset"),
    "multires_noise_iterations": _sd_same("multires_noise_iterations"),
    "multires_noise_discount": Arg("training", ("multires_noise_discount",), _sd_only(lambda t, c: _when(
        bool(t["multires_noise_iterations"]), {"multires_noise_discount": t["multires_noise_discount"]})),
        "same name (with multires noise; not Anima)"),
    "ip_noise_gamma": same("ip_noise_gamma", "training", skip=0, how="same name (left out when 0)"),
    "masked_loss": Arg("training", ("masked_loss",), lambda t, c: {"masked_loss": c.masked},
                       "`masked_loss` + each PNG's alpha = its mask, subset `alpha_mask` (when a picture has one)"),
    "prior_loss_weight": Arg("training", ("prior_loss_weight",), lambda t, c: _when(
        c.has_reg, {"prior_loss_weight": t["prior_loss_weight"]}), "same name (with regularisation images)"),
    "keep_tokens": Arg("subset", ("keep_tokens",), _keep_tokens,
                       "subset `keep_tokens`: the folder's triggers (at least train.keep_tokens); "
                       "`keep_tokens_separator` with captions.keep_tokens_separator"),
    "shuffle_caption": same("shuffle_caption", "subset", skip=False, how="subset `shuffle_caption`"),
    "caption_dropout_rate": same("caption_dropout_rate", "subset", skip=0, how="subset `caption_dropout_rate`"),
    "tag_dropout_rate": renamed("tag_dropout_rate", "caption_tag_dropout_rate", "subset", skip=0),
    "token_warmup_min": same("token_warmup_min", "subset", skip=1, how="subset `token_warmup_min`"),
    "token_warmup_step": same("token_warmup_step", "subset", skip=0, how="subset `token_warmup_step`"),
    "flip_aug": same("flip_aug", "subset", skip=False, how="subset `flip_aug`"),
    "cache_latents": same("cache_latents", "training", skip=False),
    "device": "sd-scripts trains where accelerate puts it (`accelerate config`)",
    "mixed_precision": Arg("training", ("mixed_precision",), _mixed_precision,
                           "`mixed_precision` (auto: fp16)", _auto_precision_lost),
    "gradient_checkpointing": Arg("training", ("gradient_checkpointing",), lambda t, c: _when(
        t["gradient_checkpointing"] is not False, {"gradient_checkpointing": True}),
        "`gradient_checkpointing` (unset: on, as our bake on CUDA)"),
    "save_precision": Arg("saving", ("save_precision",),
                          lambda t, c: {"save_precision": SAVE_PRECISION[t["save_precision"]]},
                          "`save_precision` (fp32: float)"),
    "seed": same("seed", "training"),
    "save_every_n_epochs": same("save_every_n_epochs", "saving"),
}

# Written whatever the recipe says: sd-scripts' settings for what our bake does without a key.
FIXED: dict[str, dict[str, Any]] = {
    "training": {"sdpa": True, "max_data_loader_n_workers": 2, "persistent_data_loader_workers": True},
    "saving": {"save_model_as": "safetensors", "save_state": True},
}
LISTS = ("network_args", "optimizer_args", "lr_scheduler_args")  # several keys add to these


def arguments(train: Train, ctx: Context, place: str) -> dict[str, Any]:
    """The sd-scripts arguments of one place, from every [train] key mapped there."""
    out: dict[str, Any] = dict(FIXED.get(place, {}))
    for arg in TRAIN_ARGS.values():
        if isinstance(arg, Arg) and arg.place == place:
            for name, value in arg.write(train, ctx).items():
                out[name] = out.get(name, []) + value if name in LISTS else value
    return out


def left_out(train: Train, ctx: Context) -> list[str]:
    """What of the recipe's values sd-scripts cannot take as they are, one line each."""
    return [line for arg in TRAIN_ARGS.values() if isinstance(arg, Arg) and arg.lost
            for line in [arg.lost(train, ctx)] if line]


def markdown_table() -> str:
    """TRAIN_ARGS as docs/kohya.md shows it (tests/test_kohya_args.py keeps the page equal to it)."""
    where = {"dataset": "dataset_config.toml, dataset", "subset": "dataset_config.toml, each training subset"}
    lines = ["| `[train]` key | sd-scripts | where |", "|---|---|---|"]
    for key, arg in TRAIN_ARGS.items():
        if isinstance(arg, str):
            lines.append(f"| `{key}` | none: {arg} | |")
        else:
            how = arg.how.replace("same name", f"`{arg.names[0]}`", 1)
            lines.append(f"| `{key}` | {how.replace('|', '&#124;')} | "
                         f"{where.get(arg.place, f'train_network.toml, [{arg.place}]')} |")
    return "\n".join(lines) + "\n"
