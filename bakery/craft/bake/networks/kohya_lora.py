"""peft networks <-> kohya/A1111 LoRA files: which layers, key names, alphas, metadata, hashes.

What A1111, ComfyUI and diffusers read is the key text and the `.alpha`
tensors, literally, so this module writes them itself instead of borrowing
diffusers' `convert_state_dict_to_kohya` (that one names the SD1.5 text
encoder `lora_te1_` and writes `alpha = rank`, which silently changes the
strength of any network trained with alpha != dim).

Layers (kohya sd-scripts networks/lora.py): LoRA = every Linear and 1x1
Conv2d inside the UNet's Transformer2DModel blocks and the CLIP text encoder's
attention and MLP; LoCon adds the ResNet blocks and down/up-samplers (3x3 convs
get the conv dim/alpha). Names are the diffusers module paths with dots turned
into underscores: `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`,
`lora_te_text_model_encoder_layers_0_self_attn_q_proj` (SDXL: `lora_te1_`/`lora_te2_`).
Tensors: LoRA/LoCon/DoRA `.lora_down.weight`, `.lora_up.weight`, `.alpha`
(DoRA adds `.dora_scale`, LyCORIS's shape); LoHa `.hada_w1_a/.hada_w1_b/.hada_w2_a/.hada_w2_b`;
LoKr `.lokr_w1` / `.lokr_w1_a/_b`, `.lokr_w2` / `.lokr_w2_a/_b` (LyCORIS names).
Scale at weight 1.0 is alpha/dim in every tool, and peft's `lora_alpha / r` in training.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NETWORK_TYPES = ("lora", "locon", "dora", "loha", "lokr", "ia3", "dylora", "diag-oft")  # the last three: lycoris_net
CONV_TYPES = ("locon", "loha", "lokr")  # network types that also cover the ResNet convs

UNET_ATTENTION_CLASSES = ("Transformer2DModel",)
UNET_CONV_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")

UNET_PREFIX = "lora_unet"  # kohya's prefix for the denoiser's modules (SD's UNet; Flux's transformer too)

KOHYA_IMPLEMENTATION = "https://github.com/kohya-ss/sd-scripts"
# `implementation`: modelspec.implementation where it is not kohya's; `lora_module`, `locon_args`: kohya's network
# module and the LoCon-style network's args where they are not networks.lora's. "anima": what sd-scripts'
# anima_train_network.py writes (load_target_model's model version; library/sai_model_spec.py's ARCH_ANIMA_PREVIEW
# + "/lora", IMPL_ANIMA; networks/lora_anima.py, whose include_patterns=['.*'] takes our LoCon-style layers).
ARCHITECTURES = {
    "sd15": {"base_model_version": "sd_v1", "modelspec": "stable-diffusion-v1/lora"},
    "sdxl": {"base_model_version": "sdxl_base_v1-0", "modelspec": "stable-diffusion-xl-v1-base/lora"},
    "anima": {"base_model_version": "anima", "modelspec": "anima-preview/lora",
              "implementation": "https://huggingface.co/circlestone-labs/Anima",
              "lora_module": "networks.lora_anima", "locon_args": {"include_patterns": "['.*']"}},
}

# peft parameter name (after the module path) -> kohya/LyCORIS tensor name
_PEFT_TO_KOHYA = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    "hada_w1_a": "hada_w1_a",
    "hada_w1_b": "hada_w1_b",
    "hada_w2_a": "hada_w2_a",
    "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1",
    "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1",
    "lokr_w1_a": "lokr_w1_a",
    "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2",
    "lokr_w2_a": "lokr_w2_a",
    "lokr_w2_b": "lokr_w2_b",
    "lokr_t2": "lokr_t2",
}
_KOHYA_TO_PEFT = {v: k for k, v in _PEFT_TO_KOHYA.items()}


@dataclass(frozen=True)
class NetworkSpec:
    """The network a bake trains: one per model (UNet, text encoder)."""

    network_type: str = "lora"
    dim: int = 32
    alpha: float = 16.0
    conv_dim: int = 16
    conv_alpha: float = 8.0

    def __post_init__(self) -> None:
        if self.network_type not in NETWORK_TYPES:
            raise ValueError(f"network_type must be one of {NETWORK_TYPES}, got {self.network_type!r}")

    @property
    def covers_convs(self) -> bool:
        return self.network_type in CONV_TYPES


@dataclass
class Targets:
    """Module paths of one model the network wraps; `conv` are the 3x3 (or larger) convs."""

    linear: list[str] = field(default_factory=list)
    conv: list[str] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)  # module path -> the path kohya names it by (SDXL)

    @property
    def all(self) -> list[str]:
        return self.linear + self.conv


def find_targets(model: Any, kind: str, spec: NetworkSpec, sgm: bool = False) -> Targets:
    """kohya's layer choice on a diffusers UNet (`kind="unet"`) or a CLIP text encoder (`"te"`).

    `sgm`: name UNet modules as kohya does for SDXL, whose UNet it trains in the original
    (sgm/LDM) layout: `input_blocks_4_1_...`, `middle_block_1_...`, `output_blocks_...`.
    """
    import torch.nn as nn

    if kind == "unet":
        classes = UNET_ATTENTION_CLASSES + (UNET_CONV_CLASSES if spec.covers_convs else ())
    elif kind == "te":
        classes = TE_CLASSES
    else:
        raise ValueError(f"kind must be 'unet' or 'te', got {kind!r}")
    targets = Targets()
    seen: set[str] = set()
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ not in classes:
            continue
        for child_name, child in parent.named_modules():
            if not child_name:
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if name in seen:
                continue
            if isinstance(child, nn.Linear):
                targets.linear.append(name)
            elif isinstance(child, nn.Conv2d):
                if child.kernel_size == (1, 1):
                    targets.linear.append(name)  # kohya treats 1x1 convs as linear layers
                elif spec.covers_convs:
                    targets.conv.append(name)
                else:
                    continue
            else:
                continue
            seen.add(name)
    if kind == "te":  # transformers 5 dropped CLIPTextModel's `text_model.` level; the files keep it
        targets.renames = {p: p if p.startswith("text_model.") else "text_model." + p for p in targets.all}
    if sgm and kind == "unet":
        cfg = model.config
        up_attn = ["CrossAttn" in t for t in cfg.up_block_types]
        targets.renames = {p: sgm_unet_path(p, cfg.layers_per_block, up_attn) for p in targets.all}
    return targets


_RESNET_TO_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                  "conv_shortcut": "skip_connection"}


def sgm_unet_path(path: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """A diffusers UNet module path in the sgm/LDM layout kohya uses for SDXL (the inverse of
    diffusers' `_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key`)."""
    parts = path.split(".")
    n = layers_per_block + 1
    if parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":
            return f"input_blocks.{n * (i + 1)}.0.op"
        head = f"input_blocks.{n * i + j + 1}.{0 if kind == 'resnets' else 1}"
    elif parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        head = f"middle_block.{ {('resnets', 0): 0, ('attentions', 0): 1, ('resnets', 1): 2}[(kind, j)] }"
    elif parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "upsamplers":
            return f"output_blocks.{n * i + n - 1}.{2 if up_has_attention[i] else 1}.conv"
        head = f"output_blocks.{n * i + j}.{0 if kind == 'resnets' else 1}"
    else:
        return path
    if kind == "resnets" and rest and rest[0] in _RESNET_TO_SGM:
        rest = _RESNET_TO_SGM[rest[0]].split(".") + rest[1:]
    return ".".join([head, *rest])


def _exact(name: str) -> str:
    """A peft pattern key (regex, matched as a suffix) that matches only this module path."""
    return "^" + re.escape(name) + "$"


def peft_config(targets: Targets, spec: NetworkSpec) -> Any:
    """The peft config that trains `spec` on `targets` with kohya's scale (alpha/dim)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    conv_rank = {_exact(n): spec.conv_dim for n in targets.conv}
    conv_alpha = {_exact(n): spec.conv_alpha for n in targets.conv}
    common: dict[str, Any] = {
        "r": spec.dim,
        "target_modules": targets.all,
        "rank_pattern": conv_rank,
        "alpha_pattern": conv_alpha,
    }
    if spec.network_type in ("lora", "locon", "dora"):
        return LoraConfig(lora_alpha=spec.alpha, init_lora_weights=True, use_dora=spec.network_type == "dora", **common)
    if spec.network_type == "loha":
        return LoHaConfig(alpha=spec.alpha, init_weights=True, **common)
    if spec.network_type != "lokr":
        raise ValueError(f"{spec.network_type} is trained with LyCORIS's modules (lycoris_net), not peft")
    return LoKrConfig(alpha=spec.alpha, init_weights=True, decompose_both=False, **common)


def alpha_for(module: str, targets: Targets, spec: NetworkSpec) -> float:
    return spec.conv_alpha if module in set(targets.conv) else spec.alpha


def peft_to_kohya(
    state_dict: Mapping[str, "torch.Tensor"], prefix: str, targets: Targets, spec: NetworkSpec
) -> dict[str, "torch.Tensor"]:
    """A peft state dict (`get_peft_model_state_dict`, adapter name removed) -> kohya keys + `.alpha`."""
    import torch

    out: dict[str, torch.Tensor] = {}
    conv = set(targets.conv)
    for key, tensor in state_dict.items():
        for peft_suffix, kohya_suffix in _PEFT_TO_KOHYA.items():
            if key.endswith("." + peft_suffix):
                module = key[: -len(peft_suffix) - 1]
                break
        else:
            raise ValueError(f"no kohya name for peft parameter {key!r}")
        name = module_key(prefix, module, targets)
        if kohya_suffix == "dora_scale":
            # LyCORIS (what ComfyUI/A1111 read) keeps the magnitude as (out, 1) for linear layers,
            # (out, 1, 1, 1) for convs; peft as (out,) / (1, out, 1, 1).
            extra = 3 if module in conv or tensor.dim() == 4 else 1
            tensor = tensor.reshape(-1, *([1] * extra))
        out[f"{name}.{kohya_suffix}"] = tensor.detach().contiguous()
        alpha_key = f"{name}.alpha"
        if alpha_key not in out:
            out[alpha_key] = torch.tensor(float(alpha_for(module, targets, spec)))
    for name, scale in _lokr_full_scales(out, prefix, targets, spec).items():
        out[f"{name}.lokr_w2"] = out[f"{name}.lokr_w2"] * scale
    return out


def _lokr_full_scales(tensors: Mapping[str, Any], prefix: str, targets: Targets, spec: NetworkSpec) -> dict[str, float]:
    """LoKr modules whose two factors are both full matrices. LyCORIS and ComfyUI apply no alpha/dim
    to those (there is no rank to divide by) while peft applies alpha/r: the file carries peft's
    scale folded into `lokr_w2`, so every reader gets the trained strength."""
    if spec.network_type != "lokr":
        return {}
    conv = set(targets.conv)
    scales = {}
    for path in targets.all:
        name = module_key(prefix, path, targets)
        if f"{name}.lokr_w1" in tensors and f"{name}.lokr_w2" in tensors:
            rank = spec.conv_dim if path in conv else spec.dim
            scales[name] = alpha_for(path, targets, spec) / rank
    return scales


def kohya_to_peft(
    tensors: Mapping[str, "torch.Tensor"], prefix: str, targets: Targets, spec: NetworkSpec
) -> dict[str, "torch.Tensor"]:
    """The inverse of `peft_to_kohya` for one model (alphas dropped: they live in the peft config)."""
    paths = {module_key(prefix, p, targets): p for p in targets.all}
    folded = _lokr_full_scales(tensors, prefix, targets, spec)
    out = {}
    for key, tensor in tensors.items():
        name, suffix = key.split(".", 1)
        if name not in paths or suffix == "alpha":
            continue
        if suffix not in _KOHYA_TO_PEFT:
            raise ValueError(f"unknown kohya tensor name {key!r}")
        if suffix == "dora_scale":  # peft: (out,) for linear layers, (1, out, 1, 1) for convs
            tensor = tensor.reshape(1, -1, 1, 1) if tensor.dim() == 4 else tensor.reshape(-1)
        if suffix == "lokr_w2" and name in folded:
            tensor = tensor / folded[name]
        out[f"{paths[name]}.{_KOHYA_TO_PEFT[suffix]}"] = tensor
    return out


def module_key(prefix: str, module_path: str, targets: Targets | None = None) -> str:
    """kohya's name of a module: its path as kohya names it (`targets.renames`: SDXL's sgm layout, CLIP's
    `text_model.` level, a DiT's original names), dots turned into underscores, after the prefix."""
    if targets is not None:
        module_path = targets.renames.get(module_path, module_path)
    return f"{prefix}_{module_path.replace('.', '_')}"


def network_parts(denoiser: Any, text_encoders: Any, te_prefixes: tuple[str, ...]) -> list[tuple[str, Any, str]]:
    """bases/family.py's `network_parts` for a family whose text encoders take `te_prefixes` in order."""
    parts = [(UNET_PREFIX, denoiser, "unet")] if denoiser is not None else []
    return parts + [(prefix, te, "te") for prefix, te in zip(te_prefixes, text_encoders)]


# --- metadata ------------------------------------------------------------------------


def architecture_of(metadata: Mapping[str, str]) -> str | None:
    """The architecture a LoRA file was trained on, from its `ss_base_model_version` (None: not one we write)."""
    version = metadata.get("ss_base_model_version")
    return next((a for a, v in ARCHITECTURES.items() if v["base_model_version"] == version), None)


def network_module_and_args(spec: NetworkSpec, architecture: str = "sd15") -> tuple[str, dict[str, str]]:
    """What kohya / LyCORIS write as `ss_network_module` and `ss_network_args` for this network."""
    arch = ARCHITECTURES.get(architecture, {})
    if spec.network_type == "lora":
        return arch.get("lora_module", "networks.lora"), {}
    if spec.network_type == "locon":
        args = arch.get("locon_args", {"conv_dim": str(spec.conv_dim), "conv_alpha": str(spec.conv_alpha)})
        return arch.get("lora_module", "networks.lora"), dict(args)
    if spec.network_type == "dora":
        return "lycoris.kohya", {"algo": "lora", "dora_wd": "True"}
    if spec.network_type == "ia3":
        return "lycoris.kohya", {"algo": "ia3", "preset": "ia3"}
    if spec.network_type == "dylora":
        return "lycoris.kohya", {"algo": "dylora", "block_size": "4", "preset": "attn-mlp"}
    if spec.network_type == "diag-oft":
        return "lycoris.kohya", {"algo": "diag-oft", "preset": "attn-mlp"}
    args = {"algo": spec.network_type, "conv_dim": str(spec.conv_dim), "conv_alpha": str(spec.conv_alpha)}
    return "lycoris.kohya", args


def _fmt_alpha(alpha: float) -> str:
    return str(int(alpha)) if float(alpha).is_integer() else str(alpha)


def tag_frequency(captions: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """kohya's `ss_tag_frequency`: per dataset folder (`<repeats>_<name>`), how often each tag occurs."""
    freq: dict[str, dict[str, int]] = {}
    for folder, caption in captions:
        tags = freq.setdefault(folder, {})
        for tag in caption.replace("|||", ",").split(","):
            tag = tag.strip()
            if tag:
                tags[tag] = tags.get(tag, 0) + 1
    return freq


def build_metadata(
    *,
    spec: NetworkSpec,
    architecture: str,
    output_name: str,
    triggers: list[str],
    resolution: int,
    epoch: int,
    num_epochs: int,
    steps: int,
    learning_rate: float,
    unet_lr: float | None,
    text_encoder_lr: float | None,
    optimizer: str,
    seed: int,
    clip_skip: int,
    base_model: str,
    tag_freq: dict[str, dict[str, int]],
    dataset_dirs: dict[str, dict[str, int]],
    num_train_images: int,
    num_reg_images: int = 0,
    batch_size: int = 1,
    extra: Mapping[str, Any] | None = None,
    created: str = "",
) -> dict[str, str]:
    """The `ss_*` (kohya) and `modelspec.*` (SAI model spec 1.0) metadata of one epoch file; all strings."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    module, args = network_module_and_args(spec, architecture)
    trigger_text = ", ".join(triggers)
    meta: dict[str, Any] = {
        "ss_network_module": module,
        "ss_network_dim": str(spec.dim),
        "ss_network_alpha": _fmt_alpha(spec.alpha),
        "ss_network_args": json.dumps(args) if args else "null",
        "ss_tag_frequency": json.dumps(tag_freq),
        "ss_dataset_dirs": json.dumps(dataset_dirs),
        "ss_num_train_images": str(num_train_images),
        "ss_num_reg_images": str(num_reg_images),
        "ss_num_epochs": str(num_epochs),
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_learning_rate": str(learning_rate),
        "ss_unet_lr": str(unet_lr) if unet_lr is not None else "None",
        "ss_text_encoder_lr": str(text_encoder_lr) if text_encoder_lr is not None else "None",
        "ss_optimizer": optimizer,
        "ss_base_model_version": ARCHITECTURES[architecture]["base_model_version"],
        "ss_sd_model_name": base_model,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_training_comment": f"trigger: {trigger_text}" if triggers else "",
        "ss_output_name": output_name,
        "ss_seed": str(seed),
        "ss_clip_skip": str(clip_skip),
        "ss_total_batch_size": str(batch_size),
        "ss_v2": "False",
        "ss_sdxl": str(architecture == "sdxl"),
        **modelspec_metadata(architecture, output_name, epoch, resolution, trigger_text, created),
    }
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return {k: str(v) for k, v in meta.items()}


def modelspec_metadata(architecture: str, output_name: str, epoch: int, resolution: int, trigger_text: str,
                       created: str = "") -> dict[str, str]:
    """The SAI model spec 1.0 keys (`modelspec.*`) that A1111 and ComfyUI show."""
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURES[architecture]["modelspec"],
        "modelspec.implementation": ARCHITECTURES[architecture].get("implementation", KOHYA_IMPLEMENTATION),
        "modelspec.title": f"{output_name} (epoch {epoch})",
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.trigger_phrase": trigger_text,
        "modelspec.prediction_type": "epsilon",
    }
    if created:
        meta["modelspec.date"] = created
    return meta


def safetensors_hashes(tensors: Mapping[str, "torch.Tensor"], metadata: Mapping[str, str]) -> tuple[str, str]:
    """kohya `precalculate_safetensors_hashes`: sha256 of the tensor bytes (`sshs_model_hash`)
    and the legacy 8-hex hash (`sshs_legacy_hash`), with only the `ss_*` metadata in the file."""
    from safetensors.torch import save

    data = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header:]).hexdigest()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def save_kohya(path: Any, tensors: Mapping[str, "torch.Tensor"], metadata: Mapping[str, str], dtype: str = "fp16") -> None:
    """Write the file as kohya does: tensors in `dtype` (alphas too), hashes in the metadata, atomically."""
    import os
    from pathlib import Path

    import torch
    from safetensors.torch import save

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    cast = {k: v.detach().to("cpu", torch_dtype).contiguous() for k, v in tensors.items()}
    meta = dict(metadata)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = safetensors_hashes(cast, meta)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(canonical_header(save(cast, metadata=meta)))
    os.replace(tmp, path)


def canonical_header(data: bytes) -> bytes:
    """A safetensors file with its JSON header in sorted key order: the same weights and metadata
    give the same bytes (safetensors writes the metadata in a different order on every save).

    Tensor offsets are relative to the data section, which is left as it is; the header is padded
    with spaces to a multiple of 8 bytes, as the format asks.
    """
    size = int.from_bytes(data[:8], "little")
    text = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def read_kohya(path: Any) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
