"""Triggers and pruning (rules.md §10). Pure functions: no Prefect, no catalog.

A *group* is one kohya folder: a concept's images, an outfit's images (a
sub-group of a concept), or a copy made by the duplicate-and-split trick. Every
caption in a group starts with the group's triggers (concept trigger first,
then the outfit trigger); the tags the triggers should absorb are pruned.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bakery.craft.caption.tags import dedupe, join_caption, matches, normalize_tag

PRUNE_STYLES = ("fluid", "semi_static", "static")
STYLE_MODES = ("style_no_tags", "style_trigger_only", "style_all_tags", "style_all_tags_trigger")

KEEP_TOKENS_SEPARATOR = "|||"

# -- tag categories, recognised by pattern -------------------------------------------------
_COLOURS = (
    "black", "blonde", "brown", "red", "blue", "green", "pink", "purple", "white", "grey", "gray", "silver",
    "orange", "aqua", "yellow", "violet", "lavender", "teal", "cyan", "magenta", "gold", "golden", "platinum_blonde",
    "multicolored", "two-tone", "gradient", "streaked", "rainbow", "dark", "light",
)
_COLOUR_RE = "(?:(?:light|dark|pale|deep)_)?(?:" + "|".join(re.escape(c) for c in _COLOURS) + ")"
HAIR_COLOUR = re.compile(rf"^{_COLOUR_RE}_hair$|^colored_inner_hair$|^(?:split|two)-color(?:ed)?_hair$|^.*_highlights$")
EYE_COLOUR = re.compile(rf"^{_COLOUR_RE}_eyes$|^heterochromia$")
HAIRSTYLE = (
    "very_short_hair", "short_hair", "medium_hair", "long_hair", "very_long_hair", "absurdly_long_hair",
    "*ponytail", "*twintails", "*braid", "*braids", "*_bun", "hair_bun", "*bangs", "hair_between_eyes", "sidelocks",
    "ahoge", "hair_intakes", "*drill*", "wavy_hair", "curly_hair", "straight_hair", "messy_hair", "spiked_hair",
    "*_cut", "hair_over_one_eye", "hair_over_eyes", "low-tied_long_hair", "antenna_hair", "hair_flaps",
    "hair_rings", "half_updo", "updo", "*_(hairstyle)", "forehead", "tied_hair", "bald",
)
MAKEUP = ("lipstick", "*_lipstick", "makeup", "eyeshadow", "*_eyeshadow", "eyeliner", "mascara", "red_lips",
          "nail_polish", "*_nail_polish", "eye_shadow")
# Static adds what the guide's level-2 trigger prunes besides the semi-static set.
STATIC_ANATOMY = ("*_skin", "dark-skinned_*", "mole*", "freckles", "tattoo", "*_tattoo", "scar", "*_scar*",
                  "animal_ears", "*_ears", "tail", "*_tail", "fang", "fangs", "pointy_ears", "horns", "wings",
                  "hair_ornament", "hairclip", "hairband", "hair_ribbon", "hair_bow", "*_hair_ornament", "halo")
PEOPLE_COUNT = re.compile(r"^(?:\d+\+?(?:girl|boy|other)s?|multiple_(?:girls|boys|others)|solo|solo_focus)$")
# The count a lone character trigger stands for (§10: "CharaA absorbs concepts like 1girl"); `solo` stays.
ONE_PERSON = frozenset({"1girl", "1boy", "1other"})
BREAST_SIZE = re.compile(r"^(?:flat_chest|breasts|(?:small|medium|large|huge|gigantic|big|flat)_breasts)$")

GARMENT_WORDS = frozenset(
    """shirt t-shirt blouse skirt miniskirt dress sundress vest jacket coat cardigan sweater hoodie ascot necktie
    tie bowtie collar sleeves gloves hat cap beret pants shorts jeans leggings thighhighs pantyhose socks kneehighs
    apron uniform serafuku armor armour cape cloak scarf belt suspenders frills plaid buttons leotard bodysuit bikini
    swimsuit kimono hakama obi sash corset neckerchief choker capelet shawl overalls robe tunic camisole tank_top
    crop_top epaulettes pauldrons gauntlets military hood bow ribbon trim jumpsuit blazer raincoat poncho tabard
    gorget breastplate vambraces greaves bracers waistcoat petticoat crinoline bloomers garter_straps garters
    sailor_collar wrist_cuffs bodice sleeveless strapless backless halterneck turtleneck""".split()
)
FOOTWEAR_WORDS = frozenset(
    "shoes boots heels high_heels sandals sneakers loafers slippers footwear pumps mary_janes geta zouri "
    "clogs flats stilettos".split()
)


def _last_word(tag: str) -> str:
    return tag.rsplit("_", 1)[-1]


def _vocab_match(tag: str, words: frozenset[str]) -> bool:
    if tag in words or _last_word(tag) in words:
        return True
    parts = tag.split("_")
    return len(parts) > 1 and "_".join(parts[-2:]) in words


def is_footwear(tag: str) -> bool:
    return _vocab_match(tag, FOOTWEAR_WORDS)


def is_garment(tag: str) -> bool:
    """Clothing tags an outfit trigger may absorb (footwear excluded: rules.md §10)."""
    return not is_footwear(tag) and not tag.startswith("hair_") and _vocab_match(tag, GARMENT_WORDS)


def is_breast_size(tag: str) -> bool:
    return BREAST_SIZE.match(tag) is not None


def is_people_count(tag: str) -> bool:
    return PEOPLE_COUNT.match(tag) is not None


def is_intrinsic(tag: str, extra: Iterable[str] = ()) -> bool:
    """A character's intrinsic features (semi-static pruning): hair colour and style, eye colour, makeup."""
    return (
        HAIR_COLOUR.match(tag) is not None
        or EYE_COLOUR.match(tag) is not None
        or matches(tag, HAIRSTYLE)
        or matches(tag, MAKEUP)
        or matches(tag, extra)
    )


