"""The recipe: one TOML file, one pydantic model, the single source of every parameter.

Defaults follow the guide's numbers (shared/guide/rules.md): 512 px, buckets
256-1024 step 64, LoRA dim 32 alpha 16, 8 epochs, ~300 steps per epoch per concept.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bakery.craft.caption.tags import DEFAULT_DELETE, DEFAULT_SYNONYMS
from bakery.families import apply_family

# Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 178_956_970

# The guide's source-quality ranking for 2D characters, best first (rules.md §1).
SOURCE_KINDS = (
    "fanart_hires",
    "monochrome_hires",
    "concept_art",
    "monochrome_lowres",
    "screencap_hires",
    "art_3d",
    "colour_lowres",
    "ai",
    "screencap_lowres",
    "figure_photo",
    "shop_photo",
    "cosplay",
    "chibi",
    "unknown",
)
SourceKind = Literal[SOURCE_KINDS]  # type: ignore[valid-type]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class RecipeError(ValueError):
    """A recipe that cannot be used; `problems` holds one line per bad key."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class _Section(BaseModel):
    # Unknown keys are typos more often than not: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Project(_Section):
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "my_lora"
    # Relative paths are relative to the recipe file.
    workdir: Path = Path("work")


class FolderSource(_Section):
    kind: Literal["folder"] = "folder"
    path: Path
    recursive: bool = True
    # Where the images come from, in the guide's quality ranking (rules.md §1).
    source_kind: SourceKind = "unknown"


class _BooruSource(_Section):
    """A booru search (rules.md §1): the site's own tag syntax, newest posts first."""

    tags: str
    # Posts to take (after the ratings/min_score filters, usable files only).
    limit: Annotated[int, Field(gt=0, le=100_000)] = 200
    ratings: list[Literal["g", "s", "q", "e"]] = []  # [] = every rating
    min_score: int | None = None
    # Hosts (besides base_url's own) that files may come from; "*.example.com" covers subdomains.
    file_hosts: list[str] = []
    # Credentials: names of environment variables, or a Prefect Secret block whose value is
    # JSON {"user": ..., "api_key": ...} (or "user:api_key"). Never the secrets themselves.
    user_env: str = ""
    api_key_env: str = ""
    secret_block: str | None = None
    source_kind: SourceKind = "unknown"
    page_size: Annotated[int, Field(gt=0, le=200)] = 100

    @field_validator("tags")
    @classmethod
    def _tags_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty (the site's search, e.g. \"character_a absurdres\")")
        return " ".join(v.split())

    @field_validator("base_url", check_fields=False)
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"must not carry a query or fragment, got {v!r}")
        return v.rstrip("/")

    @field_validator("file_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+", host):
                raise ValueError(f"must be host names like 'cdn.donmai.us' or '*.donmai.us', got {host!r}")
        return [h.lower() for h in v]


class DanbooruSource(_BooruSource):
    kind: Literal["danbooru"] = "danbooru"
    base_url: str = "https://danbooru.donmai.us"
    file_hosts: list[str] = ["cdn.donmai.us", "*.donmai.us"]
    user_env: str = "DANBOORU_LOGIN"
    api_key_env: str = "DANBOORU_API_KEY"


class GelbooruSource(_BooruSource):
    kind: Literal["gelbooru"] = "gelbooru"
    base_url: str = "https://gelbooru.com"
    file_hosts: list[str] = ["*.gelbooru.com"]
    user_env: str = "GELBOORU_USER_ID"
    api_key_env: str = "GELBOORU_API_KEY"
    page_size: Annotated[int, Field(gt=0, le=100)] = 100


BOORU_KINDS = ("danbooru", "gelbooru")
BooruSource = DanbooruSource | GelbooruSource
Source = Annotated[FolderSource | DanbooruSource | GelbooruSource, Field(discriminator="kind")]


class Outfit(_Section):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    trigger: str
    # Glob patterns over the images' source-relative paths.
    paths: list[str]
    # rules.md §8: ~100 steps per epoch per sub-concept.
    target_steps: Annotated[int, Field(gt=0)] = 100
    # Garment tags this outfit trigger absorbs (names or globs); footwear is refused (rules.md §10).
    absorb: list[str] = []
    # Also absorb every garment tag found in >= the concept's absorb_min_share of the outfit's images.
    auto_absorb: bool = True


