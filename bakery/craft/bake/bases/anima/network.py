"""The modules a network wraps on Anima and their kohya names, as sd-scripts' networks/lora_anima.py writes them
(owner: anima-lora).

Names (sd-scripts `LoRANetwork`): the DiT's modules under `lora_unet` by their original (Cosmos-Predict2 / Anima
file) paths, `lora_unet_blocks_0_self_attn_q_proj`; the LLM adapter's would be `lora_unet_llm_adapter_...`; Qwen3's
under `lora_te`, `lora_te_layers_0_self_attn_q_proj` (sd-scripts trains `Qwen3ForCausalLM(...).model`, the
`Qwen3Model` the pipeline holds). Our denoiser is diffusers' `CosmosTransformer3DModel`, whose paths
(`transformer_blocks.0.attn1.to_q`) are renamed to the original ones with `TO_ORIGINAL` (the inverse of
diffusers' converter); the file's keys are exactly sd-scripts' for the same settings.

Layers, sd-scripts' rule replayed on the original paths:

- LoRA and DoRA (and IA3, DyLoRA, Diag-OFT, which lycoris_net narrows as on SD): every Linear inside sd-scripts'
  `ANIMA_TARGET_REPLACE_MODULE` classes (`Block`, `PatchEmbed`, `TimestepEmbedding`, `FinalLayer`) minus its
  default exclude pattern `.*(_modulation|_norm|_embedder|final_layer).*`: each block's self-attention,
  cross-attention and MLP (`q/k/v/output_proj`, `mlp.layer1/2`) — sd-scripts' default LoRA.
- LoCon-style (`locon`, `loha`, `lokr`: on SD the types that add the ResNet convs): a DiT has no convolutions (its
  patch embedding is a Linear), so they take every Linear of those classes, nothing excluded: the blocks' adaLN
  modulation, the patch embedding (`x_embedder.proj.1`), the timestep embedding (`t_embedder.1.linear_1/2`) and the
  final layer too. That is sd-scripts with `include_patterns=['.*']` and LyCORIS 4.1's default preset (`full`,
  lycoris/config.py lists Anima's `Block`, `PatchEmbed`, `TimestepEmbedding`, `FinalLayer`), which is how Anima
  LoKr is trained (`--network_module lycoris.kohya --network_args algo=lokr`).
- Qwen3 (only when the text encoder is trained): the Linears of `Qwen3Attention` and `Qwen3MLP`.
- The LLM adapter is not trained: sd-scripts' and LyCORIS's default (`train_llm_adapter=false`); no recipe key asks
  for it, so a file that trains it (`lora_unet_llm_adapter_*`) is not one of ours and our taste merge refuses it.

`comfy_form`: the same network in the form ComfyUI's and diffusers' generic loaders read, hand-written because no
library converts kohya's Anima names (sd-scripts' networks/convert_anima_lora_to_comfy.py is a script that does the
same by string rules): ComfyUI reads kohya's `lora_unet_*` DiT keys itself but not `lora_te_*` for Qwen3, and
diffusers' `AnimaLoraLoaderMixin` reads only `diffusion_model.*` keys without `.alpha` tensors (a kohya file loads
nothing there, silently). diffusers applies the form's DiT LoRA only: its Anima loader has no Qwen3 part, and its
"every key holds `lora`" check refuses LoKr/LoHa keys; ComfyUI applies all of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery.craft.bake.networks import kohya_lora as K

if TYPE_CHECKING:
    import torch

# diffusers' CosmosTransformer3DModel names -> the original (Cosmos-Predict2 / Anima file) names: the inverse of
# diffusers' convert_cosmos_transformer_checkpoint_to_diffusers (2.0), applied in this order.
TO_ORIGINAL = (
    ("transformer_blocks.", "blocks."),
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."),
    (".to_q.", ".q_proj."), (".to_k.", ".k_proj."), (".to_v.", ".v_proj."), (".to_out.0.", ".output_proj."),
    (".norm_q.", ".q_norm."), (".norm_k.", ".k_norm."),
    (".ff.net.0.proj.", ".mlp.layer1."), (".ff.net.2.", ".mlp.layer2."),
    (".norm1.linear_1.", ".adaln_modulation_self_attn.1."), (".norm1.linear_2.", ".adaln_modulation_self_attn.2."),
    (".norm2.linear_1.", ".adaln_modulation_cross_attn.1."), (".norm2.linear_2.", ".adaln_modulation_cross_attn.2."),
    (".norm3.linear_1.", ".adaln_modulation_mlp.1."), (".norm3.linear_2.", ".adaln_modulation_mlp.2."),
    ("time_embed.t_embedder.", "t_embedder.1."), ("time_embed.norm.", "t_embedding_norm."),
    ("patch_embed.proj.", "x_embedder.proj.1."),
    ("norm_out.linear_1.", "final_layer.adaln_modulation.1."), ("norm_out.linear_2.", "final_layer.adaln_modulation.2."),
    ("proj_out.", "final_layer.linear."),
)


def original_name(diffusers_name: str) -> str:
    """A CosmosTransformer3DModel parameter's name in the original (Anima file) layout, without `net.`."""
    name = "." + diffusers_name
    for new, old in TO_ORIGINAL:
        name = name.replace("." + new.lstrip("."), "." + old.lstrip("."))
    return name[1:]


