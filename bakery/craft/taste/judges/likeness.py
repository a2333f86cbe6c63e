"""Image embeddings for the likeness check: a local CLIP or DINOv2 model (transformers format).

Configured with `evaluate.likeness_model` (a folder). Without one, the
evaluation falls back to the colour-histogram proxy of `bakery.craft.taste.evaluate`
and says so; it never invents a score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class LikenessModelError(RuntimeError):
    pass


class Embedder:
    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise LikenessModelError(
                f"evaluate.likeness_model = {str(path)!r} is not a transformers model folder (no config.json): "
                "pass a local CLIP or DINOv2 folder, or leave it unset for the colour-histogram proxy"
            )
        config = AutoConfig.from_pretrained(path)
        self.kind = config.model_type
        if self.kind == "clip":
            from transformers import CLIPModel

            self.model = CLIPModel.from_pretrained(path)
        elif self.kind == "clip_vision_model":
            from transformers import CLIPVisionModelWithProjection

            self.model = CLIPVisionModelWithProjection.from_pretrained(path)
        else:  # dinov2, siglip_vision_model, ...: the pooled output
            self.model = AutoModel.from_pretrained(path)
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model.eval().to(device)
        self.device = device
        self._torch = torch

    @property
    def method(self) -> str:
        return f"embedding:{self.kind}"

    def embed(self, images: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
        torch = self._torch
        out = []
        for i in range(0, len(images), batch):
            chunk = [np.array(im, dtype=np.uint8) for im in images[i : i + batch]]  # writable copies for torch
            inputs = self.processor(images=chunk, return_tensors="pt").to(self.device)
            with torch.no_grad():
                if self.kind == "clip":
                    emb = self.model.get_image_features(**inputs)
                    emb = getattr(emb, "pooler_output", emb)
                else:
                    res = self.model(**inputs)
                    emb = getattr(res, "image_embeds", None)
                    if emb is None:
                        emb = res.pooler_output if getattr(res, "pooler_output", None) is not None else res.last_hidden_state.mean(1)
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out)