class Concept(_Section):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    trigger: str
    paths: list[str] = ["**"]
    # fluid | semi_static | static (characters), or a style LoRA's captioning mode (rules.md §10):
    # style_no_tags (UNet only), style_trigger_only, style_all_tags, style_all_tags_trigger.
    prune: Literal[
        "fluid", "semi_static", "static",
        "style_no_tags", "style_trigger_only", "style_all_tags", "style_all_tags_trigger",
    ] = "semi_static"
    # rules.md §8: ~300 steps per epoch per concept (Prodigy).
    target_steps: Annotated[int, Field(gt=0)] = 300
    outfits: list[Outfit] = []
    # More triggers after the first (CharaAPLUSCharaB: trigger = "CharaA", extra_triggers = ["CharaB"]).
    extra_triggers: list[str] = []
    # Tags (names or globs) always pruned in this concept's folders; tags never pruned.
    prune_tags: list[str] = []
    keep_tags: list[str] = []
    # Notable anatomy the trigger absorbs besides hair/eye colour, hairstyle and makeup.
    intrinsic: list[str] = []
    # Prune people-count tags (1girl, 2girls, multiple_girls, solo): groups of several characters.
    prune_people_count: bool = False
    # rules.md §10 note: a single-outfit set goes in twice, pruned with the outfit trigger and
    # unpruned without it (folder `<outfit>_unpruned`).
    duplicate_split: bool = False
    # Share of an outfit's images a garment tag must appear in to be absorbed automatically.
    absorb_min_share: Annotated[float, Field(gt=0, le=1)] = 0.5

    @field_validator("trigger")
    @classmethod
    def _trigger_is_one_tag(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if "," in v:
            raise ValueError("must be a single tag (no commas)")
        return v.strip()


class IngestParams(_Section):
    max_pixels: Annotated[int, Field(gt=0)] = DEFAULT_MAX_PIXELS
    max_file_mb: Annotated[float, Field(gt=0)] = 256.0
    formats: list[Literal["PNG", "JPEG", "WEBP", "BMP", "GIF", "AVIF", "TIFF"]] = [
        "PNG",
        "JPEG",
        "WEBP",
        "BMP",
        "GIF",
        "AVIF",
    ]


class ConvertParams(_Section):
    # Working copies: speed over size (level 1 is ~5x faster than Pillow's 6).
    png_compress_level: Annotated[int, Field(ge=0, le=9)] = 1


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


# Named profiles (rules.md §12): the fields they set, unless the recipe sets them itself.
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "none": {},
    # SD1.5 on an 8 GB card: batch 2, fp16/bf16, gradient checkpointing (needed for DoRA), cached latents.
    "sd15_8gb": {"batch_size": 2, "mixed_precision": "auto", "gradient_checkpointing": True, "cache_latents": True},
    # SDXL/Pony on 12 GB at 1024: gradient checkpointing, UNet only with Prodigy (it overtrains the SDXL TE).
    "sdxl_12gb": {"batch_size": 1, "mixed_precision": "auto", "gradient_checkpointing": True, "cache_latents": True,
                  "optimizer": "prodigy", "train_text_encoder": False},
    # A large GPU (24 GB+): bigger batches, no checkpointing.
    "large_gpu": {"batch_size": 4, "mixed_precision": "auto", "gradient_checkpointing": False, "cache_latents": True},
}


# rules.md §12: the dim/alpha of these networks when the recipe leaves them out (DyLoRA 64/32, Diag-OFT dim 2).
NETWORK_DEFAULTS: dict[str, dict[str, Any]] = {"dylora": {"network_dim": 64, "network_alpha": 32.0},
                                               "diag-oft": {"network_dim": 2}}
IA3_LR = (5e-3, 1e-2)  # rules.md §12: IA3's learning rate with AdamW (Prodigy: 1)
DYLORA_UNIT = 4  # rules.md §12 (bakery/craft/bake/networks/lycoris_net.py trains in units of this many ranks)


def _check_lycoris_network(t: Any) -> None:
    """rules.md §12's numbers for IA3, DyLoRA and Diag-OFT."""
    if t.network_type == "dylora" and t.network_dim % DYLORA_UNIT:
        raise ValueError(f"network_dim must be a multiple of {DYLORA_UNIT} (the DyLoRA unit) for dylora, "
                         f"got {t.network_dim}")
    if t.network_type == "diag-oft" and t.network_dim != 2:
        raise ValueError(f"network_dim must be 2 for diag-oft (rules.md §12: 1-2; LyCORIS's dim is the block size "
                         f"and 1x1 blocks cannot rotate), got {t.network_dim}")
    lr = t.learning_rate
    if t.network_type == "ia3" and t.optimizer != "prodigy" and lr is not None and not IA3_LR[0] <= lr <= IA3_LR[1]:
        raise ValueError(f"learning_rate must be between {IA3_LR[0]} and {IA3_LR[1]} for ia3 with {t.optimizer} "
                         f"(rules.md §12), got {lr}")


