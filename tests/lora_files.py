"""Kohya/A1111-format LoRA files for the tiny model, written by hand like sd-scripts names them.

`lora_unet_<diffusers module path with _>` for the UNet's transformer blocks,
`lora_te_text_model_<module path with _>` for the CLIP text encoder's attention
and MLP, each with `.lora_down.weight`, `.lora_up.weight` and `.alpha`, fp16,
plus the `ss_*` metadata users' tools read. `zero=True` is what a LoRA looks
like before training (lora_up = 0): it changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path


def lora_targets(model_dir: Path | str) -> list[tuple[str, int, int]]:
    """(kohya name, in_features, out_features) of every Linear kohya's LoRA wraps in the tiny model."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    model_dir = Path(model_dir)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    te = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    out = []
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and "transformer_blocks" in name:
            out.append(("lora_unet_" + name.replace(".", "_"), m.in_features, m.out_features))
    for name, m in te.named_modules():
        if isinstance(m, torch.nn.Linear) and ("self_attn" in name or "mlp" in name):
            name = name.removeprefix("text_model.")  # transformers < 5 nests it; kohya names always carry it
            out.append(("lora_te_text_model_" + name.replace(".", "_"), m.in_features, m.out_features))
    return out


def write_kohya_lora(
    model_dir: Path | str,
    path: Path | str,
    *,
    zero: bool = False,
    seed: int = 0,
    strength: float = 0.5,
    rank: int = 4,
    alpha: float = 2.0,
    epoch: int = 1,
    metadata: dict[str, str] | None = None,
) -> Path:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, fin, fout in lora_targets(model_dir):
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, fin, generator=g) * strength
        up = torch.zeros(fout, rank) if zero else torch.randn(fout, rank, generator=g) * strength
        sd[f"{key}.lora_up.weight"] = up
        sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_epoch": str(epoch),
        "ss_output_name": Path(path).stem.rsplit("-", 1)[0],
        "ss_base_model_version": "sd_v1",
        "ss_training_comment": "bakery_girl",
        "ss_tag_frequency": json.dumps({"10_bakery_girl": {"bakery_girl": 12, "red_dress": 9, "smile": 7, "solo": 11, "blue_eyes": 4}}),
        "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 512], "count": 8}, "1": {"resolution": [448, 576], "count": 4}}}),
        "modelspec.trigger_phrase": "bakery_girl",
        **(metadata or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    return path