# -- groups ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupRule:
    """How one folder's captions are built."""

    folder: str
    triggers: tuple[str, ...]  # concept trigger first, then outfit/extra triggers; "" entries ignored
    style: str = "semi_static"  # fluid | semi_static | static | style_*
    prune_tags: tuple[str, ...] = ()  # user additions (names or globs): always pruned in this group
    keep_tags: tuple[str, ...] = ()  # never pruned
    intrinsic: tuple[str, ...] = ()  # extra intrinsic features (notable anatomy) for semi-static/static
    absorb: tuple[str, ...] = ()  # outfit garments named by the user (names or globs)
    auto_absorb: bool = False  # absorb every garment tag present in >= absorb_min_share of the group
    absorb_min_share: float = 0.5
    prune_people_count: bool = False  # multi-character groups (CharaAPLUSCharaB)
    target_steps: int = 300
    concept: str = ""  # the concept the group belongs to
    characters: int = 1  # character triggers: the concept's trigger + its extra_triggers (outfits are not characters)

    @property
    def head(self) -> list[str]:
        return [t for t in self.triggers if t]


@dataclass
class GroupResult:
    captions: dict[str, list[str]]  # image name -> tags after pruning (triggers not included)
    pruned: set[str] = field(default_factory=set)  # tags removed somewhere in this group
    warnings: list[str] = field(default_factory=list)


def absorbed_garments(rule: GroupRule, captions: Mapping[str, Sequence[str]]) -> tuple[set[str], list[str]]:
    """The garment tags an outfit trigger absorbs in this group, and warnings (footwear refused)."""
    warnings: list[str] = []
    present = Counter(t for tags in captions.values() for t in set(tags))
    n = max(1, len(captions))
    out: set[str] = set()
    for tag, count in present.items():
        if matches(tag, rule.absorb):
            if is_footwear(tag):
                warnings.append(
                    f"{rule.folder}: '{tag}' is footwear; the guide never folds footwear into an outfit trigger: kept"
                )
                continue
            out.add(tag)
        elif rule.auto_absorb and is_garment(tag) and count / n >= rule.absorb_min_share:
            out.add(tag)
    return out, warnings