class TrainParams(_Section):
    # A named profile fills the fields the recipe leaves out (see TRAIN_PROFILES).
    profile: Literal["none", "sd15_8gb", "sdxl_12gb", "large_gpu"] = "none"
    # The base model's family fills the keys the recipe leaves out, in every section (bakery/families.py):
    # sdxl, pony, illustrious, noobai: SDXL at 1024, clip skip 2, x1/2 steps, UNet only with Prodigy;
    # pony adds its score tags to captions and evaluation prompts; noobai_vpred adds v-prediction + zero terminal SNR.
    family: Literal["none", "sdxl", "pony", "illustrious", "noobai", "noobai_vpred"] = "none"
    # A .safetensors checkpoint, a diffusers folder, a hub id, or "tiny" (small random-weight SD1.5 shape:
    # proves the pipeline, not image quality).
    base_model: str | None = None
    vae: str | None = None  # optional external VAE (file or diffusers folder)
    architecture: Literal["auto", "sd15", "sdxl"] = "auto"
    output_name: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None  # None: project.name
    clip_skip: Literal[1, 2] = 2
    # v-prediction (kohya --v_parameterization) and zero terminal SNR (--zero_terminal_snr); None: as the base
    # model says (a checkpoint's `v_pred`/`ztsnr` keys or modelspec, a diffusers folder's scheduler config).
    v_parameterization: bool | None = None
    zero_terminal_snr: bool | None = None
    # ia3, dylora, diag-oft: LyCORIS's modules (rules.md §12); left out, dylora's dim/alpha are 64/32, diag-oft's dim 2.
    network_type: Literal["lora", "locon", "dora", "loha", "lokr", "ia3", "dylora", "diag-oft"] = "lora"
    network_dim: Annotated[int, Field(gt=0)] = 32
    network_alpha: Annotated[float, Field(gt=0)] = 16.0
    conv_dim: Annotated[int, Field(gt=0, le=64)] = 16
    conv_alpha: Annotated[float, Field(gt=0)] = 8.0
    train_unet: bool = True
    train_text_encoder: bool = True
    epochs: Annotated[int, Field(gt=0)] = 8
    batch_size: Annotated[int, Field(gt=0)] = 1
    optimizer: Literal["prodigy", "adamw", "adamw8bit", "came"] = "prodigy"
    # None: the guide's default for the optimizer (Prodigy 1.0, AdamW 1e-4; IA3 with AdamW/CAME 5e-3).
    learning_rate: Annotated[float, Field(gt=0)] | None = None
    unet_lr: Annotated[float, Field(gt=0)] | None = None  # None: learning_rate
    text_encoder_lr: Annotated[float, Field(gt=0)] | None = None  # None: learning_rate
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    d_coef: Annotated[float, Field(gt=0)] = 1.0  # Prodigy
    # None: cosine with restarts for AdamW, cosine for Prodigy, REX for CAME (rules.md §12).
    lr_scheduler: Literal["constant", "cosine", "cosine_with_restarts", "rex"] | None = None
    lr_restarts: Annotated[int, Field(ge=0)] = 1
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    loss_type: Literal["l2", "huber", "smooth_l1"] = "l2"
    huber_schedule: Literal["snr", "exponential", "constant"] = "snr"
    huber_c: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_snr_gamma: Annotated[float, Field(ge=0, le=10)] = 5.0
    noise_offset: Annotated[float, Field(ge=0)] = 0.0
    multires_noise_iterations: Annotated[int, Field(ge=0)] = 0
    multires_noise_discount: Annotated[float, Field(gt=0, le=1)] = 0.3
    ip_noise_gamma: Annotated[float, Field(ge=0)] = 0.0
    masked_loss: bool = True  # use the masks stage's masks where an image has one
    prior_loss_weight: Annotated[float, Field(ge=0)] = 1.0  # regularisation images
    keep_tokens: Annotated[int, Field(ge=0)] = 1
    shuffle_caption: bool = True
    caption_dropout_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    tag_dropout_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    token_warmup_min: Annotated[int, Field(ge=1)] = 1
    token_warmup_step: Annotated[int, Field(ge=0)] = 0  # 0: off
    flip_aug: bool = False  # only for symmetric characters
    cache_latents: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16 if supported, else fp16; fp32 on CPU
    gradient_checkpointing: bool | None = None  # None: on with CUDA
    save_precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    seed: int = 42
    save_every_n_epochs: Annotated[int, Field(gt=0)] = 1

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("profile") in TRAIN_PROFILES:
            return {**TRAIN_PROFILES[data["profile"]], **data}
        return data

    @model_validator(mode="before")
    @classmethod
    def _network_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("network_type") in NETWORK_DEFAULTS:
            return {**NETWORK_DEFAULTS[data["network_type"]], **data}
        return data

    @model_validator(mode="after")
    def _combinations(self) -> "TrainParams":
        if self.network_type in ("loha", "lokr") and self.network_dim > 32:
            raise ValueError(f"network_dim must be <= 32 for {self.network_type} (rules.md §12), got {self.network_dim}")
        _check_lycoris_network(self)
        if self.network_type == "dora" and self.optimizer == "adamw8bit":
            raise ValueError("dora with adamw8bit is not supported: use adamw or prodigy")
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("train_unet and train_text_encoder are both false: nothing to train")
        if self.device == "cpu" and self.optimizer == "adamw8bit":
            raise ValueError("optimizer adamw8bit needs CUDA (bitsandbytes), but device is 'cpu': use adamw")
        if self.device == "cpu" and self.mixed_precision in ("fp16", "bf16"):
            raise ValueError(f"mixed_precision {self.mixed_precision} needs CUDA, but device is 'cpu': use 'no' or 'auto'")
        if self.zero_terminal_snr and self.v_parameterization is False:
            raise ValueError("zero_terminal_snr needs v-prediction: set v_parameterization = true (or leave it unset)")
        if self.base_model == "tiny" and self.architecture == "sdxl":
            raise ValueError("base_model 'tiny' is SD1.5-shaped: architecture must be 'auto' or 'sd15'")
        return self

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        if self.optimizer == "prodigy":
            return 1.0
        return IA3_LR[0] if self.network_type == "ia3" else 1e-4

    @property
    def effective_lr_scheduler(self) -> str:
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        return {"prodigy": "cosine", "came": "rex"}.get(self.optimizer, "cosine_with_restarts")


