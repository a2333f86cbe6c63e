"""The training set: how every caption is built and every folder's repeats chosen (rules.md §8-§10).

One call, `build_trainset`, composes the craft in the guide's order: sort pictures into
groups (concepts, outfits) -> gather and clean each picture's tags -> prune each group into
its triggers and build the captions -> balance the folders' repeats -> the guide's caption
checks. Pure: no Prefect, no catalog; the prune task reads the catalog and writes the result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from bakery.craft import edits as edits_craft
from bakery.craft.caption import composition as composition_craft
from bakery.craft.caption import holdout as holdout_craft
from bakery.craft.caption import judged as judged_craft
from bakery.craft.caption import prune as prune_craft
from bakery.craft.caption import repeats as repeats_craft
from bakery.craft.caption import screen as screen_craft
from bakery.craft.caption import tags as tags_craft
from bakery.craft.prepare import framing as framing_craft
from bakery.manifest import Skip, TrainImage, TrainSet
from bakery.report import name_list

MAX_LISTED = 10  # picture names shown in an error message


class CaptionError(RuntimeError):
    """The training set cannot be built as the recipe asks (kohya would train it wrong).

    `names`: every picture at fault, when the message lists only the first ones (the task logs them all)."""

    def __init__(self, message: str, names: Sequence[str] = ()):
        super().__init__(message)
        self.names = list(names)


@dataclass(frozen=True)
class Picture:
    """What prune knows of one prepared picture."""

    name: str
    hash: str
    mask: str = ""
    sidecars: tuple[str, ...] = ()  # raw caption files of it and the originals it came from
    tag_rows: tuple[dict, ...] = ()  # booru / tagger tags (tag, category, origin, confidence)
    framing: str = ""  # a crop of another picture (portrait, upper_body): its caption says this framing
    source_kinds: tuple[str, ...] = ()  # the source kinds of its originals (rules.md §1; §10's shop photos)


@dataclass(frozen=True)
class CaptionSettings:
    clean: tags_craft.CleanRules
    sources: tuple[str, ...] = ("user", "booru", "tagger")
    merge: str = "union"
    keep_namespaces: tuple[str, ...] = ("general", "character", "copyright")
    tag_style: str = "underscore"
    keep_tokens_separator: bool = False
    warn_caption_bytes: int = 1024
    rare_tag_posts: int = 500
    prefix_tags: tuple[str, ...] = ()  # written first in every caption, before the triggers (Pony's score tags)
    screening: screen_craft.ScreenSettings = field(default_factory=screen_craft.ScreenSettings)  # rules.md §3
    special_tags: bool = True  # rules.md §10: shop photos, cut heads, blurred others, spoken hearts


@dataclass(frozen=True)
class RepeatSettings:
    epochs: int
    optimizer: str
    multiplier: float = 1.0
    main_concept: str | None = None
    retro_cut: bool = True  # repeats.retro_cut: a mostly retro-style concept gets x1/3 steps (composition.py)


@dataclass
class TrainSetBuild:
    trainset: TrainSet
    trained: list[str]  # names of the pictures in the set (a picture in two folders once)
    skips: list[Skip]
    stats: list[dict]  # tag counts per group before and after pruning (catalog `tag_stats`)
    plan: repeats_craft.RepeatsPlan
    captions: dict[tuple[str, str], str] = field(default_factory=dict)  # (folder, picture) -> caption
    holdout: holdout_craft.HoldOut = field(default_factory=lambda: holdout_craft.HoldOut({}, True))
    # rules.md §3 screening and §10 special tags, one row per picture and rule (catalog `caption_decisions`):
    # name, image_hash, rule, action (skip | flag | keep | add), tags, reason
    decisions: list[dict] = field(default_factory=list)
    composition: composition_craft.Composition | None = None


def build_trainset(concepts: Sequence[prune_craft.ConceptSpec], pictures: Mapping[str, Picture],
                   captions: CaptionSettings, repeats: RepeatSettings,
                   post_counts: Mapping[str, int],
                   holdout: holdout_craft.HoldOutSettings | None = None,
                   edits: Sequence[edits_craft.Edit] = (),
                   forced: Mapping[str, str] | None = None,
                   judged: tuple[judged_craft.Judgements, judged_craft.JudgeSettings] | None = None) -> TrainSetBuild:
    """Pictures by name -> the training set kohya (and our bake) trains on, and its validation pictures.

    `holdout`: how the validation loss's pictures are chosen (None: no validation loss). Held-out
    pictures are captioned like the others but left out of the repeats and of `images`.
    `edits`: the review studio's edits (bakery/craft/edits.py): excludes, moves and tag edits. `forced`:
    picture name -> the concept it goes to whatever its path (portraits to misc, rules.md §8). `judged`: what the
    [judges] models said of the pictures (bakery/craft/caption/judged.py), screened beside the tags.
    """
    warnings = prune_craft.check_layout(concepts)
    if any("duplicate_split" in w for w in warnings):
        raise CaptionError("; ".join(w for w in warnings if "duplicate_split" in w))
    rules, members, unassigned = prune_craft.layout(concepts, pictures, forced)
    edited = edits_craft.plan_prune(edits, {n: p.hash for n, p in pictures.items()}, [r.folder for r in rules])
    members, unassigned = edits_craft.apply_layout(members, unassigned, edited)
    found = model_findings(rules, members, pictures, judged)
    members, screened, decisions = screen_members(rules, members, pictures, captions, edited.kept, found)
    cleaned, characters, added = clean_captions(rules, members, pictures, captions, edited.tag_edits, decisions)
    texts, stats, pruned_warnings = prune_groups(rules, members, cleaned, characters, captions, added)
    warnings += edited.warnings + idle_keeps(edited.kept, decisions) + pruned_warnings
    held = holdout_craft.choose({r.folder: sorted(members[r.folder]) for r in rules},
                                {n: p.hash for n, p in pictures.items()}, holdout or holdout_craft.HoldOutSettings(False))
    gone = held.names if held.held_out else set()
    comp = compose(rules, members, pictures, cleaned, repeats.retro_cut)
    plan = plan_folder_repeats(concepts, rules, {f: [n for n in ns if n not in gone] for f, ns in members.items()},
                               repeats, comp.step_factors)
    warnings += plan.warnings
    warnings += caption_checks(texts, cleaned, post_counts, captions)
    images, validation = split_validation(texts, pictures, plan.repeats(), held)
    trainset = TrainSet(
        images, caption_triggers(rules, members),
        unet_only=any(r.style == "style_no_tags" and members[r.folder] for r in rules),
        keep_tokens_separator=captions.keep_tokens_separator, warnings=warnings,
        validation=validation, validation_held_out=held.held_out,
        heads={r.folder: len(captions.prefix_tags) + len(r.head) for r in rules if members[r.folder]},
        eval_negatives=list(comp.negatives),
    )
    skips = [Skip(n, "no concept's paths match this image") for n in unassigned]
    skips += [Skip(n, edits_craft.exclusion_reason(e)) for n, e in sorted(edited.excluded.items())]
    skips += [Skip(n, f"{why(f)}: train it with a keep edit (bakery edit RECIPE keep {n})")
              for n, f in sorted(screened.items())]
    return TrainSetBuild(trainset, sorted({n for _, n in texts}), skips, stats, plan, texts, held, decisions, comp)


def why(f: screen_craft.Finding) -> str:
    """A finding's reason: by the tags (screen.py) or by a model (judged.py)."""
    return judged_craft.reason(f) if f.kind in judged_craft.KINDS else f.reason()


