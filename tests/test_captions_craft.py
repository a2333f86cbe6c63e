"""Rule-by-rule tests of caption cleanup, triggers, pruning and repeats (rules.md §8-§10)."""

from __future__ import annotations

from bakery.craft.caption import prune as P
from bakery.craft.caption import repeats as R
from bakery.craft.caption import tags as T

# The guide's own example (§10, "Um exemplo de poda", original-pt.md lines 472-476), one image of CharaA in
# Outfit1. The Portuguese copy translates the tag names; these are the Danbooru tags they stand for, in its order:
#   "Não podado: 1girl, ascot, boca_fechada, ascot_com_frufrus, saia_com_frufrus, frufrus, cabelo_verde,
#    mangas_longas, olhando_para_o_observador, desafio_de_desenho_de_uma_hora, boca_aberta, xadrez, saia_xadrez,
#    colete_xadrez, saia_vermelha, colete_vermelho, camisa, cabelo_curto, fundo_simples, saia, solo, guarda-chuva,
#    colete, camisa_branca, fundo_amarelo"
#   "Podado: CharaA, Roupa1, boca_fechada, olhando_para_o_observador, boca_aberta, fundo_simples, solo,
#    guarda-chuva, fundo_amarelo"
#   "CharaA absorverá conceitos como 1girl que representam o personagem, enquanto Roupa1 absorverá os conceitos
#    da roupa."
GUIDE_UNPRUNED = (
    "1girl, ascot, closed_mouth, frilled_ascot, frilled_skirt, frills, green_hair, long_sleeves, "
    "looking_at_viewer, one-hour_drawing_challenge, open_mouth, plaid, plaid_skirt, plaid_vest, red_skirt, "
    "red_vest, shirt, short_hair, simple_background, skirt, solo, umbrella, vest, white_shirt, yellow_background"
)
GUIDE_PRUNED = (
    "CharaA, Outfit1, closed_mouth, looking_at_viewer, open_mouth, simple_background, solo, umbrella, "
    "yellow_background"
)


def test_guide_example_unpruned_to_pruned_exactly():
    # No extra rule in the recipe: semi-static is the default and the lone character trigger absorbs 1girl.
    chara = P.ConceptSpec("CharaA", "CharaA", outfits=(P.OutfitSpec("Outfit1", "Outfit1", ("outfit1/*",)),))
    rules, members, unassigned = P.layout([chara], ["outfit1/img"])
    assert members == {"CharaA": [], "Outfit1": ["outfit1/img"]} and not unassigned
    rule = next(r for r in rules if r.folder == "Outfit1")
    # The guide's cleanup runs first: the drawing challenge is on the delete list.
    cleaned = T.clean_tags(T.parse_caption(GUIDE_UNPRUNED), T.CleanRules())
    assert "one-hour_drawing_challenge" not in cleaned
    result = P.prune_group(rule, {"outfit1/img": cleaned})
    assert P.build_caption(rule, result.captions["outfit1/img"]) == GUIDE_PRUNED
    assert not result.warnings


def test_people_count_by_style_and_group():
    tags = {"a": ["1girl", "solo", "2girls", "multiple_girls", "1boy", "smile"]}

    def caption(c: P.ConceptSpec, folder: str | None = None) -> str:
        rule = next(r for r in P.layout([c], [])[0] if r.folder == (folder or c.name))
        return P.build_caption(rule, P.prune_group(rule, tags).captions["a"])

    # Semi-static, one character (the concept and its outfits): the one-person counts go, solo and the
    # counts of other people in the picture stay.
    one = P.ConceptSpec("A", "CharaA", outfits=(P.OutfitSpec("O", "Outfit1", ("*",)),))
    assert caption(one) == "CharaA, solo, 2girls, multiple_girls, smile"
    assert caption(one, "O") == "CharaA, Outfit1, solo, 2girls, multiple_girls, smile"
    # keep_tags still keeps 1girl.
    assert caption(P.ConceptSpec("A", "CharaA", keep_tags=("1girl",))) == "CharaA, 1girl, solo, 2girls, multiple_girls, smile"
    # Static prunes every people count (solo too); fluid keeps everything.
    assert caption(P.ConceptSpec("A", "CharaA", style="static")) == "CharaA, smile"
    assert caption(P.ConceptSpec("A", "CharaA", style="fluid")) == "CharaA, 1girl, solo, 2girls, multiple_girls, 1boy, smile"
    # Several characters: nothing absorbed unless prune_people_count says so (then all of it).
    pair = P.ConceptSpec("AB", "CharaA", extra_triggers=("CharaB",))
    assert caption(pair) == "CharaA, CharaB, 1girl, solo, 2girls, multiple_girls, 1boy, smile"
    pair = P.ConceptSpec("AB", "CharaA", extra_triggers=("CharaB",), prune_people_count=True)
    assert caption(pair) == "CharaA, CharaB, smile"