class EvaluateParams(_Section):
    # rules.md §13: an XYZ grid of the last epochs x LoRA weights with fixed seeds and prompts.
    # [] = each trigger alone, and each trigger with its group's `tags_per_prompt` most frequent kept tags.
    prompts: list[str] = []
    # Put before every evaluation prompt (the recipe's and the default ones), e.g. Pony's score tags.
    prompt_prefix: str = ""
    negative_prompt: str = "lowres, bad anatomy, worst quality"
    weights: Annotated[list[Annotated[float, Field(ge=0, le=2)]], Field(min_length=1)] = [0.0, 0.25, 0.5, 0.75, 1.0]
    seeds: Annotated[list[int], Field(min_length=1)] = [1234, 5678]
    # The last K saved epochs; None = all of them.
    last_epochs: Annotated[int, Field(gt=0)] | None = None
    tags_per_prompt: Annotated[int, Field(ge=0)] = 3
    sampler: Literal["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim"] = "euler_a"
    steps: Annotated[int, Field(gt=0)] = 20
    cfg_scale: Annotated[float, Field(gt=0)] = 7.0
    width: Annotated[int, Field(ge=64, multiple_of=8)] = 512
    height: Annotated[int, Field(ge=64, multiple_of=8)] = 512
    # Effect check: weight 0 vs 1 closer than this (mean |pixel difference|, 0-255) = "LoRA does nothing".
    effect_min: Annotated[float, Field(ge=0)] = 1.0
    # Frying: the largest rise of saturation/contrast/high-frequency energy over weight 0 (0-1 scale)
    # that counts as fried; frying at a weight <= fry_max_weight means over-trained (rules.md §13).
    fry_threshold: Annotated[float, Field(gt=0, le=1)] = 0.25
    fry_max_weight: Annotated[float, Field(ge=0, le=2)] = 0.5
    # Loss rule: a relative rise above this between epochs counts as "rising"; a range below flat_tolerance is flat.
    loss_rise_tolerance: Annotated[float, Field(ge=0)] = 0.01
    loss_flat_tolerance: Annotated[float, Field(ge=0)] = 0.02
    # Likeness: a local CLIP or DINOv2 model folder (transformers format); None = colour-histogram proxy.
    likeness_model: str | None = None
    likeness_references: Annotated[int, Field(gt=0)] = 16  # training images per trigger compared against
    # Effect relative to seed variation: effect over the change between seeds at weight 0 below this =
    # "LoRA does nothing" (with one seed, one more base render per prompt measures that change).
    effect_min_ratio: Annotated[float, Field(ge=0)] = 0.2
    # Flexibility (needs [autotag] model): prompts asking the character for what the training set does not
    # show; "{trigger}" = each character trigger. None: one of bakery/craft/taste/judges/tags.py FLEX_DEFAULTS each; [] = off.
    flexibility_prompts: list[str] | None = None
    # Tag judges: a rise of bleed, or a drop of flexibility, over weight 0 bigger than this is flagged.
    tag_margin: Annotated[float, Field(gt=0, le=1)] = 0.25
    # Ranking: (epoch, weight) cells scoring within this of the best are tied (the data cannot tell them apart).
    rank_tolerance: Annotated[float, Field(ge=0, le=1)] = 0.05
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RegularisationParams(_Section):
    """rules.md §11: one image per training image by train.base_model, from its caption without the triggers."""

    # Off by default: one render per training image (cached; only new or changed captions are drawn again).
    # Bake trains on them with train.prior_loss_weight; export-kohya writes them to reg/<repeats>_<folder>/.
    enabled: bool = False
    steps: Annotated[int, Field(gt=0)] = 20
    cfg_scale: Annotated[float, Field(gt=0)] = 7.0
    # Renders are sized for this resolution at their training image's bucket (same aspect); None = buckets.resolution.
    size: Annotated[int, Field(ge=64, multiple_of=8)] | None = None
    negative_prompt: str = "lowres, bad anatomy, worst quality"
    sampler: Literal["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim"] = "euler_a"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TriggerCheckParams(_Section):
    """Is each trigger free? (rules.md §10, §13) Before bake, the base model renders every trigger alone over `seeds` seeds, and `controls` nonsense words likewise: (triggers + controls) x seeds renders. Judged by the [autotag] tagger and/or evaluate.likeness_model; with neither the check is skipped."""

    enabled: bool = True
    seeds: Annotated[int, Field(ge=2, le=64)] = 4  # renders per trigger (seeds 0 .. seeds-1)
    controls: Annotated[int, Field(ge=1, le=16)] = 3  # random nonsense words rendered as the "free" reference
    control_seed: int = 0  # which nonsense words (the same seed, the same words)
    steps: Annotated[int, Field(gt=0)] = 20
    size: Annotated[int, Field(ge=64, multiple_of=8)] = 512  # square renders, pixels
    cfg_scale: Annotated[float, Field(gt=0)] = 7.0
    sampler: Literal["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim"] = "euler_a"
    negative_prompt: str = "lowres, bad anatomy, worst quality"
    # A tag in >= this share of a trigger's renders (and in under half this share of the controls') is drawn.
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.75
    # Embedding: the trigger's renders this much more alike (mean pairwise cosine) than the controls' = consistent.
    embedding_margin: Annotated[float, Field(ge=0, le=2)] = 0.1
    error_on_contaminated: bool = False  # False: a contaminated trigger is a warning; True: it fails the run


