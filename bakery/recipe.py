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

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bakery.craft.tags import DEFAULT_DELETE, DEFAULT_SYNONYMS

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


Source = Annotated[FolderSource, Field(discriminator="kind")]


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


class BucketParams(_Section):
    resolution: Annotated[int, Field(ge=64)] = 512
    min_side: Annotated[int, Field(ge=64)] = 256
    max_side: Annotated[int, Field(ge=64)] = 1024
    step: Annotated[int, Field(ge=8)] = 64
    max_buckets: Annotated[int, Field(gt=0)] = 9

    @model_validator(mode="after")
    def _sides(self) -> "BucketParams":
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        for key in ("min_side", "max_side", "resolution"):
            if getattr(self, key) % self.step:
                raise ValueError(f"{key} ({getattr(self, key)}) must be a multiple of step ({self.step})")
        return self


class TrainParams(_Section):
    base_model: str | None = None
    clip_skip: Literal[1, 2] = 2
    network_type: Literal["lora", "locon", "dora", "loha", "lokr"] = "lora"
    network_dim: Annotated[int, Field(gt=0)] = 32
    network_alpha: Annotated[float, Field(gt=0)] = 16.0
    conv_dim: Annotated[int, Field(gt=0)] = 16
    conv_alpha: Annotated[float, Field(gt=0)] = 8.0
    epochs: Annotated[int, Field(gt=0)] = 8
    batch_size: Annotated[int, Field(gt=0)] = 1
    optimizer: Literal["prodigy", "adamw", "adamw8bit", "came"] = "prodigy"
    # None: the guide's default for the optimizer (Prodigy 1.0, AdamW 1e-4).
    learning_rate: Annotated[float, Field(gt=0)] | None = None
    min_snr_gamma: Annotated[float, Field(ge=0, le=10)] = 5.0
    noise_offset: Annotated[float, Field(ge=0)] = 0.0
    ip_noise_gamma: Annotated[float, Field(ge=0)] = 0.0
    seed: int = 42
    save_every_n_epochs: Annotated[int, Field(gt=0)] = 1

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1.0 if self.optimizer == "prodigy" else 1e-4


class EvaluateParams(_Section):
    prompts: list[str] = []
    negative_prompt: str = "lowres, bad anatomy, worst quality"
    weights: list[Annotated[float, Field(ge=0, le=2)]] = [0.0, 0.25, 0.5, 0.75, 1.0]
    seeds: list[int] = [1234, 5678]
    steps: Annotated[int, Field(gt=0)] = 20
    cfg_scale: Annotated[float, Field(gt=0)] = 7.0


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


class RepeatsParams(_Section):
    # rules.md §8 multipliers on target_steps: x1/2 SDXL, x3/5 when train.min_snr_gamma or
    # train.ip_noise_gamma is set, x1/3 for old anime / low-res screencaps.
    sdxl: bool = False
    snr_multiplier: bool = True
    old_anime: bool = False
    # The concept the step caps apply to (6,000 AdamW / 3,000 Prodigy); None = the first concept.
    main_concept: str | None = None


class RuntimeParams(_Section):
    # Processes for per-image work; None = one per CPU core.
    workers: Annotated[int, Field(gt=0)] | None = None


class Recipe(_Section):
    project: Project = Project()
    sources: list[Source] = []
    concepts: list[Concept] = []
    ingest: IngestParams = IngestParams()
    convert: ConvertParams = ConvertParams()
    dedupe: DedupeParams = DedupeParams()
    buckets: BucketParams = BucketParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    runtime: RuntimeParams = RuntimeParams()
    autotag: AutotagParams = AutotagParams()
    captions: CaptionParams = CaptionParams()
    repeats: RepeatsParams = RepeatsParams()

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

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
        elif part in ("folder",):  # discriminator tags add nothing for the user
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(recipe)"


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: `train.network_dim: must be > 0, got -4`."""
    return [f"{_key_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]


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
