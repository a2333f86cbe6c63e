"""Anima (circlestone-labs) behind the base-model seam: the one place that knows Anima.

A 2B DiT derived from Cosmos-Predict2 (diffusers' `CosmosTransformer3DModel`), prompted with Danbooru tags,
with a Qwen3-0.6B text encoder, a 6-layer LLM adapter bridging Qwen3 to the DiT's cross-attention
(`AnimaTextConditioner`, queried with T5 token ids), the Qwen-Image VAE (16 channels, 8x) and rectified-flow
training. Its parts, one module each, make up the family (`Anima`, bases/family.py's `BaseFamily`):

- loading.py: the files users have (DiT single file with or beside the LLM adapter, Qwen3 folder or file,
  Qwen-Image VAE file, T5 tokenizer), a diffusers folder or hub id -> diffusers' `AnimaModularPipeline`;
- training.py: rectified flow (bases/flow.py) with sd-scripts' timestep sampling, text encoding (cached,
  the text encoder unloaded), the DiT's prediction in the latents' (N, C, H, W) layout;
- network.py: the modules a LoRA/LoKr wraps and the names sd-scripts' networks/lora_anima.py gives them;
- rendering.py: what taste, regularisation and the trigger check render with;
- tiny.py: a tiny Anima of the real architecture and file layout, random weights, for tests.
"""

from __future__ import annotations

from bakery.craft.bake.bases.anima.loading import AnimaLoading
from bakery.craft.bake.bases.anima.network import AnimaNetwork
from bakery.craft.bake.bases.anima.rendering import AnimaRendering
from bakery.craft.bake.bases.anima.training import AnimaTraining


class Anima(AnimaLoading, AnimaTraining, AnimaNetwork, AnimaRendering):
    name = "anima"
    resolution = 1024
    pipeline = "AnimaModularPipeline"


FAMILY = Anima()
