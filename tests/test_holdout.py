"""Which pictures the validation loss uses (bakery/craft/caption/holdout.py), and the training set built around them. No Prefect."""

from __future__ import annotations

from bakery.craft.caption import holdout as H
from bakery.craft.caption import prune as prune_craft
from bakery.craft.caption.tags import CleanRules
from bakery.craft.caption.trainset import CaptionSettings, Picture, RepeatSettings, build_trainset

DEFAULTS = H.HoldOutSettings()
CHARA = prune_craft.ConceptSpec(name="CharaA", trigger="CharaA", paths=("a/**",), style="fluid", target_steps=300)
MISC = prune_craft.ConceptSpec(name="misc", trigger="CharaA", paths=("misc/**",), style="fluid", target_steps=300)
SETTINGS = CaptionSettings(CleanRules())
PRODIGY = RepeatSettings(epochs=8, optimizer="prodigy")


def hashes(names):
    return {n: f"{i:064x}" for i, n in enumerate(names)}


def test_one_picture_per_group_of_eight_up_to_a_share():
    assert [H.held_out_count(n, DEFAULTS) for n in (1, 7, 8, 15, 16, 100)] == [0, 0, 1, 1, 1, 1]
    three = H.HoldOutSettings(per_group=3)
    assert [H.held_out_count(n, three) for n in (7, 8, 16, 24, 100)] == [0, 1, 2, 3, 3]  # at most 1/8 of the group
    assert H.held_out_count(100, H.HoldOutSettings(enabled=False)) == 0


def test_the_choice_is_stable_and_a_picture_is_held_out_of_every_group_it_is_in():
    big = [f"a/{i}" for i in range(10)]
    h = H.choose({"A": big, "A_unpruned": big, "small": ["s/1", "s/2"]}, hashes(big + ["s/1", "s/2"]), DEFAULTS)
    assert h.held_out and list(h.chosen) == ["A"] and len(h.chosen["A"]) == 1  # the same picture leaves A_unpruned
    assert H.choose({"A": list(reversed(big))}, hashes(big), DEFAULTS).chosen == {"A": h.chosen["A"]}
    # One more picture in the group leaves the choice alone unless the newcomer sorts first.
    more = big + ["a/new"]
    again = H.choose({"A": more}, {**hashes(big), "a/new": "f" * 64}, DEFAULTS)
    assert again.chosen["A"] == h.chosen["A"]
    assert "1 picture(s) held out" in H.note(h) and "A (1)" in H.note(h)


def test_a_set_too_small_to_spare_one_uses_training_pictures_labelled_so():
    names = ["a/1", "a/2", "b/1"]
    h = H.choose({"A": ["a/1", "a/2"], "B": ["b/1"]}, hashes(names), DEFAULTS)
    assert not h.held_out and {f: len(v) for f, v in h.chosen.items()} == {"A": 1, "B": 1}
    assert "not held out" in H.note(h)
    assert H.choose({"A": names}, hashes(names), H.HoldOutSettings(enabled=False)).chosen == {}


def _pictures(n_a: int, n_misc: int) -> dict[str, Picture]:
    names = [f"a/{i}" for i in range(n_a)] + [f"misc/{i}" for i in range(n_misc)]
    return {n: Picture(n, f"{i:064x}", sidecars=("red_hair, smile",)) for i, n in enumerate(names)}


def test_the_training_set_holds_the_held_out_picture_in_its_validation_list_not_in_training():
    pics = _pictures(9, 3)
    built = build_trainset([CHARA, MISC], pics, SETTINGS, PRODIGY, post_counts={}, holdout=DEFAULTS)
    ts = built.trainset
    assert ts.validation_held_out and len(ts.validation) == 1
    val = ts.validation[0]
    assert val.folder == "CharaA" and val.repeats == 0 and val.caption.startswith("CharaA")
    trained = {(t.folder, t.name) for t in ts.images}
    assert (val.folder, val.name) not in trained and len(trained) == 11  # 8 of CharaA + 3 of misc
    # The repeats are planned on the 8 pictures that train; the held-out one is still in the account.
    assert {f.folder: f.images for f in built.plan.folders} == {"CharaA": 8, "misc": 3}
    assert len(built.trained) == 12 and len(ts.subjects()) == 12
    # Without hold-out the same pictures all train.
    plain = build_trainset([CHARA, MISC], pics, SETTINGS, PRODIGY, post_counts={})
    assert len(plain.trainset.images) == 12 and plain.trainset.validation == []


def test_too_small_a_set_validates_on_training_pictures():
    built = build_trainset([CHARA, MISC], _pictures(4, 3), SETTINGS, PRODIGY, post_counts={}, holdout=DEFAULTS)
    ts = built.trainset
    assert not ts.validation_held_out and [t.folder for t in ts.validation] == ["CharaA", "misc"]
    assert all(t in ts.images for t in ts.validation) and len(ts.images) == 7
    assert len(ts.subjects()) == 7  # training pictures are counted once
