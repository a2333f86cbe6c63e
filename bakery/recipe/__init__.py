"""The recipe: one TOML file, one pydantic model, the single source of every parameter.

Defaults follow the guide's numbers (shared/guide/rules.md): 512 px, buckets
256-1024 step 64, LoRA dim 32 alpha 16, 8 epochs, ~300 steps per epoch per concept.

The sections live by phase (gather, prepare, caption, bake, taste, slider, sweep, runtime),
the base-model families in families.py, and `Recipe` with its loading in model.py; every
name is imported from here, `bakery.recipe`.
"""

from __future__ import annotations

from bakery.recipe.bake import DYLORA_UNIT, IA3_LR, NETWORK_DEFAULTS, TRAIN_PROFILES, RegularisationParams, TrainParams
from bakery.recipe.base import NAME_PATTERN, RecipeError, format_errors, slug_ok, stage_params_json
from bakery.recipe.caption import (
    AutotagParams,
    CaptionParams,
    Concept,
    Outfit,
    RepeatsParams,
    ValidationParams,
)
from bakery.recipe.gather import (
    BOORU_KINDS,
    DEFAULT_MAX_PIXELS,
    SOURCE_KINDS,
    BooruSource,
    ConvertParams,
    DanbooruSource,
    FolderSource,
    GelbooruSource,
    IngestParams,
    Project,
    ScrapeParams,
    Source,
    SourceKind,
)
from bakery.recipe.judges import JudgesParams
from bakery.recipe.model import Recipe, load_recipe, parse_recipe, starter_recipe_text
from bakery.recipe.prepare import (
    AlphaParams,
    BucketParams,
    CropsParams,
    DedupeParams,
    MaskParams,
    TrimParams,
    UpscaleParams,
)
from bakery.recipe.runtime import RuntimeParams
from bakery.recipe.slider import SliderParams
from bakery.recipe.sweep import SweepParams, Variant
from bakery.recipe.taste import EvaluateParams, TriggerCheckParams

__all__ = [
    "AlphaParams", "AutotagParams", "BOORU_KINDS", "BooruSource", "BucketParams", "CaptionParams", "Concept",
    "ConvertParams", "CropsParams", "DEFAULT_MAX_PIXELS", "DYLORA_UNIT", "DanbooruSource", "DedupeParams",
    "EvaluateParams", "FolderSource", "GelbooruSource", "IA3_LR", "IngestParams", "JudgesParams", "MaskParams",
    "NAME_PATTERN", "NETWORK_DEFAULTS", "Outfit", "Project", "Recipe", "RecipeError", "RegularisationParams", "RepeatsParams",
    "RuntimeParams", "SOURCE_KINDS", "ScrapeParams", "SliderParams", "Source", "SourceKind", "SweepParams",
    "TRAIN_PROFILES", "TrainParams", "TrimParams", "TriggerCheckParams", "UpscaleParams", "ValidationParams",
    "Variant", "format_errors", "load_recipe", "parse_recipe", "slug_ok", "stage_params_json", "starter_recipe_text",
]
