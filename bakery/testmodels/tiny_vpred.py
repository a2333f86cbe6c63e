"""A tiny v-prediction base model: the tiny SD1.5 shape whose scheduler says v-prediction (+ zero terminal SNR).

Real v-prediction models (SD2.x 768, NoobAI-XL V-Pred) say so in one of two places: a diffusers
folder's `scheduler/scheduler_config.json` (`prediction_type = "v_prediction"`,
`rescale_betas_zero_snr`), or a single file's empty marker tensors `v_pred` / `ztsnr`. This builds
the first (a diffusers folder, random weights) and writes the second (`write_markers`) so both
ways of detecting it are exercised on real files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from bakery.testmodels.tiny_sd15 import build_tiny_sd15


def build_tiny_vpred(folder: Path | str, words: Iterable[str] = (), zero_snr: bool = True) -> Path:
    """The tiny SD1.5-shaped pipeline saved as a v-prediction model (its scheduler config); returns the folder."""
    folder = build_tiny_sd15(folder, words)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(prediction_type="v_prediction", rescale_betas_zero_snr=zero_snr)
    path.write_text(json.dumps(config, indent=2))
    return folder


def write_markers(path: Path | str, tensors: dict | None = None, v_pred: bool = True, ztsnr: bool = True) -> Path:
    """A `.safetensors` checkpoint carrying the marker keys v-prediction single files carry (empty tensors)."""
    import torch
    from safetensors.torch import save_file

    out = dict(tensors or {"model.diffusion_model.out.2.bias": torch.zeros(4)})
    if v_pred:
        out["v_pred"] = torch.tensor([])
    if ztsnr:
        out["ztsnr"] = torch.tensor([])
    save_file(out, str(path))
    return Path(path)
