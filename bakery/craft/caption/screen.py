"""Content screening by tags (rules.md §3) and the guide's special tags (rules.md §10). Pure: no Prefect, no catalog.

§3 says to filter out chibi/super-deformed pictures (unless a style LoRA), cluttered group shots, unremovable
watermarks/text, deformed hands/limbs and blurred faces. A picture's booru or tagger tags name most of these; each
kind below is a list of Danbooru tags and an action the recipe picks (`[captions] screen_<kind>`):
"skip" (a recorded skip with its reason), "flag" (trained, flagged in the studio and the run's warnings) or "off".
A `keep` edit (bakery/craft/edits.py) trains a picture the screening would skip.

§10's special tags are added to (or taken from) a caption per source kind and per the tags present; each change is
recorded as a decision (the catalog's `caption_decisions`, `bakery provenance`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ACTIONS = ("skip", "flag", "off")

# kind -> (Danbooru tags, why the default action). Defaults: ScreenSettings.
KIND_TAGS: dict[str, tuple[str, ...]] = {
    # Danbooru's own names for the style; chibi is also last in the guide's source ranking (§1).
    "chibi": ("chibi", "super_deformed"),
    # Marks laid over the art (stock/site marks, "SAMPLE"): a crop rarely removes them, the model learns them.
    "watermark": ("watermark", "sample_watermark"),
    # Text that may be cropped or painted out, or is small: flagged, not skipped (a tag cannot say "unremovable").
    # Pages of text (text_focus, comic panels, 4koma) belong here too: the guide ranks manga pages high (§1), so
    # they are left for the user to crop.
    "text": ("text_focus", "comic", "4koma", "english_text", "chinese_text", "korean_text", "speech_bubble",
             "signature", "artist_name", "web_address", "twitter_username", "patreon_username"),
    # Danbooru tags only put on visible anatomy errors.
    "deformed": ("bad_hands", "bad_anatomy", "bad_feet", "bad_proportions", "anatomical_nonsense",
                 "extra_digits", "fewer_digits", "extra_arms", "extra_legs", "extra_fingers", "missing_fingers"),
    # Danbooru's `blurry` is the picture, not the face (blurry_background, depth_of_field are other tags):
    # flagged, for the user to judge the face.
    "blurry": ("blurry",),
    # Group shots: `crowd`, or people-count tags adding up to >= screen_crowd_people (in a one-character concept).
    "crowd": ("crowd",),
}
KINDS = tuple(KIND_TAGS)
PEOPLE = re.compile(r"^(\d+)\+?(girl|boy|other)s?$")  # 1girl, 3girls, 6+boys, 1other
MULTIPLE = {"multiple_girls": 2, "multiple_boys": 2, "multiple_others": 2}
GUIDE = "rules.md §3"


@dataclass(frozen=True)
class ScreenSettings:
    actions: Mapping[str, str] = field(default_factory=lambda: {
        "chibi": "skip", "watermark": "skip", "text": "flag", "deformed": "skip", "blurry": "flag", "crowd": "skip"})
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> tags replacing KIND_TAGS[kind]
    crowd_people: int = 3  # people in a picture that make a group shot


@dataclass(frozen=True)
class Subject:
    """What screening knows of the folder(s) a picture trains in."""

    style: bool = False  # a style LoRA's concept: chibi and crowds are its material
    one_character: bool = True  # a concept of one character (no extra triggers, people counts not pruned)
    crop: bool = False  # a face/upper-body crop of another picture: only what the drawing is (chibi, blurry) holds


@dataclass(frozen=True)
class Finding:
    kind: str
    action: str  # skip | flag
    tags: tuple[str, ...]

    def reason(self) -> str:
        return f"screened out: {self.kind} ({', '.join(self.tags)}; {GUIDE})"

    def note(self) -> str:
        return f"{self.kind} ({', '.join(self.tags)})"


def people_count(tags: Sequence[str]) -> int:
    """People the count tags add up to (`1girl, 2boys` -> 3; `multiple_girls` alone -> 2)."""
    by: dict[str, int] = {}
    for t in tags:
        m = PEOPLE.match(t)
        if m:
            by[m.group(2)] = max(by.get(m.group(2), 0), int(m.group(1)))
    for t, n in MULTIPLE.items():
        if t in tags:
            kind = t.split("_")[1][:-1]
            by[kind] = max(by.get(kind, 0), n)
    return sum(by.values())


def screen(tags: Sequence[str], subject: Subject, settings: ScreenSettings) -> list[Finding]:
    """What §3 says of one picture's tags (raw, all sources): a finding per kind that applies and is not off."""
    present = set(tags)
    out = []
    for kind in KINDS:
        action = settings.actions.get(kind, "off")
        if action == "off" or (kind in ("chibi", "crowd") and subject.style):
            continue
        if subject.crop and kind not in ("chibi", "blurry"):
            continue
        hit = tuple(t for t in settings.tags.get(kind, KIND_TAGS[kind]) if t in present)
        if kind == "crowd" and subject.one_character:
            n = people_count(tags)
            hit += (f"{n} people",) if n >= settings.crowd_people else ()
        elif kind == "crowd":
            hit = ()
        if hit:
            out.append(Finding(kind, action, hit))
    return out


