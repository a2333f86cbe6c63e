"""A diffusers SD1.5/SDXL pipeline written as one `.safetensors` file in the original (LDM/sgm) layout,
the layout of the checkpoints users download (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*` for SD1.5; `conditioner.embedders.0.transformer.*` and the OpenCLIP
`conditioner.embedders.1.model.*` for SDXL). The inverse of diffusers' single-file conversion, so tests
can load a tiny checkpoint as a user's file is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bakery.craft.bake.networks.kohya_lora import sgm_unet_path

_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_key(key: str, config: Any) -> str:
    module, param = key.rsplit(".", 1)
    if module in _UNET_TOP:
        return f"model.diffusion_model.{_UNET_TOP[module]}.{param}"
    if ".resnets." in module:
        module = re.sub(r"\.norm1$", ".in_layers_0", module)
        module = re.sub(r"\.norm2$", ".out_layers_0", module)
    up_attn = ["CrossAttn" in t for t in config.up_block_types]
    path = sgm_unet_path(module, config.layers_per_block, up_attn).replace("_layers_0", "_layers.0")
    return f"model.diffusion_model.{path}.{param}"


def vae_key(key: str, n_blocks: int) -> str:
    k = key
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.", k)
    k = re.sub(r"^(decoder\.up\.\d+\.)resnets\.", r"\1block.", k)
    k = re.sub(r"^(decoder\.up\.\d+\.)upsamplers\.0\.", r"\1upsample.", k)
    k = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", k)
    for ours, ldm in _VAE_ATTN.items():
        k = k.replace(f".mid_block.attentions.0.{ours}.", f".mid.attn_1.{ldm}.")
    k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    return "first_stage_model." + k


def _text_model(sd: dict) -> dict:
    """transformers 5 may drop CLIPTextModel's `text_model.` level; checkpoints always carry it."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in sd.items()}


def open_clip(sd: dict, prefix: str) -> dict:
    """CLIPTextModelWithProjection -> OpenCLIP names (SDXL's second text encoder): fused q/k/v."""
    import torch

    sd, out = _text_model(sd), {}
    top = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
           "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
           "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    for k, v in sd.items():
        if k in top:
            out[prefix + top[k]] = v
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()
        elif ".self_attn.q_proj." in k:
            kind = k.rsplit(".", 1)[1]
            qkv = [sd[k.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            layer = k.split(".")[3]
            out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv)
        elif ".self_attn.k_proj." in k or ".self_attn.v_proj." in k or "position_ids" in k:
            continue
        else:
            rest = k.replace("text_model.encoder.layers.", "transformer.resblocks.").replace(".self_attn.", ".attn.")
            rest = rest.replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
            out[prefix + rest.replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj.")] = v
    return out


def ldm_state_dict(pipe: Any) -> dict:
    """The pipeline's weights under the original checkpoint names."""
    sdxl = hasattr(pipe, "text_encoder_2") and pipe.text_encoder_2 is not None
    out = {unet_key(k, pipe.unet.config): v for k, v in pipe.unet.state_dict().items()}
    n_vae = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        if ".mid_block.attentions.0." in k and v.dim() == 2:
            v = v[:, :, None, None]  # LDM's attention is 1x1 convs
        out[vae_key(k, n_vae)] = v
    te = {k: v for k, v in _text_model(pipe.text_encoder.state_dict()).items() if "position_ids" not in k}
    prefix = "conditioner.embedders.0.transformer." if sdxl else "cond_stage_model.transformer."
    out.update({prefix + k: v for k, v in te.items()})
    if sdxl:
        out.update(open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    return out


def write_single_file(pipe: Any, path: Path | str) -> Path:
    """Write the pipeline as one original-layout `.safetensors` checkpoint."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in ldm_state_dict(pipe).items()}, str(path))
    return path