def test_normalise_and_parse_formats():
    assert T.normalize_tag("  White Shirt ") == "white_shirt"
    assert T.normalize_tag("hatsune_miku_\\(cosplay\\)") == "hatsune_miku_(cosplay)"
    assert T.parse_caption("1girl, white shirt,\nsolo, solo") == ["1girl", "white_shirt", "solo"]
    # Grabber: `|`-joined, spaces inside tags, namespace prefixes; most prefixes dropped.
    grabber = "character:hatsune miku|artist:some artist|general:long hair|twintails|meta:highres|:d|re:zero"
    assert T.parse_caption(grabber) == ["hatsune_miku", "long_hair", "twintails", ":d", "re:zero"]
    assert T.parse_caption(grabber, keep_namespaces=("general",)) == ["long_hair", "twintails", ":d", "re:zero"]
    assert T.parse_caption("   \n") == []
    assert T.parse_caption("chara_a ||| smile, solo") == ["chara_a", "smile", "solo"]


def test_delete_list_globs():
    rules = T.CleanRules()
    tags = ["meme", "parody", "sailor_moon_redraw_challenge_(meme)", "shiny_skin", "uncensored", "smile"]
    assert T.clean_tags(tags, rules) == ["smile"]
    assert T.clean_tags(["smile", "frown"], T.CleanRules(delete=("fr*",))) == ["smile"]


def test_synonyms_pick_one():
    assert T.clean_tags(["circlet", "tiara", "smile"], T.CleanRules()) == ["tiara", "smile"]
    assert T.clean_tags(["tiara"], T.CleanRules(synonyms={"tiara": "circlet"})) == ["circlet"]


def test_redundancy_keeps_the_specific():
    rules = T.CleanRules()
    assert T.clean_tags(["shirt", "white_shirt", "smile"], rules) == ["white_shirt", "smile"]
    assert T.clean_tags(["hair", "long_hair"], rules) == ["long_hair"]
    assert T.clean_tags(["bow", "black_back_bow"], rules) == ["black_back_bow"]
    # A prefix is not a refinement: shirt_lift says nothing about the shirt's kind.
    assert T.clean_tags(["shirt", "shirt_lift"], rules) == ["shirt", "shirt_lift"]
    assert T.clean_tags(["shirt", "white_shirt"], T.CleanRules(redundancy=False)) == ["shirt", "white_shirt"]
    assert T.clean_tags(["shirt", "white_shirt"], T.CleanRules(keep_generic=("shirt",))) == ["shirt", "white_shirt"]
    assert T.clean_tags(["dress", "sundress"], T.CleanRules(implies={"sundress": ("dress",)})) == ["sundress"]


def test_split_vague_tags():
    rules = T.CleanRules(split={"armor": ("pauldron", "gorget", "breastplate")})
    assert T.clean_tags(["armor", "smile", "gorget"], rules) == ["pauldron", "gorget", "breastplate", "smile"]


def test_dedupe_after_normalisation():
    assert T.clean_tags(["Long Hair", "long_hair", "long  hair"], T.CleanRules()) == ["long_hair"]


def test_flags_long_caption_and_rare_tags():
    tags = [f"tag_{i:04d}" for i in range(120)]
    flags = T.flag_caption(T.join_caption(tags), tags, {"tag_0001": 20, "tag_0002": 5000})
    assert flags.too_long and flags.rare == ("tag_0001",)
    assert not T.flag_caption("a, b", ["a", "b"]).too_long


