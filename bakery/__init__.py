"""LoRA Bakery: a reproducible, resumable pipeline for baking Stable Diffusion LoRAs."""

__version__ = "0.1.0"
