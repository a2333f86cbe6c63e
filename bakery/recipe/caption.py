"""The recipe's caption sections: [[concepts]] and their outfits, [autotag], [captions], [repeats], [validation]."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from bakery.craft.caption.tags import DEFAULT_DELETE, DEFAULT_SYNONYMS
from bakery.recipe.base import NAME_PATTERN, _Section

ScreenAction = Literal["skip", "flag", "off"]


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
    # Content screening by tags (rules.md §3), per kind "skip" (a recorded skip with its reason) | "flag" (trained,
    # flagged) | "off"; read from every tag source (sidecars, booru, tagger) whatever `sources` says. A `keep` edit
    # trains a picture the screening skips. Chibi and crowds are never screened in a style concept.
    screen_chibi: ScreenAction = "skip"  # chibi, super_deformed (the guide: filter out unless a style LoRA)
    screen_watermark: ScreenAction = "skip"  # watermark, sample_watermark: marks over the art
    # text_focus, comic, 4koma, speech_bubble, *_text, signature, artist_name, web_address, *_username: flagged, as
    # text can often be cropped or painted out (the guide filters only "unremovable" text)
    screen_text: ScreenAction = "flag"
    screen_deformed: ScreenAction = "skip"  # bad_hands, bad_anatomy, extra_digits, fewer_digits, extra_arms...
    # blurry: flagged, as Danbooru's tag says the picture is blurred, not that the face is (the guide: blurred faces)
    screen_blurry: ScreenAction = "flag"
    # crowd, or >= screen_crowd_people by the people-count tags (3girls, 1girl + 2boys...), in a one-character concept
    screen_crowd: ScreenAction = "skip"
    # people (by the count tags) that make a group shot
    screen_crowd_people: Annotated[int, Field(ge=2)] = 3
    # kind -> the tags that mark it, replacing the default list (bakery/craft/caption/screen.py KIND_TAGS)
    screen_tags: dict[Literal["chibi", "watermark", "text", "deformed", "blurry", "crowd"], list[str]] = {}
    # rules.md §10's special tags: shop photos (source kind shop_photo) lose solo/1girl and get mannequin, no_humans;
    # a cut head gets head_out_of_frame; blurred others faceless_male/female; a heart in a bubble spoken_heart.
    special_tags: bool = True


class RepeatsParams(_Section):
    # rules.md §8 multipliers on target_steps: x1/2 SDXL (set by train.family or train.architecture "sdxl"), x3/5
    # when train.min_snr_gamma or train.ip_noise_gamma is set, x1/3 for old anime / low-res screencaps; x1/2 with
    # train.network_type "ia3" (rules.md §12: IA3 needs half the steps).
    sdxl: bool = False
    snr_multiplier: bool = True
    old_anime: bool = False
    # rules.md §8: the targets are Prodigy's; AdamW (and CAME) doubles the steps. false: the targets as written.
    adamw_double: bool = True
    # rules.md §3: a concept whose pictures are mostly retro-style (retro_artstyle, 1980s_(style), 1990s_(style))
    # trains ~3x faster: its steps are cut to 1/3 (reports/composition.md says so). false: no cut.
    retro_cut: bool = True
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