def prune_group(rule: GroupRule, captions: Mapping[str, Sequence[str]], characters: Iterable[str] = ()) -> GroupResult:
    """Apply the group's pruning style to every caption (tags already cleaned, no triggers).

    `characters`: tags known to name a character (tagger/booru category). Semi-static and
    static groups prune them: the trigger stands for the character (rules.md §9 "evaluate
    recognised characters: use as trigger or delete").
    """
    if rule.style not in PRUNE_STYLES + STYLE_MODES:
        raise ValueError(f"unknown prune style {rule.style!r}")
    result = GroupResult(captions={})
    garments, warnings = absorbed_garments(rule, captions) if rule.style != "fluid" else (set(), [])
    result.warnings.extend(warnings)
    for tag in sorted({t for tags in captions.values() for t in tags}):
        if is_breast_size(tag) and (matches(tag, rule.prune_tags) or matches(tag, rule.intrinsic)):
            result.warnings.append(f"{rule.folder}: '{tag}' is a breast-size tag; the guide never prunes it: kept")
    if rule.absorb and rule.style == "fluid":
        result.warnings.append(f"{rule.folder}: absorb is ignored with prune = 'fluid' (keeps all tags)")

    heads = {normalize_tag(t) for t in rule.head}
    if rule.style in ("semi_static", "static"):
        heads |= {normalize_tag(t) for t in characters}
    verdict: dict[str, bool] = {}  # the rule depends on the tag alone: decide each tag once per group
    for name, tags in captions.items():
        tags = dedupe(normalize_tag(t) for t in tags)
        for t in tags:
            if t not in verdict:
                verdict[t] = _prunes(rule, t, garments, heads)
        kept = [t for t in tags if not verdict[t]]
        result.pruned.update(t for t in tags if t not in kept)
        result.captions[name] = kept
    return result


def _prunes(rule: GroupRule, tag: str, garments: set[str], heads: set[str]) -> bool:
    if is_breast_size(tag) or matches(tag, rule.keep_tags):
        return False
    if tag in heads:
        return True  # a trigger word a tagger happened to emit: it is the head already
    style = rule.style
    if style in ("fluid", "style_all_tags", "style_all_tags_trigger"):
        return matches(tag, rule.prune_tags) or (rule.prune_people_count and is_people_count(tag))
    if style in ("style_no_tags", "style_trigger_only"):
        return True
    if matches(tag, rule.prune_tags) or tag in garments:
        return True
    if rule.prune_people_count and is_people_count(tag):
        return True
    if rule.characters == 1 and tag in ONE_PERSON:
        return True  # the lone character trigger absorbs it (the guide's §10 example keeps `solo`)
    if is_intrinsic(tag, rule.intrinsic):
        return True
    if style == "static":
        return (
            matches(tag, STATIC_ANATOMY) or is_garment(tag) or is_footwear(tag) or is_people_count(tag)
        )
    return False


def caption_parts(rule: GroupRule, tags: Sequence[str]) -> tuple[list[str], list[str]]:
    """(head, body): triggers first (rules.md §10), then the kept tags; the style modes decide each part."""
    head = [] if rule.style in ("style_no_tags", "style_all_tags") else rule.head
    body = [] if rule.style in ("style_no_tags", "style_trigger_only") else list(tags)
    return head, body


def build_caption(rule: GroupRule, tags: Sequence[str], style: str = "underscore", keep_tokens_separator: bool = False) -> str:
    """The caption text: triggers exactly as the user spelled them, then tags in their order."""
    head, body = caption_parts(rule, tags)
    head_text = ", ".join(head)
    body_text = join_caption(body, style)
    if keep_tokens_separator and head_text:
        return f"{head_text} {KEEP_TOKENS_SEPARATOR} {body_text}".rstrip()
    return ", ".join(p for p in (head_text, body_text) if p)


def needs_tags(rule: GroupRule) -> bool:
    """Whether an image of this group must have source tags (else: error before bake)."""
    return rule.style not in ("style_no_tags", "style_trigger_only")


# -- layout: which image goes to which group ------------------------------------------------
@dataclass(frozen=True)
class OutfitSpec:
    name: str
    trigger: str
    paths: tuple[str, ...]
    target_steps: int = 100
    absorb: tuple[str, ...] = ()
    auto_absorb: bool = True


@dataclass(frozen=True)
class ConceptSpec:
    name: str
    trigger: str
    paths: tuple[str, ...] = ("**",)
    style: str = "semi_static"
    target_steps: int = 300
    outfits: tuple[OutfitSpec, ...] = ()
    extra_triggers: tuple[str, ...] = ()
    prune_tags: tuple[str, ...] = ()
    keep_tags: tuple[str, ...] = ()
    intrinsic: tuple[str, ...] = ()
    prune_people_count: bool = False
    duplicate_split: bool = False
    absorb_min_share: float = 0.5