TE_PREFIX = "lora_te"  # sd-scripts' LORA_PREFIX_TEXT_ENCODER (Qwen3)
# The DiT modules inside sd-scripts' ANIMA_TARGET_REPLACE_MODULE classes, by original path.
DIT_PARTS = re.compile(r"(blocks\.\d+|x_embedder|t_embedder\.1|final_layer)\..+")
DEFAULT_EXCLUDE = re.compile(r".*(_modulation|_norm|_embedder|final_layer).*")  # sd-scripts' default exclude
TE_CLASSES = ("Qwen3Attention", "Qwen3MLP")  # sd-scripts' TEXT_ENCODER_TARGET_REPLACE_MODULE (transformers 5 names)

# ComfyUI's names: its Anima model's state dict is the DiT file's without `net.` under `diffusion_model.`;
# Qwen3's is under the prefix sd-scripts' converter writes (convert_anima_lora_to_comfy.py's COMFYUI_QWEN3_PREFIX).
COMFY_PREFIXES = {K.UNET_PREFIX: "diffusion_model.", TE_PREFIX: "text_encoders.qwen3_06b.transformer.model."}
# Names in the Anima and Qwen3 module trees that hold an underscore: kohya's names lose their dots, these keep theirs.
_NAMES = ("adaln_modulation_self_attn", "adaln_modulation_cross_attn", "adaln_modulation_mlp", "adaln_modulation",
          "llm_adapter", "self_attn", "cross_attn", "x_embedder", "t_embedder", "final_layer", "output_proj",
          "q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj", "gate_proj", "up_proj", "down_proj",
          "linear_1", "linear_2")
_PART = re.compile("(?:" + "|".join(_NAMES) + r")(?=_|$)|[^_]+")


def original_path(diffusers_path: str) -> str:
    """A CosmosTransformer3DModel module path in the original (Anima file, sd-scripts) layout."""
    return original_name(diffusers_path + ".weight")[: -len(".weight")]


def _dit_targets(model: Any, spec: K.NetworkSpec) -> K.Targets:
    import torch.nn as nn

    targets = K.Targets()
    for path, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        orig = original_path(path)
        if not DIT_PARTS.fullmatch(orig):
            continue
        if DEFAULT_EXCLUDE.fullmatch(orig) and not spec.covers_convs:
            continue
        targets.linear.append(path)
        targets.renames[path] = orig
    return targets


