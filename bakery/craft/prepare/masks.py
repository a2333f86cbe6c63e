"""Masks: a greyscale loss mask per image, and its quality check (rules.md §6).

The model is transparent-background's InSPyReNet (SwinB backbone), run the way
`transparent-background --type map` runs it: a saliency map scaled to the
image, white = train, black = ignore. Only a local checkpoint file is used;
nothing is ever downloaded, and with no checkpoint there are no masks.

Mask QA works on a mask's 256-bin histogram, so changing a threshold never
re-runs the model. A mask is rejected when it is all black, nearly empty,
nearly full, or "grey" (a large share of the masked area is mid-grey: the
model did not separate the subject). Rejected images train without masked loss.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bakery.craft.prepare.batches import make_and_keep
from bakery.manifest import ImageRef

MODES = ("base", "fast", "base-nightly")
# The library reads its config.yaml from $TRANSPARENT_BACKGROUND_FILE_PATH/.transparent-background/.
CONFIG_ENV = "TRANSPARENT_BACKGROUND_FILE_PATH"
FOREGROUND_LEVEL = 128  # a mask pixel at or above this counts as foreground
RELEASES_URL = "https://github.com/plemeri/transparent-background/releases"

DISABLED_MESSAGE = (
    "masks: no checkpoint configured, so no masks are made and every image trains without masked loss. "
    "To make masks, download a transparent-background checkpoint (ckpt_base.pth for mode 'base', "
    f"ckpt_fast.pth for mode 'fast', from {RELEASES_URL}) and set it in the recipe:\n"
    '  [masks]\n  checkpoint = "/path/to/ckpt_base.pth"'
)


class MaskSetupError(RuntimeError):
    """The mask model cannot be used as configured (the message names the recipe key)."""


# -- quality check ------------------------------------------------------------------
@dataclass(frozen=True)
class MaskQA:
    black_level: int = 16  # a pixel at or below this is black
    min_foreground: float = 0.02  # share of the image at >= 128: below it, "nearly empty"
    max_foreground: float = 0.98  # above it, "nearly full"
    grey_low: int = 64  # the mid-grey band, inclusive
    grey_high: int = 191
    max_grey: float = 0.25  # share of the non-black area in the mid-grey band: above it, "grey"


def histogram(mask: np.ndarray) -> list[int]:
    """256-bin histogram of an 8-bit greyscale mask."""
    return np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256).tolist()


def qa_reason(hist: Sequence[int], qa: MaskQA) -> str | None:
    """None when the mask is usable, else why it is rejected."""
    h = np.asarray(hist, dtype=np.int64)
    if h.shape != (256,):
        raise ValueError(f"expected a 256-bin histogram, got {h.shape}")
    total = int(h.sum())
    if total == 0:
        return "empty mask (no pixels)"
    non_black = int(h[qa.black_level + 1 :].sum())
    if non_black == 0:
        return f"all black (no pixel above {qa.black_level})"
    fg = h[FOREGROUND_LEVEL:].sum() / total
    if fg < qa.min_foreground:
        return f"nearly empty: foreground is {fg:.1%} of the image (min_foreground {qa.min_foreground:.1%})"
    if fg > qa.max_foreground:
        return f"nearly full: foreground is {fg:.1%} of the image (max_foreground {qa.max_foreground:.1%})"
    grey = h[qa.grey_low : qa.grey_high + 1].sum() / non_black
    if grey > qa.max_grey:
        return (
            f"grey: {grey:.1%} of the masked area is mid-grey ({qa.grey_low}-{qa.grey_high}, "
            f"max_grey {qa.max_grey:.1%}): the subject is not separated"
        )
    return None


@dataclass(frozen=True)
class Mask:
    image_hash: str
    mask_hash: str  # the mask's file in the store
    histogram: list[int]
    width: int = 0
    height: int = 0


@dataclass
class MaskRun:
    images: list[ImageRef]  # every picture, with `mask` set where its mask passed QA
    verdicts: list[dict]  # `mask_qa` rows: image_hash, mask_hash, accepted, reason
    rejected: list[tuple[ImageRef, str]]
    made: int  # masks the model made in this run


def mask_pictures(pictures: Sequence[ImageRef], known: Mapping[str, Mask], todo: Sequence[ImageRef],
                  make: Callable[[ImageRef], Mask] | None, keep: Callable[[list[tuple[ImageRef, Mask]]], None],
                  qa: MaskQA,
                  advance: Callable[[], None] = lambda: None, batch: int = 32) -> MaskRun:
    """The masks stage: `make` a mask for each picture of `todo`, `keep` them in batches (a killed run
    keeps what it made), then check every picture's mask (known or new) with QA.

    `make` raises OSError for a picture it cannot read: that picture trains without masked loss.
    """
    made, failed = make_and_keep(todo, make, keep, batch, advance, skip=OSError)  # type: ignore[arg-type]
    masks = {**known, **{ref.hash: m for ref, m in made.items()}}
    failed_by = {ref.hash: f"cannot read image: {why}" for ref, why in failed.items()}  # a file gone, or unreadable
    return judge_masks(pictures, masks, failed_by, qa, len(todo))


def judge_masks(pictures: Sequence[ImageRef], masks: Mapping[str, Mask], failed: Mapping[str, str], qa: MaskQA,
                made: int = 0) -> MaskRun:
    """Mask QA of every picture: an accepted mask goes on the picture, a rejected one is recorded with why."""
    images, verdicts, rejected = [], [], []
    for ref in pictures:
        mask = masks.get(ref.hash) if ref.hash not in failed else None
        reason = failed.get(ref.hash) or qa_reason(mask.histogram, qa)  # type: ignore[union-attr]
        images.append(ImageRef(ref.name, ref.hash, mask.mask_hash if mask and reason is None else ""))
        verdicts.append({"image_hash": ref.hash, "mask_hash": mask.mask_hash if mask else None,
                         "accepted": reason is None, "reason": reason})
        if reason is not None:
            rejected.append((ref, reason))
    return MaskRun(images, verdicts, rejected, made)


def mask_png(mask: Image.Image) -> bytes:
    """The stored form of a mask: an 8-bit greyscale PNG (deterministic bytes for equal pixels)."""
    out = io.BytesIO()
    mask.convert("L").save(out, "PNG", compress_level=6)
    return out.getvalue()


def as_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """What the model sees: RGB, transparency composited onto white (as the alpha stage does)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