def test_space_style_caption():
    assert T.join_caption(["white_shirt", "^_^"], "space") == "white shirt, ^_^"


def test_categories_by_pattern():
    for t in ("green_hair", "light_brown_hair", "multicolored_hair", "blue_eyes", "heterochromia"):
        assert P.is_intrinsic(t), t
    for t in ("short_hair", "twintails", "side_ponytail", "blunt_bangs", "ahoge", "lipstick", "red_lipstick"):
        assert P.is_intrinsic(t), t
    for t in ("smile", "open_mouth", "parted_lips", "hair_ornament", "white_shirt"):
        assert not P.is_intrinsic(t), t
    assert P.is_intrinsic("mole_under_eye", extra=("mole*",))
    for t in ("white_shirt", "long_sleeves", "plaid", "frills", "red_vest", "pleated_skirt", "detached_sleeves", "sleeveless"):
        assert P.is_garment(t), t
    for t in ("black_footwear", "high_heels", "boots", "thigh_boots", "loafers"):
        assert P.is_footwear(t) and not P.is_garment(t), t
    assert P.is_breast_size("large_breasts") and P.is_breast_size("flat_chest") and not P.is_breast_size("breasts_out")
    assert P.is_people_count("2girls") and P.is_people_count("1boy") and P.is_people_count("multiple_girls")


CAPTION = ["1girl", "solo", "blonde_hair", "long_hair", "green_eyes", "large_breasts", "lipstick",
           "white_shirt", "red_skirt", "black_footwear", "smile", "outdoors"]


def _prune(style: str, **kw) -> list[str]:
    rule = P.GroupRule("g", ("Chara",), style=style, **kw)
    return P.prune_group(rule, {"a": CAPTION}).captions["a"]


def test_fluid_keeps_all():
    assert _prune("fluid") == CAPTION


def test_semi_static_prunes_intrinsics_not_breasts_or_editables():
    # 1girl: the lone character trigger absorbs it (rules.md §10).
    assert _prune("semi_static") == ["solo", "large_breasts", "white_shirt", "red_skirt", "black_footwear",
                                     "smile", "outdoors"]


def test_static_prunes_the_whole_concept_but_breast_size():
    assert _prune("static") == ["large_breasts", "smile", "outdoors"]


def test_breast_size_is_never_pruned_even_when_asked():
    rule = P.GroupRule("g", ("Chara",), style="semi_static", prune_tags=("large_breasts", "smile"))
    res = P.prune_group(rule, {"a": CAPTION})
    assert "large_breasts" in res.captions["a"] and "smile" not in res.captions["a"]
    assert any("breast-size" in w for w in res.warnings)
    assert P.check_layout([P.ConceptSpec("c", "t", prune_tags=("small_breasts",))])


def test_recognised_characters_pruned_unless_fluid():
    assert T.character_tags(["character:hatsune miku|long hair"], [
        {"tag": "kagamine_rin", "category": "character"}, {"tag": "smile", "category": "general"}]) == {
        "hatsune_miku", "kagamine_rin"}
    tags = {"a": ["hatsune_miku", "smile"]}
    semi = P.prune_group(P.GroupRule("g", ("Miku",)), tags, characters={"hatsune_miku"})
    fluid = P.prune_group(P.GroupRule("g", ("Miku",), style="fluid"), tags, characters={"hatsune_miku"})
    assert semi.captions["a"] == ["smile"] and fluid.captions["a"] == ["hatsune_miku", "smile"]


def test_user_lists_extend_and_protect():
    assert "outdoors" not in _prune("semi_static", prune_tags=("outdoor*",))
    assert "long_hair" in _prune("semi_static", keep_tags=("long_hair",))
    assert "smile" not in _prune("semi_static", intrinsic=("smile",))


