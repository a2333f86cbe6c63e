"""Sliders (LECO): a LoRA trained from prompts alone, and its tasting."""