def flagged(f: screen_craft.Finding) -> str:
    return "flagged: " + (why(f).removeprefix("screened out: ") if f.kind in judged_craft.KINDS else f.note())


def model_findings(rules: Sequence[prune_craft.GroupRule], members: Mapping[str, list[str]],
                   pictures: Mapping[str, Picture],
                   judged: tuple[judged_craft.Judgements, judged_craft.JudgeSettings] | None
                   ) -> dict[str, list[screen_craft.Finding]]:
    """What the [judges] models say of each picture, per its folders (CCIP only in one-character concepts)."""
    if judged is None:
        return {}
    folders = {r.folder: [(n, pictures[n].hash) for n in members[r.folder]] for r in rules}
    one = {r.folder: r.characters == 1 and not r.prune_people_count and not r.style.startswith("style_")
           for r in rules}
    return judged_craft.findings(folders, one, judged[0], judged[1])


def screen_members(rules: Sequence[prune_craft.GroupRule], members: Mapping[str, list[str]],
                   pictures: Mapping[str, Picture], captions: CaptionSettings,
                   kept: Mapping[str, edits_craft.Edit] | None = None,
                   found: Mapping[str, list[screen_craft.Finding]] | None = None
                   ) -> tuple[dict[str, list[str]], dict[str, screen_craft.Finding], list[dict]]:
    """rules.md §3 by tags: (the layout without the skipped pictures, name -> the finding that skips it, decisions).

    A picture is screened as its folders are: chibi and crowds are a style concept's material, crowds count only in
    a one-character concept, a crop keeps only what its drawing is (chibi, blurry). A `keep` edit overrides a skip."""
    folders_of: dict[str, list[prune_craft.GroupRule]] = {}
    for rule in rules:
        for n in members[rule.folder]:
            folders_of.setdefault(n, []).append(rule)
    skipped, decisions = {}, []
    for name, its in sorted(folders_of.items()):
        pic = pictures[name]
        subject = screen_craft.Subject(
            style=any(r.style.startswith("style_") for r in its),
            one_character=all(r.characters == 1 and not r.prune_people_count for r in its), crop=bool(pic.framing))
        tags = tags_craft.source_tags(list(pic.sidecars), list(pic.tag_rows), ("user", "booru", "tagger"), "union",
                                      (*captions.keep_namespaces, "general", "meta"))  # a booru files some as meta
        for f in screen_craft.screen(tags, subject, captions.screening) + list((found or {}).get(name, [])):
            by_model = f.kind in judged_craft.KINDS
            action, reason = f.action, why(f) if f.action == "skip" else flagged(f)
            if action == "skip" and kept and name in kept:
                action, reason = "keep", f"kept by {kept[name].label()} (would be {why(f)})"
            elif action == "skip" and name not in skipped:
                skipped[name] = f
            decisions.append({"name": name, "image_hash": pic.hash, "action": action, "tags": list(f.tags),
                              "rule": f"{'judge' if by_model else 'screen'}:{f.kind}", "reason": reason})
    out = {folder: [n for n in names if n not in skipped] for folder, names in members.items()}
    return out, skipped, decisions