def test_outfit_trigger_absorbs_garments_never_footwear():
    rule = P.GroupRule("o", ("Chara", "Outfit"), style="semi_static", auto_absorb=True,
                       absorb=("black_footwear",))
    res = P.prune_group(rule, {"a": CAPTION, "b": ["1girl", "white_shirt", "sitting"]})
    assert res.captions["a"] == ["solo", "large_breasts", "black_footwear", "smile", "outdoors"]
    assert res.captions["b"] == ["sitting"]
    assert any("footwear" in w for w in res.warnings)
    # Garments in under half of the group are not the outfit's: red_skirt appears in 1 of 3.
    res = P.prune_group(P.GroupRule("o", ("C", "O"), auto_absorb=True),
                        {"a": CAPTION, "b": ["white_shirt"], "c": ["white_shirt"]})
    assert "red_skirt" in res.captions["a"] and "white_shirt" not in res.captions["a"]
    assert P.check_layout([P.ConceptSpec("c", "t", outfits=(P.OutfitSpec("o", "O", ("*",), absorb=("boots",)),))])


def test_style_modes():
    rule = lambda m: P.GroupRule("s", ("StyleX",), style=m, prune_tags=("monochrome",))  # noqa: E731
    tags = ["1girl", "monochrome", "smile"]
    out = {m: P.build_caption(rule(m), P.prune_group(rule(m), {"a": tags}).captions["a"]) for m in P.STYLE_MODES}
    assert out == {
        "style_no_tags": "",
        "style_trigger_only": "StyleX",
        "style_all_tags": "1girl, smile",
        "style_all_tags_trigger": "StyleX, 1girl, smile",
    }
    assert not P.needs_tags(rule("style_no_tags")) and P.needs_tags(rule("style_all_tags"))


def test_trigger_first_and_keep_tokens_separator():
    rule = P.GroupRule("o", ("CharaA", "Outfit1"))
    assert P.build_caption(rule, ["smile", "white_shirt"], style="space") == "CharaA, Outfit1, smile, white shirt"
    assert P.build_caption(rule, ["smile"], keep_tokens_separator=True) == "CharaA, Outfit1 ||| smile"
    # A trigger the tagger emitted is not repeated.
    res = P.prune_group(P.GroupRule("g", ("chara_a",), style="fluid"), {"a": ["chara_a", "smile"]})
    assert res.captions["a"] == ["smile"]


def test_multi_concept_layout():
    a = P.ConceptSpec("CharaA", "CharaA", paths=("a/*",), outfits=(P.OutfitSpec("CharaA_dress", "ADress", ("a/dress/*",)),))
    b = P.ConceptSpec("CharaB", "CharaB", paths=("b/*",))
    ab = P.ConceptSpec("CharaAPLUSCharaB", "CharaA", extra_triggers=("CharaB",), paths=("ab/*",),
                       prune_people_count=True)
    misc = P.ConceptSpec("misc", "CharaA", paths=("misc/*",), style="fluid")
    rules, members, unassigned = P.layout([a, b, ab, misc],
                                          ["a/1", "a/dress/2", "b/1", "ab/1", "misc/1", "other/1"])
    assert members == {"CharaA": ["a/1"], "CharaA_dress": ["a/dress/2"], "CharaB": ["b/1"],
                       "CharaAPLUSCharaB": ["ab/1"], "misc": ["misc/1"]}
    assert unassigned == ["other/1"]
    by = {r.folder: r for r in rules}
    assert by["CharaA_dress"].head == ["CharaA", "ADress"]
    pair = P.prune_group(by["CharaAPLUSCharaB"], {"ab/1": ["2girls", "multiple_girls", "red_hair", "blue_hair", "hug"]})
    assert P.build_caption(by["CharaAPLUSCharaB"], pair.captions["ab/1"]) == "CharaA, CharaB, hug"
    m = P.prune_group(by["misc"], {"misc/1": ["1girl", "red_hair", "bow"]})
    assert P.build_caption(by["misc"], m.captions["misc/1"]) == "CharaA, 1girl, red_hair, bow"