class ScrapeParams(_Section):
    """How booru sources are fetched (politeness and robustness), shared by all of them."""

    # Danbooru refuses clients without a browser-like User-Agent (rules.md §1).
    user_agent: str = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    )
    requests_per_second: Annotated[float, Field(gt=0, le=50)] = 2.0  # API calls (searches, tag lookups)
    downloads: Annotated[int, Field(gt=0, le=32)] = 4  # concurrent file downloads
    downloads_per_second: Annotated[float, Field(gt=0)] | None = 8.0  # None = only bounded by `downloads`
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    backoff_s: Annotated[float, Field(ge=0)] = 1.0  # first retry waits ~this (doubling, with jitter)
    max_backoff_s: Annotated[float, Field(ge=0)] = 60.0  # also the longest Retry-After honoured
    max_file_mb: Annotated[float, Field(gt=0)] = 256.0
    drop_meta: bool = True  # meta-category tags (highres, absurdres, commentary ...)
    drop_namespaced: bool = True  # `foo:bar` tags (not `:3`; character/copyright tags kept)
    fetch_tag_counts: bool = True  # post count (and category) of every tag, once per tag
    # True: every run asks the site for new posts; False: the stage is cached like the others.
    recheck: bool = True
    # An HTTP(S) proxy for every booru request, e.g. "http://127.0.0.1:3128" (the environment's
    # HTTP_PROXY etc. are not used, nor netrc files).
    proxy: str | None = None
    # Also write `<md5>.<ext>` + `<md5>.txt` (the guide's sidecar) here, Grabber-style.
    export_dir: Path | None = None


class AutotagParams(_Section):
    # WD14 tagger: a folder holding model.onnx + selected_tags.csv, or a hub repo id
    # ("SmilingWolf/wd-v1-4-vit-tagger-v2"). None: captions come from booru tags and sidecars.
    model: str | None = None
    # Optional second tagger merged in (union, highest confidence): rules.md §9.
    second_model: str | None = None
    general_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.35
    character_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.85
    keep_rating: bool = False
    batch_size: Annotated[int, Field(gt=0)] = 8