def idle_keeps(kept: Mapping[str, edits_craft.Edit], decisions: Sequence[dict]) -> list[str]:
    """Keep edits naming a picture the screening does not skip: said, so that a stale keep is seen."""
    used = {d["name"] for d in decisions if d["action"] == "keep"}
    return [f"{e.label()} (keep) changes nothing: the screening does not skip {n}" for n, e in sorted(kept.items())
            if n not in used]


def compose(rules: Sequence[prune_craft.GroupRule], members: Mapping[str, list[str]],
            pictures: Mapping[str, Picture], cleaned: Mapping[str, list[str]],
            retro_cut: bool) -> composition_craft.Composition:
    """The composition of each concept's pictures (every folder of it, a picture once) from their cleaned tags."""
    by_concept: dict[str, dict[str, composition_craft.Pic]] = {}
    for rule in rules:
        group = by_concept.setdefault(rule.concept or rule.folder, {})
        for n in members[rule.folder]:
            group[n] = composition_craft.Pic(n, pictures[n].source_kinds, tuple(cleaned[n]))
    return composition_craft.compose({c: list(pics.values()) for c, pics in by_concept.items() if pics}, retro_cut)


def split_validation(texts: Mapping[tuple[str, str], str], pictures: Mapping[str, Picture],
                     n_repeats: Mapping[str, int], held: holdout_craft.HoldOut) -> tuple[list[TrainImage], list[TrainImage]]:
    """(training images, validation images): a held-out picture leaves every folder it is in and trains 0 times."""
    files = file_names(sorted({n for _, n in texts}))
    chosen = {(f, files[n]) for f, names in held.chosen.items() for n in names}
    gone = {files[n] for n in held.names} if held.held_out else set()
    everything = assemble(texts, pictures, {f: n_repeats.get(f, 0) for f, _ in texts})
    validation = [replace(t, repeats=0) if held.held_out else t for t in everything if (t.folder, t.name) in chosen]
    return [t for t in everything if t.name not in gone], validation