def test_duplicate_and_split():
    c = P.ConceptSpec("Chara", "Chara", duplicate_split=True, outfits=(P.OutfitSpec("Dress", "RedDress", ("*",)),))
    rules, members, _ = P.layout([c], ["x1", "x2"])
    assert members == {"Chara": [], "Dress": ["x1", "x2"], "Dress_unpruned": ["x1", "x2"]}
    by = {r.folder: r for r in rules}
    tags = {"x1": ["1girl", "red_dress", "blonde_hair", "smile"], "x2": ["red_dress", "sitting"]}
    pruned = P.prune_group(by["Dress"], tags)
    copy = P.prune_group(by["Dress_unpruned"], tags)
    assert P.build_caption(by["Dress"], pruned.captions["x1"]) == "Chara, RedDress, smile"
    assert P.build_caption(by["Dress_unpruned"], copy.captions["x1"]) == "Chara, red_dress, smile"
    assert P.check_layout([P.ConceptSpec("c", "t", duplicate_split=True)])


def test_repeats_guide_examples():
    assert [R.repeats_for(n, 300) for n in (100, 50, 10)] == [3, 6, 30]
    assert [R.repeats_for(n, 200) for n in (20, 10, 5)] == [10, 20, 40]
    assert R.repeats_for(1000, 300) == 1  # never 0
    assert R.repeats_for(40, 100) == 3  # 2.5 rounds up


def test_repeats_multipliers_and_caps():
    assert R.multiplier(sdxl=True) == 0.5
    assert abs(R.multiplier(snr_or_ip_noise=True) - 0.6) < 1e-9
    assert abs(R.multiplier(True, True, True) - 0.1) < 1e-9
    folders = [R.FolderIn("CharaA", "CharaA", 100, 300), R.FolderIn("Outfit1", "CharaA", 50, 100, is_outfit=True),
               R.FolderIn("Outfit2", "CharaA", 5, 100, is_outfit=True), R.FolderIn("misc", "misc", 10, 300)]
    plan = R.plan_repeats(folders, epochs=8, optimizer="prodigy")
    assert plan.repeats() == {"CharaA": 3, "Outfit1": 2, "Outfit2": 20, "misc": 30}
    assert plan.per_concept == {"CharaA": 300 + 100 + 100, "misc": 300}
    assert plan.total_steps == 800 * 8
    assert any("exceeds the guide's cap of 3000" in w for w in plan.warnings)  # 500 x 8 = 4000
    assert any("Outfit2: 5 images" in w for w in plan.warnings)
    half = R.plan_repeats(folders[:1], epochs=8, optimizer="adamw", mult=R.multiplier(sdxl=True))
    assert half.repeats() == {"CharaA": 2} and not half.warnings  # 150 / 100 = 1.5 -> 2
    assert half.table()[0]["folder"] == "2_CharaA"


def test_recipe_keys_fail_with_their_path():
    from pathlib import Path

    import pytest

    from bakery.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError) as exc:
        parse_recipe({"concepts": [{"name": "a", "trigger": "A", "prune": "loose", "absorb_min_share": 0}],
                      "autotag": {"general_threshold": 1.5}, "captions": {"merge": "all", "tag_style": "x"},
                      "repeats": {"sdxl": "maybe"}}, Path("."))
    problems = "\n".join(exc.value.problems)
    for key in ("concepts[0].prune: must be one of", "concepts[0].absorb_min_share: must be > 0",
                "autotag.general_threshold: must be < 1", "captions.merge: must be one of", "captions.tag_style",
                "repeats.sdxl"):
        assert key in problems, (key, problems)
    with pytest.raises(RecipeError, match="repeats.main_concept 'zz' is not a concept name"):
        parse_recipe({"repeats": {"main_concept": "zz"}}, Path("."))


def test_readme_layout_example_parses(tmp_path):
    import re
    import tomllib
    from pathlib import Path

    from bakery.recipe import parse_recipe

    readme = (Path(__file__).resolve().parents[1] / "docs" / "stages.md").read_text()
    block = re.search(r"### Multi-concept layouts.*?```toml\n(.*?)```", readme, re.S).group(1)
    recipe = parse_recipe(tomllib.loads(block), tmp_path)
    assert [c.name for c in recipe.concepts] == ["CharaA", "CharaB", "CharaAPLUSCharaB", "misc"]
