"""The whole recipe: `Recipe` (every section, the checks across sections), and reading it from TOML."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, ValidationError, model_validator

from bakery.recipe.bake import TRAIN_PROFILES, RegularisationParams, TrainParams
from bakery.recipe.base import RecipeError, _as_train_keys, _Section, format_errors
from bakery.recipe.caption import AutotagParams, CaptionParams, Concept, RepeatsParams, ValidationParams
from bakery.recipe.families import FLOW_ARCHITECTURES, FLOW_SAMPLERS, apply_family
from bakery.recipe.gather import ConvertParams, IngestParams, Project, ScrapeParams, Source
from bakery.recipe.judges import JudgesParams
from bakery.recipe.paths import resolve_path, resolve_paths
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
    judges: JudgesParams = JudgesParams()
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
    def _samplers_fit_the_base(self) -> "Recipe":
        """A rectified-flow base renders with flow-match Euler only: refused here, not after the bake."""
        if self.train.architecture in FLOW_ARCHITECTURES:
            for section in ("evaluate", "trigger_check", "regularisation"):
                if (sampler := getattr(self, section).sampler) not in FLOW_SAMPLERS:
                    raise ValueError(f"{section}.sampler {sampler!r} has no rectified-flow form for "
                                     f"{self.train.architecture}: use {' or '.join(map(repr, FLOW_SAMPLERS))}")
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
        return resolve_paths(TrainParams.model_validate(data), self._base_dir, "train.")

    def for_variant(self, name: str) -> "Recipe":
        """The recipe one variant bakes: its [train], no [[variants]]."""
        return self.model_copy(update={"train": self.variant_train(name), "variants": []})

    def resolve(self, path: Path) -> Path:
        """A recipe path made absolute against the recipe file's folder (the recipe's own path keys already are:
        bakery/recipe/paths.py)."""
        return resolve_path(Path(path), self._base_dir)

    @property
    def workdir(self) -> Path:
        return self.resolve(self.project.workdir)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def parse_recipe(data: dict[str, Any], base_dir: Path, origin: str = "<recipe>") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(origin, format_errors(exc)) from None
    base_dir = base_dir.resolve()
    recipe = resolve_paths(recipe, base_dir)  # the one place a recipe's relative paths are resolved
    recipe._base_dir = base_dir
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


def starter_recipe_text() -> str:
    return (Path(__file__).parent.parent / "templates" / "recipe.toml").read_text(encoding="utf-8")
