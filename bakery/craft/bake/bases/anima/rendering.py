"""Rendering with Anima: taste's grids, regularisation, the trigger check (owner: anima-taste)."""

from __future__ import annotations


class AnimaRendering:
    """bases/family.py's `prompt_kwargs` (and what else rendering asks of a family)."""