def clean_captions(rules: Sequence[prune_craft.GroupRule], members: Mapping[str, list[str]],
                   pictures: Mapping[str, Picture], captions: CaptionSettings,
                   tag_edits: Sequence[tuple[edits_craft.Edit, str]] = (), decisions: list[dict] | None = None
                   ) -> tuple[dict[str, list[str]], set[str], dict[str, list[str]]]:
    """Each grouped picture's tags from its sources, cleaned, given rules.md §10's special tags, then edited; the
    tags sources mark as characters; the tags the edits and special tags added (kept by the prune). `decisions`:
    the special tags' rows are appended to it.

    A picture with no tag at all in a group that needs tags fails: kohya would caption it with the folder name.
    """
    cleaned: dict[str, list[str]] = {}
    characters: set[str] = set()
    for name in sorted({n for rule in rules for n in members[rule.folder]}):
        pic = pictures[name]
        raw = tags_craft.source_tags(list(pic.sidecars), list(pic.tag_rows), captions.sources, captions.merge,
                                     captions.keep_namespaces)
        cleaned[name] = tags_craft.clean_tags(raw, captions.clean)
        if pic.framing:  # a crop: its own framing instead of its parent's (bakery/craft/prepare/framing.py)
            cleaned[name] = framing_craft.crop_tags(cleaned[name], pic.framing)
        characters |= tags_craft.character_tags(list(pic.sidecars), list(pic.tag_rows))
    special = add_special_tags(rules, members, pictures, cleaned, decisions) if captions.special_tags else {}
    cleaned, added = edits_craft.apply_tags(cleaned, members, tag_edits)
    for name, tags in special.items():  # never pruned, unless an edit took them out again
        added[name] = [*(t for t in tags if t in cleaned[name]), *added.get(name, [])]
    missing = [f"{rule.folder}/{name}" for rule in rules for name in members[rule.folder]
               if not cleaned[name] and prune_craft.needs_tags(rule)]
    if missing:
        raise CaptionError(
            f"{len(missing)} images have no caption (no tags from user sidecars, booru tags or the tagger): "
            f"{name_list(missing, MAX_LISTED)}. "
            "kohya would caption them with the folder name; add .txt sidecars, set autotag.model, or remove them",
            missing,
        )
    return cleaned, characters, added


def add_special_tags(rules: Sequence[prune_craft.GroupRule], members: Mapping[str, list[str]],
                     pictures: Mapping[str, Picture], cleaned: dict[str, list[str]],
                     decisions: list[dict] | None) -> dict[str, list[str]]:
    """rules.md §10's special tags applied to `cleaned` in place; per picture, the tags they added."""
    gender: dict[str, str] = {}
    for rule in rules:  # whose is the one face in focus: the concept's character as its solo pictures show it
        names = [n for r in rules if r.concept == rule.concept for n in members[r.folder]]
        gender[rule.folder] = screen_craft.subject_gender([cleaned[n] for n in names if n in cleaned])
    added: dict[str, list[str]] = {}
    for rule in rules:
        for name in members[rule.folder]:
            if name in added:
                continue
            pic = pictures[name]
            specials = screen_craft.special_tags(cleaned[name], pic.source_kinds, bool(pic.framing), gender[rule.folder])
            cleaned[name] = screen_craft.apply_special(cleaned[name], specials)
            added[name] = [t for s in specials for t in s.added]
            for s in specials:
                if decisions is not None:
                    decisions.append({"name": name, "image_hash": pic.hash, "rule": f"special:{s.rule}",
                                      "action": "add", "tags": [*s.added, *(f"-{t}" for t in s.removed)],
                                      "reason": s.note()})
    return {n: a for n, a in added.items() if a}


