"""SDXL behind the base-model seam: two CLIP text encoders (hidden states joined, the second's pooled embedding),
size conditioning, and the UNet named as kohya names it for SDXL (the original sgm/LDM layout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bakery.craft.bake.bases.sd_unet import SDUNet
from bakery.craft.bake.precision import Precision


class SDXL(SDUNet):
    name = "sdxl"
    resolution = 1024
    pipeline = "StableDiffusionXLPipeline"
    te_prefixes = ("lora_te1", "lora_te2")
    sgm = True

    def text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder, pipe.text_encoder_2]

    def added_cond(self, prec: Precision, hidden: Any, pooled: Any, sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The pooled text embedding and the size conditioning: original size, crop (none), target size."""
        import torch

        time_ids = torch.tensor([[h, w, 0, 0, h, w] for w, h in sizes], device=prec.device, dtype=hidden.dtype)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    # prompt_kwargs: the texts; SDXL's pipeline already takes the penultimate layer (clip skip 2)


FAMILY = SDXL()
