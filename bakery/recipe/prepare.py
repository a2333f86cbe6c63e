"""The recipe's prepare sections: [dedupe], [alpha], [trim], [upscale], [masks], [crops], [buckets]."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bakery.recipe.base import _Section


class DedupeParams(_Section):
    # Identical pixels collapse to one image (different files of the same picture).
    exact: bool = True
    # Near-duplicates: pHash AND dHash (64 bits each) within these Hamming distances, AND
    # 4x4 colour thumbnails within `colour_threshold` (largest channel difference, 0-255).
    # Measured on generated pictures: resized / re-encoded JPEG copies differ by <= 4 / 4
    # bits and <= 3 in colour, a 2.5 % crop by 2-10 / 0-13 bits and <= 23 in colour,
    # different pictures by >= 20 / >= 16 bits; the same drawing in a red vs a blue
    # outfit by only 0-8 / 5-12 bits but >= 157 in colour.
    near: bool = True
    phash_threshold: Annotated[int, Field(ge=0, le=32)] = 8
    dhash_threshold: Annotated[int, Field(ge=0, le=64)] = 12
    colour_threshold: Annotated[int, Field(ge=0, le=255)] = 32
    # Images (name or hash prefix >= 6 digits) never dropped as near-duplicates.
    keep: list[str] = []


def _colour(value: str) -> str:
    from PIL import ImageColor

    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise ValueError(f"not a colour name or #rrggbb: {value!r}") from None
    return value


class AlphaParams(_Section):
    # rules.md §4: composite onto white, never train on alpha.
    background: str = "white"

    _check = field_validator("background")(classmethod(lambda cls, v: _colour(v)))


class TrimParams(_Section):
    # rules.md §3: ImageMagick `-fuzz 20% -trim`.
    enabled: bool = True
    fuzz: Annotated[float, Field(ge=0, le=1)] = 0.2
    # Never trim a side below this many pixels.
    min_size: Annotated[int, Field(ge=1)] = 64


class UpscaleParams(_Section):
    # rules.md §5: images below buckets.resolution² pixels are upscaled until they reach it.
    enabled: bool = True
    backend: Literal["lanczos", "spandrel"] = "lanczos"
    # spandrel: an ESRGAN-family model file (.pth / .safetensors), e.g. RealESRGAN_x4plus.pth.
    model: Path | None = None
    # Tiles (pixels of input) for large images; 0 = whole image at once.
    tile: Annotated[int, Field(ge=0)] = 256
    tile_overlap: Annotated[int, Field(ge=0)] = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Most a picture is enlarged per side; one that would need more is skipped with its reason (rules.md §5
    # *check*: list them). 4 is the native scale of the guide's ESRGAN models (RealESRGAN_x4plus,
    # x4plus_anime_6B): one model pass, no detail invented past it; at resolution 512 it takes 128x128 and up.
    max_factor: Annotated[float, Field(ge=1)] = 4.0
    # Pictures upscaled however far they must grow (name or hash prefix >= 6 digits, as dedupe.keep).
    keep_small: list[str] = []

    @model_validator(mode="after")
    def _model_for_spandrel(self) -> "UpscaleParams":
        if self.backend == "spandrel" and self.model is None:
            raise ValueError("backend 'spandrel' needs `model = \"path/to/RealESRGAN_x4plus.pth\"` (a local file)")
        if self.tile and self.tile_overlap * 2 >= self.tile:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be < half of tile ({self.tile})")
        return self


class MaskParams(_Section):
    """rules.md §6: a greyscale loss mask per image (white = train), checked before use."""

    # A transparent-background checkpoint file (ckpt_base.pth / ckpt_fast.pth). None: no masks.
    checkpoint: Path | None = None
    mode: Literal["base", "fast", "base-nightly"] = "base"
    # Network input side in px; None = the mode's own (1024 base, 384 fast). Smaller is faster, coarser.
    size: Annotated[int, Field(ge=32, multiple_of=32)] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mask QA: a rejected mask leaves its image without masked loss (recorded with the reason).
    black_level: Annotated[int, Field(ge=0, le=254)] = 16
    min_foreground: Annotated[float, Field(ge=0, le=1)] = 0.02
    max_foreground: Annotated[float, Field(ge=0, le=1)] = 0.98
    grey_low: Annotated[int, Field(ge=1, le=254)] = 64
    grey_high: Annotated[int, Field(ge=1, le=254)] = 191
    max_grey: Annotated[float, Field(ge=0, le=1)] = 0.25

    @model_validator(mode="after")
    def _bands(self) -> "MaskParams":
        if self.min_foreground >= self.max_foreground:
            raise ValueError(
                f"min_foreground ({self.min_foreground}) must be < max_foreground ({self.max_foreground})"
            )
        if not self.black_level < self.grey_low <= self.grey_high:
            raise ValueError(
                f"need black_level < grey_low <= grey_high, got {self.black_level}, {self.grey_low}, {self.grey_high}"
            )
        return self


class CropsParams(_Section):
    """rules.md §7-§8: framing from a detector, face crops of full-body pictures, the framing balance."""

    enabled: bool = True
    # deepghs ONNX YOLO detectors (imgutils' face / head / person / half-body models, `model.onnx`).
    # No face_model and no head_model: AnimeFace (python-animeface) finds faces when installed.
    face_model: Path | None = None
    head_model: Path | None = None
    person_model: Path | None = None
    halfbody_model: Path | None = None
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.25
    iou: Annotated[float, Field(gt=0, le=1)] = 0.7
    # The longest side the detectors see, the picture's aspect kept (imgutils' allow_dynamic, sides rounded up to
    # 32). Unset: stretched to the model's own size (imgutils' default). Smaller runs faster on a CPU and misses
    # more small faces; it needs a model exported with a dynamic input (a fixed one is refused).
    detector_size: Annotated[int, Field(ge=32)] | None = None
    # A full-body picture whose face is shorter than this after bucketing gets portrait / upper-body crops.
    min_face_px: Annotated[int, Field(ge=1)] = 64
    # Crops with a shorter side than this (in the picture's pixels) are not made.
    min_crop_side: Annotated[int, Field(ge=16)] = 256
    # rules.md §8: portraits (above the heart) train in the concept named `misc_concept`.
    portraits_to_misc: bool = False
    misc_concept: str = "misc"
    # Keep the detected face inside kohya's bucket crop (the buckets stage pre-crops where it must).
    keep_faces: bool = True


class BucketParams(_Section):
    resolution: Annotated[int, Field(ge=64)] = 512
    min_side: Annotated[int, Field(ge=64)] = 256
    max_side: Annotated[int, Field(ge=64)] = 1024
    step: Annotated[int, Field(ge=8)] = 64
    max_buckets: Annotated[int, Field(gt=0)] = 9
    # kohya's --bucket_no_upscale.
    no_upscale: bool = False
    # Resize + centre-crop every image to its bucket after merging to <= max_buckets.
    snap: bool = False
    # Report: buckets with <= this many images are "tiny"; images shrinking more than
    # max_downscale times lose detail (crop a portrait instead).
    tiny_bucket: Annotated[int, Field(ge=0)] = 2
    max_downscale: Annotated[float, Field(gt=1)] = 2.0

    @model_validator(mode="after")
    def _sides(self) -> "BucketParams":
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        for key in ("min_side", "max_side", "resolution"):
            if getattr(self, key) % self.step:
                raise ValueError(f"{key} ({getattr(self, key)}) must be a multiple of step ({self.step})")
        return self
