"""The modules a network wraps on Anima and their kohya names, as sd-scripts' networks/lora_anima.py writes them
(owner: anima-lora)."""

from __future__ import annotations


class AnimaNetwork:
    """bases/family.py's `network_parts`, `targets`."""
