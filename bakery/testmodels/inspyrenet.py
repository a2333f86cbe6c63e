"""A transparent-background (InSPyReNet SwinB) checkpoint with random weights, for the demo and the tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bakery.craft.prepare.masks import _quiet_import


def build_random_inspyrenet_ckpt(path: Path | str, seed: int = 0) -> Path:
    """A checkpoint of the real architecture with random weights (~370 MB), for tests and the demo.

    Every Remover mode builds `InSPyReNet_SwinB(depth=64)`; only the input size differs,
    which changes no weight shape, so one file serves every mode. Its masks mean nothing.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with _quiet_import():
        from transparent_background.InSPyReNet import InSPyReNet_SwinB

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = InSPyReNet_SwinB(depth=64, pretrained=False, threshold=None, base_size=[384, 384])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(model.state_dict(), tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # never a half-written checkpoint at `path`, even with two writers
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
