"""Upscale: every image gets at least `resolution²` pixels (rules.md §5).

Smaller images are enlarged to the smallest size with the same aspect ratio
whose pixel count reaches `resolution²`. A picture that would need more than
`max_factor` per side (a 40x30 thumbnail: 14.8x at 512) is not a training
picture: it is skipped with its reason unless the recipe keeps it. Backends:

- `lanczos`: Pillow's Lanczos filter (the default; no model needed).
- `spandrel`: any ESRGAN-family model file spandrel loads (RealESRGAN_x4plus,
  RealESRGAN_x4plus_anime_6B, 2x_MangaScaleV3 ...). The model runs (in tiles,
  on CUDA when present) as many times as needed to reach the target, and the
  result is brought down to the target size with a Lanczos filter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


def target_size(width: int, height: int, resolution: int) -> tuple[int, int] | None:
    """The smallest same-aspect size with >= resolution² pixels; None when already there."""
    need = resolution * resolution
    if width * height >= need:
        return None
    scale = math.sqrt(need / (width * height))
    options = []
    for w in {max(1, math.floor(width * scale)), max(1, math.ceil(width * scale))}:
        h = max(1, math.ceil(need / w))
        options.append((w * h, abs(w / h - width / height), w, h))
    _, _, w, h = min(options)
    return w, h


def factor_per_side(width: int, height: int, size: tuple[int, int]) -> float:
    """How many times a side grows from `width` x `height` to `size` (the larger of the two)."""
    return max(size[0] / width, size[1] / height)


def too_small(width: int, height: int, resolution: int, max_factor: float) -> str | None:
    """Why a picture is too small to upscale (more than `max_factor` per side), or None."""
    size = target_size(width, height, resolution)
    if size is None:
        return None
    factor = factor_per_side(width, height, size)
    if factor <= max_factor + 1e-9:
        return None
    shown = f"{factor:.1f}" if round(factor, 1) > max_factor else f"{factor:.3f}"  # never "4.0x > 4"
    return f"too small: {width}x{height} would need {shown}x per side > upscale.max_factor = {max_factor:g}"


def lanczos(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    return im.convert("RGB").resize(size, Image.Resampling.LANCZOS)


class ModelMissing(FileNotFoundError):
    pass


@dataclass
class SpandrelUpscaler:
    """One loaded model; call it on an RGB picture."""

    model: Any  # spandrel ImageModelDescriptor
    device: str
    tile: int
    overlap: int
    name: str

    @property
    def scale(self) -> int:
        return int(self.model.scale)

    def __call__(self, im: Image.Image) -> Image.Image:
        import numpy as np
        import torch

        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            y = self._tiled(x)
        out = (y.squeeze(0).permute(1, 2, 0).clamp(0, 1) * 255.0).round().byte().cpu().numpy()
        return Image.fromarray(out, "RGB")

    def _run(self, x: "Any") -> "Any":
        model = self.model.model
        dtype = next(model.parameters()).dtype
        return model(x.to(dtype)).float()

    def _tiled(self, x: "Any") -> "Any":
        import torch

        _, c, h, w = x.shape
        s = self.scale
        if not self.tile or (h <= self.tile and w <= self.tile):
            return self._run(x)
        out = torch.zeros((1, c, h * s, w * s), device=x.device)
        step, ov = self.tile, self.overlap
        for top in range(0, h, step):
            for left in range(0, w, step):
                # read the tile with `ov` pixels of context, keep only its own part
                t0, l0 = max(0, top - ov), max(0, left - ov)
                t1, l1 = min(h, top + step + ov), min(w, left + step + ov)
                y = self._run(x[:, :, t0:t1, l0:l1])
                bh, bw = min(step, h - top), min(step, w - left)
                oy, ox = (top - t0) * s, (left - l0) * s
                out[:, :, top * s:(top + bh) * s, left * s:(left + bw) * s] = y[:, :, oy:oy + bh * s, ox:ox + bw * s]
        return out


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("upscale.device = 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
    return device


def load_spandrel(model_path: str | Path, device: str = "auto", tile: int = 256, overlap: int = 16) -> SpandrelUpscaler:
    """Load an ESRGAN-family model file with spandrel (fp16 on CUDA when the model supports it)."""
    from spandrel import ImageModelDescriptor, ModelLoader

    path = Path(model_path)
    if not path.is_file():
        raise ModelMissing(
            f"upscale model file not found: {path}. Download one (e.g. RealESRGAN_x4plus.pth) and set "
            "`[upscale] model = \"path/to/file\"`, or use `backend = \"lanczos\"`"
        )
    dev = pick_device(device)
    descriptor = ModelLoader(device=dev).load_from_file(str(path))
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.input_channels != 3:
        raise ValueError(f"{path.name}: not an RGB image-to-image model ({descriptor.architecture.name})")
    if descriptor.scale < 1:
        raise ValueError(f"{path.name}: scale {descriptor.scale} is not an upscaler")
    descriptor.eval()
    if dev == "cuda" and descriptor.supports_half:
        descriptor.half()
    return SpandrelUpscaler(descriptor, dev, tile, overlap, f"{path.name} ({descriptor.architecture.name} x{descriptor.scale})")


def spandrel_upscale(im: Image.Image, size: tuple[int, int], upscaler: SpandrelUpscaler) -> tuple[Image.Image, int]:
    """Run the model until the picture covers `size`, then Lanczos to `size`. Returns (image, passes)."""
    out, passes = im.convert("RGB"), 0
    if upscaler.scale == 1:  # a 1x filter (JPEG/noise clean-up): one pass, then Lanczos
        out, passes = upscaler(out), 1
    while out.width < size[0] or out.height < size[1]:
        out, passes = upscaler(out), passes + 1
    if out.size != size:
        out = out.resize(size, Image.Resampling.LANCZOS)
    return out, passes