class CaptionParams(_Section):
    # Where an image's tags come from, and how they combine: union of all, or the first source that has any.
    sources: list[Literal["user", "booru", "tagger"]] = ["user", "booru", "tagger"]
    merge: Literal["union", "first"] = "union"
    # Grabber/booru `namespace:tag` prefixes kept (prefix removed); the others are dropped (rules.md §9).
    keep_namespaces: list[str] = ["general", "character", "copyright"]
    delete: list[str] = list(DEFAULT_DELETE)
    synonyms: dict[str, str] = dict(DEFAULT_SYNONYMS)
    split: dict[str, list[str]] = {}
    redundancy: bool = True
    keep_generic: list[str] = []
    implies: dict[str, list[str]] = {}
    tag_style: Literal["underscore", "space"] = "underscore"
    keep_tokens_separator: bool = False  # write "trigger ||| tags" (kohya keep_tokens_separator)
    warn_caption_bytes: Annotated[int, Field(gt=0)] = 1024
    rare_tag_posts: Annotated[int, Field(ge=0)] = 500
    # Tags written first in every caption, before the triggers (kohya's caption_prefix), e.g. Pony's score tags;
    # train.keep_tokens must cover them and the trigger.
    prefix_tags: list[str] = []


class RepeatsParams(_Section):
    # rules.md §8 multipliers on target_steps: x1/2 SDXL, x3/5 when train.min_snr_gamma or
    # train.ip_noise_gamma is set, x1/3 for old anime / low-res screencaps; x1/2 with train.network_type "ia3"
    # (rules.md §12: IA3 needs half the steps).
    sdxl: bool = False
    snr_multiplier: bool = True
    old_anime: bool = False
    # The concept the step caps apply to (6,000 AdamW / 3,000 Prodigy); None = the first concept.
    main_concept: str | None = None


class ValidationParams(_Section):
    """Validation loss: a deterministic denoising loss per epoch on pictures never trained on.

    Held out: `per_group` pictures of each concept group (folder) of >= `min_group` pictures,
    at most `max_share` of the group. When no group is big enough the loss is measured on
    training pictures instead (`per_group` of each group), labelled "training pictures, not
    held out". Noise and timesteps are fixed (seeded from train.seed), the same every epoch.
    """

    enabled: bool = True
    per_group: Annotated[int, Field(gt=0)] = 1  # pictures held out of each group big enough (else validated on)
    min_group: Annotated[int, Field(ge=2)] = 8  # smallest group that gives up pictures
    max_share: Annotated[float, Field(gt=0, lt=1)] = 0.125  # most of a group held out
    # Timesteps per picture, evenly spread over the noise schedule (4: 125, 375, 625, 875 of 1000).
    timesteps: Annotated[int, Field(gt=0, le=50)] = 4


class SliderParams(_Section):
    """A slider (LECO, rules.md "LECO ou Sliders"): no pictures; the slide stage trains from the target and its two extremes."""

    target: Annotated[str, Field(min_length=1)]  # the class the slider moves, e.g. "skirt"
    positive: Annotated[list[str], Field(min_length=1)]  # strength +2 side, e.g. ["long_skirt"]
    negative: Annotated[list[str], Field(min_length=1)]  # strength -2 side, e.g. ["microskirt", "lowleg_skirt"]
    anchors: list[str] = []  # prompts the slider must leave as the base model draws them, at any strength
    # The prediction the slider moves from; None = the target (Concept Sliders). ai-toolkit and LECO default to "".
    neutral: str | None = None
    # Square training size in pixels (latents are 1/8 of it); None = by base model: 512 SD1.5, 1024 SDXL
    # (set 768 for a model trained at 768 px).
    resolution: Annotated[int, Field(ge=64, multiple_of=8)] | None = None
    steps: Annotated[int, Field(gt=0)] = 500  # the guide: a LECO burned well before 500 steps
    learning_rate: Annotated[float, Field(gt=0)] = 1e-4  # the guide: 1e-4 or a little less (2e-4 was too high)
    save_every_n_steps: Annotated[int, Field(gt=0)] = 50
    network_dim: Annotated[int, Field(gt=0)] = 8
    network_alpha: Annotated[float, Field(gt=0)] = 4.0
    guidance: Annotated[float, Field(gt=0)] = 1.0  # eta: how far +1 moves along (positive - negative)
    max_denoising_steps: Annotated[int, Field(ge=2)] = 50  # x_t: noise denoised 1..N-1 of N steps, CFG 3
    # auto: bf16 where supported, else fp32. Never fp16: it gives NaN losses (the guide).
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    save_precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    # Taste: strengths x saved steps x evaluate.seeds, rendered with the [evaluate] sampler, steps, CFG, size.
    strengths: Annotated[list[Annotated[float, Field(ge=-2, le=2)]], Field(min_length=2)] = [-2.0, -1.0, -0.5, 0.0,
                                                                                             0.5, 1.0, 2.0]
    prompts: list[str] = []  # [] = the target alone
    # Overcooked: a save whose extremes moved less than this share of their distance from strength 0 since the
    # save before (the guide: "when the extremes stop changing, it is overcooked").
    still_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.05
    # Tag judges: positive tags must rise, negative tags fall, by more than this from the lowest to the highest strength.
    tag_margin: Annotated[float, Field(ge=0, le=1)] = 0.1

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _never_fp16(cls, value: Any) -> Any:
        if value == "fp16":
            raise ValueError("fp16 gives NaN losses for sliders (the guide): use 'auto' (bf16 where supported, "
                             "else fp32), 'bf16' or 'no'")
        return value

    @property
    def positive_prompt(self) -> str:
        return ", ".join(self.positive)

    @property
    def negative_prompt(self) -> str:
        return ", ".join(self.negative)


