"""Bake: the training loop every base shares, the base-model families, the networks (LoRA, LyCORIS), kohya files, regularisation (rules.md §11-§12)."""
