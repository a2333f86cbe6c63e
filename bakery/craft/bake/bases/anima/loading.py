"""Anima's files -> diffusers' AnimaModularPipeline (owner: anima-load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class AnimaLoading:
    """Loading and parts: bases/family.py's `load`, `use_vae`, `denoiser`, `text_encoders`, `vae`, `tiny`."""

    def load(self, source: str | Path, form: str, **kwargs: Any) -> Any:
        raise NotImplementedError("anima-load")

    def use_vae(self, pipe: Any, vae: str) -> None:
        raise NotImplementedError("anima-load")

    def denoiser(self, pipe: Any) -> Any:
        return pipe.transformer

    def text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder]

    def vae(self, pipe: Any) -> Any:
        return pipe.vae
