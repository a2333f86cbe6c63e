"""Anima's files -> diffusers' AnimaModularPipeline (owner: anima-load).

The pipeline's components: transformer (CosmosTransformer3DModel), text_conditioner (AnimaTextConditioner, the LLM
adapter), text_encoder (transformers' Qwen3Model) with its tokenizer, t5_tokenizer, vae (AutoencoderKLQwenImage),
scheduler (flow-match Euler); the guider is the pipeline's default. The forms of `train.base_model`:

- "file": the DiT single file as circlestone-labs ships it and sd-scripts reads it. Works offline: the configs
  ship in bakery/configs/anima/ (anima/files.py). Needs the files beside it: `train.text_encoder` (Qwen3-0.6B, a
  transformers folder or one .safetensors file), `train.vae` (qwen_image_vae.safetensors or a diffusers folder),
  the LLM adapter (inside the DiT file, else `train.llm_adapter`), the tokenizers (Qwen3's from the text encoder's
  folder or the hub cache; T5's from `train.t5_tokenizer` or the hub cache). A missing one: a one-line error naming
  its recipe key and what to fetch.
- "folder": a diffusers folder of the modular pipeline (modular_model_index.json, as
  `AnimaModularPipeline.save_pretrained` writes it): offline, everything is in it (`train.vae` replaces its VAE).
- "hub": a hub id, through `AnimaModularPipeline.from_pretrained` (needs internet, or the hub cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bakery.craft.bake.bases.anima import files as F
from bakery.craft.bake.bases.family import BaseFiles


def assemble(dtype: Any = None, **parts: Any) -> Any:
    """An AnimaModularPipeline of `parts` (its guider the pipeline's default), its models in `dtype`."""
    from diffusers import AnimaAutoBlocks, AnimaModularPipeline

    pipe = AnimaModularPipeline(blocks=AnimaAutoBlocks())
    if dtype is not None:
        parts = {k: v.to(dtype) if getattr(v, "dtype", dtype) != dtype else v for k, v in parts.items()}
    pipe.update_components(**parts)
    return pipe


def file_parts(dit: Path, files: BaseFiles) -> dict[str, Any]:
    """The pipeline's components from the DiT file and the files beside it (bakery/configs/anima/)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    transformer, conditioner = F.dit(dit, files.llm_adapter)
    text_encoder, tokenizer = F.text_encoder(files.text_encoder)
    return {"transformer": transformer, "text_conditioner": conditioner, "text_encoder": text_encoder,
            "tokenizer": tokenizer, "t5_tokenizer": F.t5_tokenizer(files.t5_tokenizer), "vae": F.vae(files.vae),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_config(F.shipped("scheduler.json"))}


class AnimaLoading:
    """Loading and parts: bases/family.py's `load`, `use_vae`, `denoiser`, `text_encoders`, `vae`, `tiny`."""

    def load(self, source: str | Path, form: str, files: BaseFiles = BaseFiles(), **kwargs: Any) -> Any:
        dtype = kwargs.pop("dtype", None)
        if form == "file":
            return assemble(dtype, **file_parts(Path(source), files))
        from diffusers import AnimaModularPipeline

        pipe = AnimaModularPipeline.from_pretrained(str(source), local_files_only=form == "folder", **kwargs)
        pipe.load_components(dtype=dtype)
        if files.vae:
            self.use_vae(pipe, files.vae)
        return pipe

    def use_vae(self, pipe: Any, vae: str) -> None:
        pipe.update_components(vae=F.vae(vae).to(pipe.transformer.dtype))

    def denoiser(self, pipe: Any) -> Any:
        return pipe.transformer

    def text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder]

    def vae(self, pipe: Any) -> Any:
        return pipe.vae

    def tiny(self, workdir: Path, words: Sequence[str]) -> tuple[Path, str, BaseFiles]:
        """The tiny Anima's files under the work dir's models/ (built once per set of words), loaded as a user's
        files are: the DiT file with its text encoder, VAE and T5 tokenizer beside it."""
        from bakery.craft.bake.bases.anima import tiny

        t = tiny.write(tiny.tiny_folder(workdir, words), words)
        return t.dit, "file", BaseFiles(vae=str(t.vae), text_encoder=str(t.text_encoder),
                                        t5_tokenizer=str(t.t5_tokenizer))
