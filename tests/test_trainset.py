"""How a training set is built, in one craft call and with no Prefect: captions, repeats, skips, stats."""

from __future__ import annotations

import pytest

from bakery.craft.caption import prune as prune_craft
from bakery.craft.caption.tags import CleanRules
from bakery.craft.caption.trainset import (
    CaptionError,
    CaptionSettings,
    Picture,
    RepeatSettings,
    build_trainset,
    file_names,
)

CHARA = prune_craft.ConceptSpec(
    name="CharaA", trigger="CharaA", paths=("a/**",), style="semi_static", target_steps=300,
    outfits=(prune_craft.OutfitSpec("CharaA_dress", "red_dress_white_apron", ("a/dress/**",), 100, (), True),),
)
MISC = prune_craft.ConceptSpec(name="misc", trigger="CharaA", paths=("misc/**",), style="fluid", target_steps=300)
SETTINGS = CaptionSettings(CleanRules(delete=("meme",), synonyms={"circlet": "tiara"}))
PRODIGY = RepeatSettings(epochs=8, optimizer="prodigy")


def pictures(captions: dict[str, str]) -> dict[str, Picture]:
    return {name: Picture(name, f"{i:064x}", sidecars=(text,) if text else ()) for i, (name, text) in
            enumerate(sorted(captions.items()))}


def test_captions_repeats_and_stats_of_a_concept_an_outfit_and_misc():
    pics = pictures({
        "a/1": "red_hair, long_hair, smile, meme, circlet",
        "a/2": "red_hair, sitting",
        "a/dress/3": "red_hair, red_dress, white_apron, black_footwear",
        "misc/4": "red_hair, bow",
        "elsewhere/5": "tree",
    })
    built = build_trainset([CHARA, MISC], pics, SETTINGS, PRODIGY, post_counts={"sitting": 120})
    got = {(t.folder, t.name): (t.caption, t.repeats) for t in built.trainset.images}
    assert got == {
        # semi-static: hair colour and hairstyle go into the trigger; the delete list and synonyms apply
        ("CharaA", "a_1"): ("CharaA, smile, tiara", 150),
        ("CharaA", "a_2"): ("CharaA, sitting", 150),
        # the outfit absorbs its garments, never the footwear
        ("CharaA_dress", "a_dress_3"): ("CharaA, red_dress_white_apron, black_footwear", 100),
        ("misc", "misc_4"): ("CharaA, red_hair, bow", 300),  # fluid keeps every tag
    }
    assert built.trainset.triggers == ["CharaA", "red_dress_white_apron"]
    assert built.trained == ["a/1", "a/2", "a/dress/3", "misc/4"]
    assert [(s.subject, s.reason) for s in built.skips] == [("elsewhere/5", "no concept's paths match this image")]
    assert {f.folder: f.repeats for f in built.plan.folders} == {"CharaA": 150, "CharaA_dress": 100, "misc": 300}
    stats = {(s["concept"], s["phase"], s["tag"]): s["count"] for s in built.stats}
    assert stats[("CharaA", "before_prune", "red_hair")] == 2 and ("CharaA", "after_prune", "red_hair") not in stats
    assert any(w.startswith("rare tags (< 500 posts") and "sitting" in w for w in built.trainset.warnings)


def test_a_picture_without_any_tag_fails_with_its_name():
    pics = pictures({"a/1": "red_hair", "a/2": ""})
    with pytest.raises(CaptionError, match=r"^1 images have no caption .*: CharaA/a/2\. kohya would caption"):
        build_trainset([CHARA], pics, SETTINGS, PRODIGY, post_counts={})


def test_flat_file_names_stay_unique():
    assert file_names(["a/b", "a_b", "c"]) == {"a/b": "a_b", "a_b": "a_b_2", "c": "c"}


def test_heads_per_folder_match_the_exports_keep_tokens():
    """Every folder's head (prefix tags + its triggers) stays in place in our bake, as export-kohya's keep_tokens."""
    from dataclasses import replace

    pics = pictures({"a/1": "red_hair, smile", "a/dress/3": "red_hair, red_dress, white_apron", "misc/4": "bow"})
    built = build_trainset([CHARA, MISC], pics, replace(SETTINGS, prefix_tags=("score_9",)), PRODIGY, post_counts={})
    assert built.trainset.heads == {"CharaA": 2, "CharaA_dress": 3, "misc": 2}
    dress = next(t for t in built.trainset.images if t.folder == "CharaA_dress")
    assert dress.caption.startswith("score_9, CharaA, red_dress_white_apron")
    # The same numbers as bakery/kohya_export.py's keep_tokens per folder.
    rules, _, _ = prune_craft.layout([CHARA, MISC], [])
    assert built.trainset.heads == {r.folder: 1 + len(prune_craft.caption_parts(r, [])[0]) for r in rules}