# -- the model ------------------------------------------------------------------------
def _package_config() -> Path:
    spec = importlib.util.find_spec("transparent_background")
    if spec is None or not spec.submodule_search_locations:
        raise MaskSetupError("masks: the transparent-background package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "config.yaml"


def write_config(config_dir: Path, mode: str, size: int | None) -> Path:
    """Our copy of the library's config.yaml (it reads it from $TRANSPARENT_BACKGROUND_FILE_PATH).

    `size` overrides the mode's network input size (1024 base, 384 fast).
    """
    import yaml

    config = yaml.safe_load(_package_config().read_text(encoding="utf-8"))
    if mode not in config:
        raise MaskSetupError(f"masks.mode: must be one of {sorted(config)}, got {mode!r}")
    if size is not None:
        config[mode]["base_size"] = [size, size]
    path = Path(config_dir) / ".transparent-background" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


@contextmanager
def _quiet_import() -> Iterator[None]:
    """Import transparent-background without its side effects on our process.

    Its imports add a handler to the root logger (which re-formats every Prefect log
    line after it) and warn about flet (its GUI) and torch.meshgrid.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _import_library(config_dir: Path):
    # albumentations checks PyPI for updates on import unless told not to.
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    os.environ[CONFIG_ENV] = str(config_dir)
    with _quiet_import():
        import transparent_background
    return transparent_background


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if torch.backends.mps.is_available():
            return "mps:0"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MaskSetupError("masks.device: 'cuda' asked for, but torch sees no CUDA device (use 'auto' or 'cpu')")
    return "cuda:0" if device == "cuda" else device


def check_checkpoint(checkpoint: Path | str) -> Path:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise MaskSetupError(
            f"masks.checkpoint: no file at {checkpoint}; give the path of a transparent-background "
            f"checkpoint file (ckpt_base.pth or ckpt_fast.pth from {RELEASES_URL})"
        )
    return checkpoint


class MaskModel:
    """transparent-background's Remover on a local checkpoint; `predict` gives the greyscale map."""

    def __init__(self, checkpoint: Path | str, config_dir: Path | str, mode: str = "base",
                 size: int | None = None, device: str = "auto"):
        checkpoint = check_checkpoint(checkpoint)
        config_dir = Path(config_dir)
        write_config(config_dir, mode, size)
        self.device = pick_device(device)
        library = _import_library(config_dir)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # ckpt given: the library loads that file and downloads nothing.
                self.remover = library.Remover(mode=mode, ckpt=str(checkpoint), device=self.device, resize="static")
        except Exception as exc:  # torch.load / load_state_dict: pickle, zip and key-mismatch errors alike
            first = " ".join(str(exc).split()) or type(exc).__name__
            raise MaskSetupError(
                f"masks.checkpoint: {checkpoint} is not a transparent-background (InSPyReNet SwinB) "
                f"checkpoint: {first[:300]}"
            ) from exc
        self.mode, self.size = mode, size

    def predict(self, image: Image.Image) -> Image.Image:
        """The map `transparent-background --type map` writes, as one 8-bit channel at the image's size."""
        import torch

        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            out = self.remover.process(as_rgb(image), type="map")
        return out.convert("L")

    def close(self) -> None:
        import gc

        import torch

        del self.remover
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
