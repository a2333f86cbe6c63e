"""The recipe's [judges] section: deepghs's ONNX models (bakery/craft/deepghs.py) for the dataset and the renders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from bakery.recipe.base import _Section

ModelAction = Literal["skip", "flag", "off"]


class JudgesParams(_Section):
    """Character and quality judges: each model is a local folder in deepghs's format (as dghs-imgutils downloads it from the Hugging Face hub). A model left unset skips its judge with a note naming its key; nothing stands in."""

    # CCIP (deepghs/ccip_onnx/<model>/: model_feat.onnx, model_metrics.onnx, metrics.json), e.g.
    # ccip-caformer-24-randaug-pruned. Judges the dataset (pictures of another character), the renders (identity)
    # and the trigger check (a trigger whose base renders already look like one character).
    ccip_model: Path | None = None
    # A CCIP difference at or below this is "the same character"; None: the model's metrics.json threshold.
    ccip_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    # The corruption model (deepghs/ai_image_corrupted/<model>/: model.onnx, meta.json with a `corrupted` label).
    corrupt_model: Path | None = None
    # A cell whose renders score below this (1 - mean `corrupted` score, sdeval's AI-corrupt score) is not ranked;
    # cyberharem steps its bar from 1.0 down to 0.8.
    corrupt_min: Annotated[float, Field(ge=0, le=1)] = 0.8
    # Classifiers (deepghs/<repo>/<model>/: model.onnx, meta.json): monochrome_detect, anime_completeness,
    # anime_classification, anime_aesthetic (with its samples.npz for percentiles).
    monochrome_model: Path | None = None
    completeness_model: Path | None = None
    kind_model: Path | None = None
    aesthetic_model: Path | None = None
    # The dataset: per kind, "skip" (a recorded skip, kept by `bakery edit RECIPE keep PICTURE`), "flag" or "off".
    # other_character: CCIP says the picture is not the concept's character (several characters included).
    screen_other_character: ModelAction = "flag"
    # several_characters: in a one-character concept, the framing stage's head detector ([crops] head_model, else
    # person_model) found more than one head, and (with ccip_model) CCIP judges the head crops more than one
    # character. "skip" as waifuc's HeadCountAction(1) and FaceCountAction(1), filters that drop such pictures.
    screen_several_characters: ModelAction = "skip"
    # rules.md §3: monochrome up to ~50 % of the set is fine: flagged (and counted), not skipped.
    screen_monochrome: ModelAction = "flag"
    screen_rough: ModelAction = "flag"  # anime_completeness says `rough` (a rough sketch)
    screen_3d: ModelAction = "flag"  # anime_classification says `3d` (rules.md §1 ranks 3D art low)
    screen_comic: ModelAction = "flag"  # anime_classification says `comic` (panels: crop them)
    screen_low_aesthetic: ModelAction = "flag"
    # A classifier's label counts when its score is at least this.
    classifier_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    # Low aesthetic: a percentile (with samples.npz) or a score / 6 below this.
    aesthetic_min: Annotated[float, Field(ge=0, le=1)] = 0.1
    # The F-beta pick (cyberharem eval.py): beta weighs CCIP identity against controllability (our flexibility).
    fbeta: Annotated[float, Field(gt=0)] = 3.0
    # Which pick the recommendation follows: "ours" (bakery/craft/taste/ranking.py) or "fbeta" (cyberharem's).
    pick: Literal["ours", "fbeta"] = "ours"
