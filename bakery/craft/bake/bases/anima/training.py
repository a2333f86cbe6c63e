"""Training Anima: rectified flow, text encoding, the DiT's prediction (owner: anima-train)."""

from __future__ import annotations


class AnimaTraining:
    """bases/family.py's `use_prediction`, `noise_schedule`, `timesteps`, `target`, `encode`, `text_encoder`,
    `predict`."""
