"""Bake: the training loop every base shares, the base-model families, the networks (LoRA, LyCORIS), kohya files, regularisation (rules.md §11-§12)."""


class BakeError(RuntimeError):
    """A bake that cannot run as asked (missing model, optimizer without its hardware...)."""