# -- special tags (rules.md §10) -------------------------------------------------------------------------------------
SHOP_KIND = "shop_photo"  # bakery/recipe/gather.py SOURCE_KINDS: cosplay-shop photos
SHOP_ADD = ("mannequin", "no_humans")
HEAD_CUT = ("eyes_out_of_frame", "face_out_of_frame", "lower_body")  # the head is (partly) out of the frame
BLUR = ("blurry_background", "blurry_foreground")


@dataclass(frozen=True)
class Special:
    """One §10 rule applied to a picture's caption."""

    rule: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    why: str = ""

    def note(self) -> str:
        change = [f"+{t}" for t in self.added] + [f"-{t}" for t in self.removed]
        return f"{self.rule}: {' '.join(change)} ({self.why})"


def _is_people_tag(t: str) -> bool:
    return bool(PEOPLE.match(t)) or t in MULTIPLE or t in ("solo", "solo_focus")


def special_tags(tags: Sequence[str], source_kinds: Sequence[str], crop: bool = False,
                 subject_gender: str = "") -> list[Special]:
    """The §10 rules that apply to one picture's cleaned tags.

    - a cosplay-shop photo (source kind `shop_photo`): no people-count tags (solo, 1girl...), `mannequin, no_humans`;
    - a cut head: `head_out_of_frame` where the tags say the head is cut (eyes_out_of_frame, face_out_of_frame,
      lower_body) and it is missing; never on a crop (crops are cut around the face);
    - blurred other people: with `solo_focus` and a blurry background/foreground, the people beyond the one in focus
      get `faceless_male` / `faceless_female` (by the people-count tags; a 1girl + 1boy picture needs the concept's
      `subject_gender`, "girl" or "boy", to know who the other one is; unknown: nothing is added);
    - a heart in a speech bubble: `spoken_heart` (`speech_bubble` + `heart`), the guide's example.
    """
    present, out = set(tags), []
    if SHOP_KIND in source_kinds and not (set(source_kinds) - {SHOP_KIND, "unknown"}):
        removed = tuple(t for t in tags if _is_people_tag(t))
        added = tuple(t for t in SHOP_ADD if t not in present)
        if removed or added:
            out.append(Special("shop_photo", added, removed, "a cosplay-shop photo: a mannequin, no person"))
    if not crop and "head_out_of_frame" not in present and (cut := [t for t in HEAD_CUT if t in present]):
        out.append(Special("head_out_of_frame", ("head_out_of_frame",), (), f"tagged {', '.join(cut)}"))
    if "solo_focus" in present and present & set(BLUR):
        added = tuple(t for t in _faceless(tags, subject_gender) if t not in present)
        if added:
            out.append(Special("faceless", added, (), "other people blurred around the one in focus"))
    if "speech_bubble" in present and "heart" in present and "spoken_heart" not in present:
        out.append(Special("spoken_heart", ("spoken_heart",), (), "a heart in a speech bubble"))
    return out


def _faceless(tags: Sequence[str], subject_gender: str) -> list[str]:
    girls = max([int(m.group(1)) for t in tags if (m := PEOPLE.match(t)) and m.group(2) == "girl"]
                + [2 if "multiple_girls" in tags else 0])
    boys = max([int(m.group(1)) for t in tags if (m := PEOPLE.match(t)) and m.group(2) == "boy"]
               + [2 if "multiple_boys" in tags else 0])
    if girls + boys < 2:
        return []
    if girls and boys and subject_gender not in ("girl", "boy"):
        return []  # who is in focus is unknown
    if not boys:
        subject_gender = "girl"
    elif not girls:
        subject_gender = "boy"
    others_girls = girls - (subject_gender == "girl")
    others_boys = boys - (subject_gender == "boy")
    return (["faceless_male"] if others_boys > 0 else []) + (["faceless_female"] if others_girls > 0 else [])


def apply_special(tags: Sequence[str], specials: Sequence[Special]) -> list[str]:
    """The tags with the rules' removals taken out and additions appended."""
    gone = {t for s in specials for t in s.removed}
    out = [t for t in tags if t not in gone]
    return out + [t for s in specials for t in s.added if t not in out]


def subject_gender(tag_lists: Sequence[Sequence[str]]) -> str:
    """A concept's character as the solo pictures show it: "girl", "boy", or "" (no majority)."""
    girls = sum(1 for tags in tag_lists if "1girl" in tags and not any(t.endswith("boy") or t.endswith("boys")
                                                                       for t in tags))
    boys = sum(1 for tags in tag_lists if "1boy" in tags and not any(t.endswith("girl") or t.endswith("girls")
                                                                     for t in tags))
    return "girl" if girls > boys else "boy" if boys > girls else ""