def path_matches(name: str, patterns: Iterable[str]) -> bool:
    """Globs over source-relative names (`*` crosses folders, so `chara/*` takes its subfolders too)."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p.rstrip("/") + "/*") for p in patterns)


def concept_rule(c: ConceptSpec) -> GroupRule:
    return GroupRule(
        folder=c.name, triggers=(c.trigger, *c.extra_triggers), style=c.style, prune_tags=c.prune_tags,
        keep_tags=c.keep_tags, intrinsic=c.intrinsic, prune_people_count=c.prune_people_count,
        target_steps=c.target_steps, concept=c.name, absorb_min_share=c.absorb_min_share,
        characters=1 + len(c.extra_triggers),
    )


def outfit_rule(c: ConceptSpec, o: OutfitSpec) -> GroupRule:
    return GroupRule(
        folder=o.name, triggers=(c.trigger, *c.extra_triggers, o.trigger), style=c.style if c.style in PRUNE_STYLES else "semi_static",
        prune_tags=c.prune_tags, keep_tags=c.keep_tags, intrinsic=c.intrinsic, absorb=o.absorb,
        auto_absorb=o.auto_absorb, absorb_min_share=c.absorb_min_share,
        prune_people_count=c.prune_people_count, target_steps=o.target_steps, concept=c.name,
        characters=1 + len(c.extra_triggers),
    )


def split_copy_rule(c: ConceptSpec, o: OutfitSpec) -> GroupRule:
    """Duplicate-and-split (rules.md §10 note): the copy without the outfit trigger, outfit tags unpruned."""
    base = concept_rule(c)
    return GroupRule(**{**base.__dict__, "folder": f"{o.name}_unpruned", "target_steps": o.target_steps})


def layout(concepts: Sequence[ConceptSpec], names: Iterable[str], forced: Mapping[str, str] | None = None
           ) -> tuple[list[GroupRule], dict[str, list[str]], list[str]]:
    """Assign images to groups: the first concept whose paths match, then its first matching outfit.

    Returns the group rules (recipe order), folder -> image names, and the names no concept took.
    With `duplicate_split`, a concept with exactly one outfit puts each outfit image in both the
    outfit folder (pruned, outfit trigger) and `<outfit>_unpruned` (character trigger only).
    `forced`: image name -> the concept it goes to whatever its path (and that concept's matching outfit).
    """
    rules: list[GroupRule] = []
    members: dict[str, list[str]] = {}
    for c in concepts:
        rules.append(concept_rule(c))
        for o in c.outfits:
            rules.append(outfit_rule(c, o))
            if c.duplicate_split:
                rules.append(split_copy_rule(c, o))
    for r in rules:
        members[r.folder] = []
    unassigned = []
    for name in sorted(names):
        concept = next((c for c in concepts if c.name == (forced or {}).get(name)), None) or next(
            (c for c in concepts if path_matches(name, c.paths)), None)
        if concept is None:
            unassigned.append(name)
            continue
        outfit = next((o for o in concept.outfits if path_matches(name, o.paths)), None)
        if outfit is None:
            members[concept.name].append(name)
            continue
        members[outfit.name].append(name)
        if concept.duplicate_split:
            members[f"{outfit.name}_unpruned"].append(name)
    return rules, members, unassigned


def check_layout(concepts: Sequence[ConceptSpec]) -> list[str]:
    """Recipe-level problems the guide warns about (returned as messages)."""
    problems = []
    for c in concepts:
        if c.duplicate_split and len(c.outfits) != 1:
            problems.append(f"concept {c.name}: duplicate_split needs exactly one outfit, has {len(c.outfits)}")
        for o in c.outfits:
            bad = [a for a in o.absorb if is_footwear(normalize_tag(a))]
            if bad:
                problems.append(f"outfit {o.name}: absorb lists footwear {bad}; the guide never folds footwear into an outfit trigger")
        bad = [t for t in c.prune_tags if is_breast_size(normalize_tag(t))]
        if bad:
            problems.append(f"concept {c.name}: prune_tags lists breast size {bad}; the guide never prunes it")
    return problems
