"""What a single-file checkpoint is, from its tensor names (and one shape): the bake trains SD1.5, SDXL and Anima.

The tell-tale keys, as the files carry them (ComfyUI's model_detection and diffusers' single-file loader
tell the families apart by the same ones):

- SD3 / SD3.5: `joint_blocks.` (MMDiT) under `model.diffusion_model.`;
- Flux: `double_blocks.` and `single_blocks.` (with or without `model.diffusion_model.`);
- an inpainting UNet: the first conv (`model.diffusion_model.input_blocks.0.0.weight`) takes 9 channels
  (4 latent + 4 masked-image latent + 1 mask) instead of 4;
- a LoRA / LyCORIS network: `lora_unet_*` / `lora_te*` modules or `.lora_down.weight`, `.lora_A.weight`,
  `.hada_w1_a`, `.lokr_w1`, `.oft_blocks` tensors;
- a VAE alone: `encoder.` / `decoder.` with no UNet;
- an SD1.5/SDXL checkpoint has `model.diffusion_model.input_blocks.` (SDXL also `conditioner.embedders.1`);
- a Cosmos-Predict2 DiT (`x_embedder.proj.1.` and `blocks.0.self_attn.q_proj.`, under `net.` or not, as
  sd-scripts' anima_utils reads it and diffusers' single-file loader tells cosmos-2.0 apart) is Anima's when it
  holds the LLM adapter (`llm_adapter.`); without it, a Cosmos DiT (Anima's needs its adapter file beside it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

SUPPORTED = ("supported: SD1.5 and SDXL checkpoints (.safetensors, original layout), Anima DiT files, "
             "and diffusers folders")
COSMOS_DIT = ("x_embedder.proj.1.weight", "blocks.0.self_attn.q_proj.weight")  # Cosmos-Predict2's (2.0) layout
ADAPTER = "llm_adapter."  # Anima's LLM adapter inside its DiT file
FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"
NETWORK_TENSORS = (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".hada_w1_a",
                   ".lokr_w1", ".lokr_w1_a", ".oft_blocks", ".on_input", ".diff")


def _strip(key: str) -> str:
    return key.removeprefix("model.diffusion_model.")


def kind_of(keys: Iterable[str], shape: Callable[[str], tuple[int, ...]]) -> str:
    """'sd15', 'sdxl', 'anima', or what else the file is: 'cosmos' (a Cosmos-Predict2 DiT without Anima's LLM
    adapter), 'sd3', 'flux', 'inpainting', 'network', 'vae', 'unknown'.

    `shape(key)`: the shape of one tensor (read only for the first conv)."""
    keys = list(keys)
    if FIRST_CONV in keys:  # an SD UNet in the original layout
        if len(shape(FIRST_CONV)) == 4 and shape(FIRST_CONV)[1] != 4:
            return "inpainting"
        return "sdxl" if any(k.startswith("conditioner.embedders.1") for k in keys) else "sd15"
    stripped = {_strip(k).split(".", 1)[0] for k in keys}
    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) or k.endswith(NETWORK_TENSORS) for k in keys):
        return "network"
    dit = {k.removeprefix("net.") for k in keys}
    if all(k in dit for k in COSMOS_DIT):
        return "anima" if any(k.startswith(ADAPTER) for k in dit) else "cosmos"
    if "joint_blocks" in stripped:
        return "sd3"
    if {"double_blocks", "single_blocks"} & stripped:
        return "flux"
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
        return "vae"
    return "unknown"


WHAT = {
    "cosmos": ("a Cosmos-Predict2 DiT without Anima's LLM adapter (no llm_adapter.* tensors): for Anima, name the "
               "adapter file as train.llm_adapter"),
    "sd3": "an SD3 checkpoint (MMDiT joint_blocks)",
    "flux": "a Flux checkpoint (double_blocks/single_blocks)",
    "network": "a LoRA/LyCORIS network, not a base model (a LoRA is trained on a base model: set that instead)",
    "vae": "a VAE alone, not a base model (set it as train.vae, beside a base model)",
    "unknown": "not a Stable Diffusion checkpoint (no model.diffusion_model.input_blocks tensors)",
}


def refusal(kind: str, shape: Callable[[str], tuple[int, ...]] | None = None) -> str | None:
    """The one-line reason a file of this kind cannot be a base model (None for sd15/sdxl/anima)."""
    if kind in ("sd15", "sdxl", "anima"):
        return None
    if kind == "inpainting":
        channels = shape(FIRST_CONV)[1] if shape else 9
        what = f"an inpainting UNet ({channels} input channels, not 4): train on its non-inpainting base model"
    else:
        what = WHAT[kind]
    return f"{what}; {SUPPORTED}"


def folder_refusal(class_name: str, unet_in_channels: int | None) -> str | None:
    """The one-line reason a diffusers folder cannot be a base model (None for an SD1.5/SDXL text-to-image one)."""
    if "Inpaint" in class_name or (unet_in_channels is not None and unet_in_channels != 4):
        return (f"an inpainting model ({class_name}, UNet with {unet_in_channels} input channels, not 4): "
                f"train on its non-inpainting base model; {SUPPORTED}")
    if class_name not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "AnimaModularPipeline"):
        family = "an SD3" if "StableDiffusion3" in class_name else "a Flux" if "Flux" in class_name else "a"
        return f"{family} model ({class_name or 'no _class_name in model_index.json'}); {SUPPORTED}"
    return None
