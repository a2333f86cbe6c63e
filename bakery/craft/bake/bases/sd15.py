"""SD1.5 behind the base-model seam: one CLIP text encoder with clip skip, the UNet named as diffusers names it.

Also the tiny random-weight model (`train.base_model = "tiny"`), which is SD1.5-shaped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from bakery.craft.bake.bases.family import BaseFiles
from bakery.craft.bake.bases.sd_unet import SDUNet


class SD15(SDUNet):
    name = "sd15"
    resolution = 512
    pipeline = "StableDiffusionPipeline"
    pipeline_kwargs: ClassVar[dict[str, Any]] = {"safety_checker": None, "requires_safety_checker": False}
    te_prefixes = ("lora_te",)

    def tiny(self, workdir: Path, words: Sequence[str]) -> tuple[Path, str, BaseFiles]:
        """The tiny model's folder, built once per set of words (the triggers are in its vocabulary)."""
        from bakery.testmodels.tiny_sd15 import build_tiny_sd15

        key = hashlib.sha256(json.dumps(sorted(set(words))).encode()).hexdigest()[:10]
        return build_tiny_sd15(Path(workdir) / "models" / f"tiny-{key}", words=words), "folder", BaseFiles()

    def prompt_kwargs(self, pipe: Any, prompts: list[str], negatives: list[str], clip_skip: int,
                      device: str) -> dict[str, Any]:
        """Prompt embeddings with A1111's clip skip: diffusers' own reads `text_model`, which transformers 5's
        CLIPTextModel no longer has."""
        return {"prompt_embeds": embed(pipe, prompts, clip_skip, device),
                "negative_prompt_embeds": embed(pipe, negatives, clip_skip, device)}


def embed(pipe: Any, texts: list[str], clip_skip: int, device: str) -> Any:
    """SD1.5 prompt embeddings with A1111's clip skip (n = take the n-th last layer, then the final norm)."""
    import torch

    tok, te = pipe.tokenizer, pipe.text_encoder
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = te(ids.to(device), output_hidden_states=True)
        if clip_skip <= 1:
            emb = out[0]
        else:
            norm = getattr(te, "text_model", te).final_layer_norm  # transformers 5 flattened CLIPTextModel
            emb = norm(out.hidden_states[-clip_skip])
    return emb.to(pipe.unet.dtype)


FAMILY = SD15()
