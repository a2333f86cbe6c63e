"""The tag judges on real tagger runs: a tiny WD14 ONNX tagger whose tags follow the picture's mean colour,
over renders whose colours we set, so identity, bleed, flexibility and the ranking have known answers."""

from __future__ import annotations

import numpy as np
import pytest

from bakery.craft.taste import evaluate as ev
from bakery.craft.taste import ranking
from bakery.craft.taste.judges import panel as judging
from bakery.craft.taste.judges import tags as J
from tests.wd14_model import write_tiny_wd14

# Extra tags on the mean B, G, R (0-255) of the picture: logit = w . (B, G, R) + bias.
JUDGE_TAGS = [
    ("blonde_hair", 0, (0.0, 0.1, 0.0), -12.0),  # green >= 120
    ("red_dress", 0, (-0.05, -0.05, 0.05), -3.0),  # red over green + blue
    ("blue_shirt", 0, (0.05, -0.05, -0.05), -3.0),  # blue over green + red
    ("outdoors", 0, (0.05, -0.05, 0.05), -15.0),  # magenta
]
GREY, HAIR, RED, BLUE, MAGENTA = (60, 60, 60), (0, 130, 0), (255, 130, 0), (0, 130, 255), (255, 0, 255)
GROUPS = {"chara": ("chara",), "red": ("chara", "chara_red"), "blue": ("chara", "chara_blue")}
ABSORBED = {"chara": ["blonde_hair"], "red": ["blonde_hair", "red_dress"], "blue": ["blonde_hair", "blue_shirt"]}
PROMPTS = ["chara", "chara, chara_red", "chara, chara_blue, smile"]
FLEX = ["chara, outdoors"]