class Variant(BaseModel):
    """A variant of [train] for a sweep: its name, then the [train] keys it changes (network_dim = 16, optimizer = "adamw", ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    # Names its LoRA files (`<output name>-<name>`) and its line in the sweep report.
    name: Annotated[str, Field(pattern=NAME_PATTERN)]

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _train_keys(self) -> "Variant":
        if "family" in self.overrides:  # its defaults reach beyond [train] (buckets, captions, evaluate)
            raise ValueError("train.family cannot vary between variants: it sets other sections too; sweep "
                             "one family per recipe")
        try:
            TrainParams.model_validate(self.overrides)
        except ValidationError as exc:  # each bad key named as it stands under [train]
            raise ValueError(_as_train_keys(exc)) from None
        return self


class SweepParams(_Section):
    """How the [[variants]] are baked: one after another here, or each as its own flow run on a work pool."""

    # A deployment of the bake flow on a work pool (e.g. "bake-lora/sweep-variant", deployments/prefect.yaml):
    # each variant becomes a flow run of it on a worker, which must reach the work dir (a shared folder).
    # None: the variants are baked one after another in this run.
    deployment: str | None = None
    heartbeat_s: Annotated[float, Field(gt=0)] = 5.0  # a variant's flow run writes its heartbeat file this often
    # No heartbeat for this long: its worker is lost; the variant runs again and resumes from its saved state.
    lost_after_s: Annotated[float, Field(gt=0)] = 120.0
    attempts: Annotated[int, Field(gt=0, le=10)] = 3  # flow runs one variant may take
    # Variants wait for a worker while none of the sweep's runs: this long, and the pool has no worker for them
    # (none started, or all gone): they are cancelled and reported. Long enough for a cloud GPU node to start;
    # 0: wait as long as it takes.
    no_worker_after_s: Annotated[float, Field(ge=0)] = 1800.0
    # Where the results are also copied, through fsspec ("s3://bucket/loras" with s3fs installed,
    # "file:///mnt/nas/loras"): each variant's LoRA files and report and the sweep report, under
    # <url>/<project name>/<sweep id>/. The work dir itself stays a folder. None: nowhere else.
    publish_url: str | None = None


class RuntimeParams(_Section):
    # Processes for per-image work; None = one per CPU core.
    workers: Annotated[int, Field(gt=0)] | None = None
    # Where per-image work runs: local processes, or Dask (prefect-dask's DaskTaskRunner).
    task_runner: Literal["processes", "dask"] = "processes"
    # An existing Dask scheduler (tcp://host:8786); unset = $BAKERY_DASK_ADDRESS, else a local cluster.
    dask_address: str | None = None
    # Images per Dask task: keeps a flow run to tens of task runs, not thousands.
    chunk_size: Annotated[int, Field(gt=0)] = 256


class Recipe(_Section):
    project: Project = Project()
    sources: list[Source] = []
    scrape: ScrapeParams = ScrapeParams()
    concepts: list[Concept] = []
    ingest: IngestParams = IngestParams()
    convert: ConvertParams = ConvertParams()
    dedupe: DedupeParams = DedupeParams()
    alpha: AlphaParams = AlphaParams()
    trim: TrimParams = TrimParams()
    upscale: UpscaleParams = UpscaleParams()
    masks: MaskParams = MaskParams()
    crops: CropsParams = CropsParams()
    buckets: BucketParams = BucketParams()
    train: TrainParams = TrainParams()
    regularisation: RegularisationParams = RegularisationParams()
    evaluate: EvaluateParams = EvaluateParams()
    trigger_check: TriggerCheckParams = TriggerCheckParams()
    runtime: RuntimeParams = RuntimeParams()
    autotag: AutotagParams = AutotagParams()
    captions: CaptionParams = CaptionParams()
    repeats: RepeatsParams = RepeatsParams()
    validation: ValidationParams = ValidationParams()
    variants: list[Variant] = []
    sweep: SweepParams = SweepParams()
    # A slider recipe: the slide stage in place of prepare, caption and bake (see SliderParams).
    slider: SliderParams | None = None

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="before")
    @classmethod
    def _apply_family(cls, data: Any) -> Any:
        return apply_family(data, TRAIN_PROFILES)

    @model_validator(mode="after")
    def _prefix_kept(self) -> "Recipe":
        n = len(self.captions.prefix_tags)
        if n and not self.captions.keep_tokens_separator and self.train.keep_tokens < n + 1:
            raise ValueError(f"train.keep_tokens ({self.train.keep_tokens}) must be >= {n + 1}: the "
                             f"{n} captions.prefix_tags and the trigger stay first when captions are shuffled")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> "Recipe":
        names = [c.name for c in self.concepts] + [o.name for c in self.concepts for o in c.outfits]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"concept/outfit names must be unique, repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _main_concept_exists(self) -> "Recipe":
        main = self.repeats.main_concept
        if main is not None and main not in [c.name for c in self.concepts]:
            raise ValueError(f"repeats.main_concept '{main}' is not a concept name")
        return self

    @model_validator(mode="after")
    def _misc_exists(self) -> "Recipe":
        misc = self.crops.misc_concept
        if self.crops.portraits_to_misc and misc not in [c.name for c in self.concepts]:
            raise ValueError(f"crops.portraits_to_misc: no concept named '{misc}' (add it or set crops.misc_concept)")
        return self

    @model_validator(mode="after")
    def _variants_valid(self) -> "Recipe":
        names = [v.name for v in self.variants]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"variant names must be unique, repeated: {', '.join(dupes)}")
        if self.variants and self.slider is not None:
            raise ValueError("[[variants]] vary the [train] of a picture LoRA: a [slider] recipe bakes none "
                             "(remove the variants or the [slider] section)")
        for v in self.variants:
            try:
                self.variant_train(v.name)
            except ValidationError as exc:  # the overrides clash with the recipe's [train]
                raise ValueError(f"variant {v.name}: {_as_train_keys(exc)}") from None
        return self

    def variant_train(self, name: str) -> TrainParams:
        """[train] with the variant's keys over it; its files are named `<output name>-<variant>`."""
        variant = next((v for v in self.variants if v.name == name), None)
        if variant is None:
            raise ValueError(f"no variant {name!r} in the recipe: set [[variants]] name (it has: "
                             f"{', '.join(v.name for v in self.variants) or 'none'})")
        data = {**self.train.model_dump(exclude_unset=True), **variant.overrides}
        data.setdefault("output_name", f"{self.train.output_name or self.project.name}-{name}")
        return TrainParams.model_validate(data)

    def for_variant(self, name: str) -> "Recipe":
        """The recipe one variant bakes: its [train], no [[variants]]."""
        return self.model_copy(update={"train": self.variant_train(name), "variants": []})

    def resolve(self, path: Path) -> Path:
        """A recipe path made absolute against the recipe file's folder."""
        return path if path.is_absolute() else (self._base_dir / path).resolve()

    @property
    def workdir(self) -> Path:
        return self.resolve(self.project.workdir)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def _describe(err: dict[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind == "union_tag_not_found":
        return f"'{ctx.get('discriminator', 'kind').strip(chr(39))}' is missing"
    if kind == "union_tag_invalid":
        return f"kind must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if kind == "string_pattern_mismatch":
        return f"must contain only letters, digits, '_', '-', '.', got {value!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{msg}, got {value!r}" if kind != "value_error" and not isinstance(value, dict) else msg


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("folder", "danbooru", "gelbooru"):  # discriminator tags add nothing for the user
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(recipe)"


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: `train.network_dim: must be > 0, got -4`."""
    return [f"{_key_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]


def _as_train_keys(exc: ValidationError) -> str:
    """A [train] validation's problems named as keys under [train], on one line."""
    return "; ".join(line.replace("(recipe): ", "train: ", 1) if line.startswith("(recipe)") else f"train.{line}"
                     for line in format_errors(exc))


def parse_recipe(data: dict[str, Any], base_dir: Path, origin: str = "<recipe>") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(origin, format_errors(exc)) from None
    recipe._base_dir = base_dir.resolve()
    return recipe


def load_recipe(path: Path | str) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(path, [f"cannot read recipe: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(path, [f"not valid TOML: {exc}"]) from None
    return parse_recipe(data, path.parent, str(path))


def stage_params_json(params: BaseModel | dict[str, Any]) -> str:
    """Canonical JSON of a stage's parameters (stable across runs, used in cache keys)."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def starter_recipe_text() -> str:
    return (Path(__file__).parent / "templates" / "recipe.toml").read_text(encoding="utf-8")


def slug_ok(name: str) -> bool:
    return re.match(NAME_PATTERN, name) is not None