def _te_targets(model: Any) -> K.Targets:
    import torch.nn as nn

    targets = K.Targets()
    for parent_path, parent in model.named_modules():
        if type(parent).__name__ not in TE_CLASSES:
            continue
        for child_path, child in parent.named_modules():
            if isinstance(child, nn.Linear):
                targets.linear.append(f"{parent_path}.{child_path}")
    return targets


class AnimaNetwork:
    """bases/family.py's `network_parts`, `targets`, `write_diffusers_form`."""

    def write_diffusers_form(self, kohya_file: str | Path) -> Path:
        return write_comfy_form(kohya_file)  # diffusers' Anima loader reads `diffusion_model.*`, not kohya's names

    def network_parts(self, denoiser: Any, text_encoders: Sequence[Any]) -> list[tuple[str, Any, str]]:
        return K.network_parts(denoiser, text_encoders, (TE_PREFIX,))

    def targets(self, model: Any, kind: str, spec: K.NetworkSpec) -> K.Targets:
        if kind == "unet":
            return _dit_targets(model, spec)
        if kind == "te":
            return _te_targets(model)
        raise ValueError(f"kind must be 'unet' or 'te', got {kind!r}")


def dotted(kohya_module: str) -> str:
    """A module path from its kohya name without the prefix: `blocks_0_self_attn_q_proj` ->
    `blocks.0.self_attn.q_proj` (the names that hold an underscore are kept whole)."""
    return ".".join(_PART.findall(kohya_module))


def comfy_form(tensors: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """A kohya Anima network in ComfyUI's/diffusers' names: `diffusion_model.<path>` (Qwen3:
    `text_encoders.qwen3_06b.transformer.model.<path>`). LoRA's `lora_down`/`lora_up` become `lora_A`/`lora_B`
    with alpha/rank folded into `lora_B` and no `.alpha` (diffusers refuses `.alpha` keys and applies scale 1; ComfyUI
    applies 1 without one); LoKr/LoHa/other tensors keep their names and `.alpha` (ComfyUI reads them as kohya's)."""
    if any(k.endswith(".on_input") for k in tensors):  # `<module>.weight` would read as the layer's own weight
        raise ValueError("an IA3 network has no ComfyUI/diffusers form (ComfyUI has no IA3 loader)")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name, suffix = key.split(".", 1)
        prefix = next((p for p in COMFY_PREFIXES if name.startswith(p + "_")), None)
        if prefix is None:
            raise ValueError(f"not an Anima network key: {key!r}")
        base = COMFY_PREFIXES[prefix] + dotted(name[len(prefix) + 1:])
        has_lora = f"{name}.lora_down.weight" in tensors
        if suffix == "alpha" and has_lora:
            continue
        if suffix == "lora_up.weight":
            down = tensors[f"{name}.lora_down.weight"]
            alpha = tensors.get(f"{name}.alpha")
            scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
            tensor, suffix = (tensor.float() * scale).to(tensor.dtype), "lora_B.weight"
        elif suffix == "lora_down.weight":
            suffix = "lora_A.weight"
        out[f"{base}.{suffix}"] = tensor.contiguous()
    return out


def comfy_path(kohya_file: str | Path) -> Path:
    """Where the ComfyUI/diffusers form of a kohya file goes: beside it, `<name>_comfy.safetensors`."""
    kohya_file = Path(kohya_file)
    return kohya_file.with_name(kohya_file.stem + "_comfy.safetensors")


def write_comfy_form(kohya_file: str | Path, out: str | Path | None = None) -> Path:
    """`comfy_form` of a kohya Anima LoRA file, written to `out` (default `comfy_path`): the kohya metadata kept,
    its hashes recomputed for the new tensors. The kohya file is left as it is."""
    tensors, meta = K.read_kohya(kohya_file)
    converted = comfy_form(tensors)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = K.safetensors_hashes(converted, meta)
    from safetensors.torch import save

    out = Path(out) if out is not None else comfy_path(kohya_file)
    out.write_bytes(K.canonical_header(save(converted, metadata=meta)))
    return out