def flat(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((32, 32, 3), rgb, np.uint8)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> judging.TaggerSpec:
    return judging.TaggerSpec(str(write_tiny_wd14(tmp_path_factory.mktemp("wd14"), extra_tags=JUDGE_TAGS)))


def renders() -> tuple[dict, dict]:
    """Epoch 1 learnt everything; epoch 2 bleeds red into the blue outfit and ignores the flexibility prompt."""
    grid, flex = {}, {}
    for s in (1, 2):
        for p in range(3):
            for e in (1, 2):
                grid[(e, 0.0, p, s)] = flat(GREY)
            grid[(1, 1.0, p, s)] = flat((HAIR, RED, BLUE)[p])
            grid[(2, 1.0, p, s)] = flat((HAIR, RED, RED)[p])
    for e, full in ((1, MAGENTA), (2, RED)):
        flex[(e, 0.0, 0, 1)], flex[(e, 1.0, 0, 1)] = flat(MAGENTA), flat(full)
    return grid, flex


def test_tagger_reads_the_colours(tagger):
    tags = judging.tag_images(tagger, {"grey": flat(GREY), "red": flat(RED), "blue": flat(BLUE), "m": flat(MAGENTA)})
    assert {"blonde_hair", "red_dress"} <= tags["red"] and "blue_shirt" not in tags["red"]
    assert {"blonde_hair", "blue_shirt"} <= tags["blue"] and "red_dress" not in tags["blue"]
    assert "outdoors" in tags["m"] and not {"blonde_hair", "red_dress", "blue_shirt", "outdoors"} & tags["grey"]


def test_identity_bleed_flexibility_and_ranking(tagger):
    grid, flex = renders()
    gt = judging.tag_images(tagger, grid)
    ft = judging.tag_images(tagger, flex)
    identity = J.identity(gt, PROMPTS, GROUPS, ABSORBED)
    assert identity.wanted == {"chara": ["blonde_hair"], "chara_red": ["blonde_hair", "red_dress"],
                               "chara_blue": ["blonde_hair", "blue_shirt"]}
    assert identity.scores["chara"] == {(1, 0.0): 0.0, (1, 1.0): 1.0, (2, 0.0): 0.0, (2, 1.0): 1.0}
    assert identity.scores["chara_blue"][(1, 1.0)] == 1.0 and identity.scores["chara_blue"][(2, 1.0)] == 0.5
    bleed = J.bleed(gt, PROMPTS, GROUPS, ABSORBED)
    assert bleed.wanted == {"chara_red": ["blue_shirt"], "chara_blue": ["red_dress"]}
    assert bleed.scores["chara_blue"][(1, 1.0)] == 0.0 and bleed.scores["chara_blue"][(2, 1.0)] == 1.0
    assert bleed.scores["chara_red"][(2, 1.0)] == 0.0
    fl = J.flexibility(ft, FLEX, ["chara", "chara_red", "chara_blue"])
    assert fl.wanted == {"chara, outdoors": ["outdoors"]}
    assert fl.scores["chara, outdoors"] == {(1, 0.0): 1.0, (1, 1.0): 1.0, (2, 0.0): 1.0, (2, 1.0): 0.0}

    evals = [ev.evaluate_epoch(e, {k[1:]: v for k, v in grid.items() if k[0] == e}, 1.0, 1.0, 0.5) for e in (1, 2)]
    j = judging.Judged("wd14", "", identity, bleed, fl, None, ranking.Ranking(), [], FLEX, 0.2, {})
    r = ranking.rank(evals, j.by_cell(), tolerance=0.05)
    assert r.decided and r.tied == [(1, 1.0)] and [(x["epoch"], x["weight"]) for x in r.rows] == [(1, 1.0), (2, 1.0)]
    assert "flexibility decided" in r.reasons[1]  # the widest gap: 1.0 vs 0.0
    flags = judging.judge_flags(j, evals, margin=0.25)
    assert any(f.startswith("epoch 2: concept bleed") and "Color_Item" in f and "LoCon" in f and "Prodigy" in f
               for f in flags)
    assert any(f.startswith("epoch 2: over-fit") for f in flags)
    assert not any(f.startswith("epoch 1") for f in flags)
    rows = j.score_rows(evals)
    assert {r["judge"] for r in rows} == {"identity", "bleed", "flexibility"}


def test_ranking_says_when_the_data_cannot_decide():
    grid = {(e, w, 0, 1): flat(GREY if w == 0 else RED) for e in (1, 2, 3) for w in (0.0, 0.5, 1.0)}
    evals = [ev.evaluate_epoch(e, {k[1:]: v for k, v in grid.items() if k[0] == e}, 1.0, 1.0, 0.5) for e in (1, 2, 3)]
    scores = {"identity": {(e, w): (0.0 if w == 0 else 0.8) for e in (1, 2, 3) for w in (0.0, 0.5, 1.0)}}
    scores["identity"][(1, 1.0)] = 0.5  # epoch 1 below the others at weight 1
    r = ranking.rank(evals, scores, tolerance=0.05)
    assert not r.decided and "cannot decide between epochs 1, 2, 3" in r.reasons[1]
    loss = ev.LossChoice(2, "falling_then_rising", "loss falls until epoch 2")
    rec = ev.recommend(evals, loss, 3, [0.0, 0.5, 1.0])
    out = ranking.ranked_recommendation(rec, r, evals, loss, 3, [0.0, 0.5, 1.0], None)
    assert out.epoch == 2 and (out.weight_min, out.weight_max) == (0.5, 1.0)
    assert any("among them: loss rule" in x for x in out.reasons)


def test_effect_relative_to_seed_variation():
    a, b = flat((10, 10, 10)), flat((110, 110, 110))
    spread = J.seed_spread({(0, 1): a, (0, 2): b})
    assert spread == pytest.approx(100.0) and J.seed_spread({(0, 1): a}) is None
    small = ev.evaluate_epoch(1, {(0.0, 0, 1): a, (1.0, 0, 1): flat((15, 15, 15))}, 1.0, 1.0, 0.5)
    big = ev.evaluate_epoch(2, {(0.0, 0, 1): a, (1.0, 0, 1): flat((60, 60, 60))}, 1.0, 1.0, 0.5)
    assert not small.does_nothing  # 5/255 passes the absolute rule ...
    judging.apply_effect_ratio([small, big], spread, 0.2)
    assert small.effect_ratio == pytest.approx(0.05) and small.does_nothing  # ... but is 5 % of the seed change
    assert big.effect_ratio == pytest.approx(0.5) and not big.does_nothing
    assert "0.05 of the change between seeds" in ev.epoch_flags([small])[0]


def test_what_prune_recorded_and_the_default_flexibility_prompts():
    stats = [{"concept": "red", "phase": "before_prune", "tag": t, "count": 3}
             for t in ("1girl", "blonde_hair", "red_dress", "smile", "chara_red")]
    stats += [{"concept": "red", "phase": "after_prune", "tag": t, "count": 3} for t in ("smile", "chara", "chara_red")]
    assert J.absorbed_tags(stats, ["chara", "chara_red"]) == {"red": ["blonde_hair", "red_dress"]}
    caps = [("red", "chara, chara_red, smile"), ("red", "chara, chara_red"), ("chara", "chara, sitting")]
    groups = J.group_triggers(caps, ["chara", "chara_red"])
    assert groups == {"chara": ("chara",), "red": ("chara", "chara_red")}
    assert J.own_groups(groups) == {"chara": "chara", "chara_red": "red"}
    outfits = {"red": ("chara", "chara_red"), "blue": ("chara", "chara_blue")}
    assert J.shared_identity(outfits, {"red": ["blonde_hair", "red_dress"], "blue": ["blonde_hair", "blue_shirt"]}) \
        == {"chara": ["blonde_hair"]}
    assert J.prompt_group("chara, chara_red, smile", groups) == "red" and J.prompt_group("other", groups) is None
    assert J.prompt_group("chara_red", groups) == "red" and J.prompt_group("chara", groups) == "chara"
    # "sitting" is shown in the training set: the next default is used.
    assert J.flex_prompts(None, ["chara"], {"chara": {"sitting"}}) == ["chara, swimsuit, beach"]
    assert J.flex_prompts(["{trigger}, night", "x, y"], ["a", "b"], {}) == ["a, night", "b, night", "x, y"]
    assert J.flex_prompts([], ["a"], {}) == []