def prune_groups(rules: Sequence[prune_craft.GroupRule], members: Mapping[str, list[str]],
                 cleaned: Mapping[str, list[str]], characters: set[str], captions: CaptionSettings,
                 added: Mapping[str, list[str]] | None = None) -> tuple[dict[tuple[str, str], str], list[dict], list[str]]:
    """Each group pruned into its triggers: the captions, tag counts before/after, and the guide's warnings.

    `added`: per picture, tags an edit gave it: never pruned."""
    stats, texts, warnings = [], {}, []
    for rule in rules:
        group = {n: cleaned[n] for n in members[rule.folder]}
        if not group:
            continue
        result = prune_craft.prune_group(rule, group, characters)
        warnings += result.warnings
        before = Counter(t for tags in group.values() for t in tags)
        after: Counter[str] = Counter()
        for n, kept in result.captions.items():
            kept = edits_craft.keep_added(kept, (added or {}).get(n, []))
            text = prune_craft.build_caption(rule, kept, captions.tag_style, captions.keep_tokens_separator)
            texts[(rule.folder, n)] = ", ".join(p for p in (*captions.prefix_tags, text) if p)
            head, body = prune_craft.caption_parts(rule, kept)
            after.update(dict.fromkeys(head + body, 1))
        stats += [{"concept": rule.folder, "phase": "before_prune", "tag": t, "count": c} for t, c in before.items()]
        stats += [{"concept": rule.folder, "phase": "after_prune", "tag": t, "count": c} for t, c in after.items()]
    return texts, stats, warnings


def plan_folder_repeats(concepts: Sequence[prune_craft.ConceptSpec], rules: Sequence[prune_craft.GroupRule],
                        members: Mapping[str, list[str]], repeats: RepeatSettings,
                        factors: Mapping[str, float] | None = None) -> repeats_craft.RepeatsPlan:
    """Repeats per folder: about the same steps per epoch for each concept (rules.md §8). `factors`: concept ->
    its own step factor on top of the run's multiplier (the composition's retro cut)."""
    outfit_names = {o.name for c in concepts for o in c.outfits}
    factors = factors or {}
    return repeats_craft.plan_repeats(
        [repeats_craft.FolderIn(r.folder, r.concept, len(members[r.folder]), r.target_steps, r.folder in outfit_names,
                                factors.get(r.concept or r.folder, 1.0))
         for r in rules],
        epochs=repeats.epochs, optimizer=repeats.optimizer, mult=repeats.multiplier, main_concept=repeats.main_concept,
    )


def caption_checks(texts: Mapping[tuple[str, str], str], cleaned: Mapping[str, list[str]],
                   post_counts: Mapping[str, int], captions: CaptionSettings) -> list[str]:
    """The guide's caption checks: a caption over 1 KB (a tagger gone wrong), rare tags (rules.md §9)."""
    warnings, rare = [], set()
    for (folder, n), text in texts.items():
        flags = tags_craft.flag_caption(text, cleaned[n], dict(post_counts), captions.warn_caption_bytes,
                                        captions.rare_tag_posts)
        if flags.too_long:
            warnings.append(f"{folder}/{n}: caption is {len(text.encode())} bytes (> {captions.warn_caption_bytes}): "
                            "a tagger gone wrong?")
        rare.update(flags.rare)
    if rare:
        warnings.append(f"rare tags (< {captions.rare_tag_posts} posts, weakly known by the model): "
                        f"{name_list(sorted(rare), MAX_LISTED, 'tag')}")
    return warnings


def file_names(names: Sequence[str]) -> dict[str, str]:
    """Flat, unique file names for kohya folders (`chara/img001` -> `chara_img001`)."""
    out, used = {}, set()
    for name in names:
        flat = name.replace("/", "_")
        candidate, k = flat, 1
        while candidate in used:
            k += 1
            candidate = f"{flat}_{k}"
        used.add(candidate)
        out[name] = candidate
    return out


def assemble(texts: Mapping[tuple[str, str], str], pictures: Mapping[str, Picture],
             n_repeats: Mapping[str, int]) -> list[TrainImage]:
    files = file_names(sorted({n for _, n in texts}))
    return sorted(
        TrainImage(folder=folder, name=files[n], image_hash=pictures[n].hash, caption=text,
                   repeats=n_repeats[folder], mask_hash=pictures[n].mask)
        for (folder, n), text in texts.items()
    )


def caption_triggers(rules: Sequence[prune_craft.GroupRule], members: Mapping[str, list[str]]) -> list[str]:
    """Every trigger word of the groups that have pictures, in order, once."""
    return list(dict.fromkeys(t for r in rules if members[r.folder] for t in prune_craft.caption_parts(r, [])[0]))
