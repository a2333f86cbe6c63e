"""The deepghs judges on files in deepghs's exact formats whose answers are known by construction
(tests/deepghs_models.py): CCIP's feature and metrics models and metrics.json, the classifiers' model.onnx and
meta.json, the aesthetic samples.npz; the CCIP identity and corruption judges, the ranking and the F-beta pick."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bakery.craft import deepghs
from bakery.craft.taste import evaluate as craft
from bakery.craft.taste import ranking as R
from bakery.craft.taste.judges import character as C
from tests.deepghs_models import CCIP_THRESHOLD, write_all

RED, RED2, BLUE, GREY, WHITE, GREEN, MAGENTA = ((200, 30, 30), (215, 45, 35), (30, 30, 200), (128, 128, 128),
                                                (245, 245, 245), (30, 220, 30), (220, 20, 220))


def flat(rgb, size=(48, 64)) -> np.ndarray:
    return np.full((size[1], size[0], 3), rgb, dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("deepghs"))


def _io(path):
    m = onnx.load(str(path))
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
    return {i.name: dims(i) for i in m.graph.input}, {o.name: dims(o) for o in m.graph.output}


def test_the_files_are_in_deepghs_formats(models):
    ccip = models["ccip"]
    assert sorted(p.name for p in ccip.iterdir()) == ["metrics.json", "model_feat.onnx", "model_metrics.onnx"]
    assert _io(ccip / "model_feat.onnx") == ({"input": ["N", 3, 384, 384]}, {"output": ["N", 768]})
    assert _io(ccip / "model_metrics.onnx") == ({"input": ["N", 768]}, {"output": ["N", "N"]})
    assert json.loads((ccip / "metrics.json").read_text())["threshold"] == pytest.approx(0.1785, abs=1e-4)
    for key in ("corrupt", "monochrome", "completeness", "kind", "aesthetic"):
        labels = json.loads((models[key] / "meta.json").read_text())["labels"]
        assert _io(models[key] / "model.onnx") == ({"input": ["N", 3, 64, 64]}, {"output": ["N", len(labels)]})
    assert "corrupted" in json.loads((models["corrupt"] / "meta.json").read_text())["labels"]


def test_ccip_same_character_by_colour_and_the_cache(models, tmp_path):
    model = deepghs.CCIP(models["ccip"], "judges.ccip_model", cache=tmp_path)
    assert model.threshold == CCIP_THRESHOLD
    feats = model.features([flat(RED), flat(RED2, (90, 30)), flat(BLUE)])
    assert feats.shape == (3, 768) and model.computed == 3
    d = model.differences(feats)
    assert d[0, 1] < model.threshold < d[0, 2]  # the same colour is the same character; red is not blue
    assert np.allclose(np.diag(d), 0, atol=1e-5) and np.allclose(d, d.T, atol=1e-6)
    again = deepghs.CCIP(models["ccip"], "judges.ccip_model", threshold=0.5, cache=tmp_path)
    assert np.allclose(again.features([flat(RED), flat(BLUE)]), feats[[0, 2]]) and again.computed == 0
    assert again.threshold == 0.5  # the recipe's threshold over metrics.json's
    alpha = np.zeros((8, 8, 4), np.uint8)  # transparent: composited on white
    assert np.allclose(again.features([alpha]), again.features([flat((255, 255, 255), (8, 8))]))


def test_a_folder_missing_a_file_names_the_key(models, tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(deepghs.ModelError, match=r"judges.ccip_model = .* model_feat.onnx, model_metrics.onnx missing"):
        deepghs.CCIP(tmp_path, "judges.ccip_model")
    with pytest.raises(deepghs.ModelError, match="judges.kind_model .* model.onnx, meta.json missing"):
        deepghs.Classifier(tmp_path / "none", "judges.kind_model")


def test_classifiers_answer_as_built(models):
    pics = [flat(RED), flat(GREY), flat(WHITE), flat(GREEN), flat(MAGENTA)]

    def top(key):
        return [max(s, key=s.get) for s in deepghs.Classifier(models[key], key).scores(pics)]

    assert top("monochrome") == ["normal", "monochrome", "monochrome", "normal", "normal"]
    assert top("completeness") == ["polished", "monochrome", "rough", "polished", "polished"]
    assert top("kind") == ["illustration", "comic", "comic", "3d", "illustration"]
    assert top("corrupt") == ["normal", "normal", "normal", "normal", "corrupted"]
    aesthetic = deepghs.Classifier(models["aesthetic"], "a")
    percentile = deepghs.aesthetic_percentile(models["aesthetic"])
    bright, dark = aesthetic.scores([flat(WHITE), flat((5, 5, 5))])
    assert percentile(deepghs.aesthetic_score(bright)) > 0.9 and percentile(deepghs.aesthetic_score(dark)) < 0.1


def _grid(cells: dict[tuple[int, float], tuple]) -> dict[tuple, np.ndarray]:
    """(epoch, weight) -> colour of its renders: prompt 0 ("chara"), seeds 1 and 2."""
    return {(e, w, 0, s): flat(rgb) for (e, w), rgb in cells.items() for s in (1, 2)}


def test_ccip_identity_is_the_share_judged_the_character_over_self_similarity(models):
    spec = C.CharacterSpec(str(models["ccip"]), str(models["corrupt"]))
    refs = {"chara": [flat(RED), flat(RED2), flat(BLUE)]}  # two red pictures, one blue: 2/3 alike to the merged one
    grid = _grid({(1, 0.0): BLUE, (1, 1.0): RED, (2, 0.0): BLUE, (2, 1.0): MAGENTA})
    scores = C.judge(spec, refs, grid, ["chara"])
    assert scores.note == "" and scores.corrupt_note == ""
    upbound = scores.self_similarity["chara"]
    assert upbound == pytest.approx(2 / 3)
    ident = scores.identity["chara"]
    assert ident[(1, 1.0)] == pytest.approx((2 / 3) / upbound)  # red renders: the two red pictures of three
    assert ident[(1, 0.0)] == pytest.approx((1 / 3) / upbound)  # blue renders: the one blue picture
    assert scores.corrupt[(2, 1.0)] < 0.8 < scores.corrupt[(1, 1.0)]  # magenta renders are "corrupted"
    assert {r["judge"] for r in scores.rows()} == {"character", "corruption"}


def test_without_models_the_judges_are_skipped_naming_the_keys():
    scores = C.judge(None, {"chara": [flat(RED)]}, _grid({(1, 1.0): RED}), ["chara"])
    assert "[judges] ccip_model" in scores.note and "[judges] corrupt_model" in scores.corrupt_note
    assert not scores.identity and not scores.corrupt and scores.rows() == []


def _eval(epoch: int) -> craft.EpochEval:
    return craft.EpochEval(epoch, 10.0, False, {}, {0.0: None, 1.0: None}, {}, None, False)  # type: ignore[dict-item]


def test_the_ranking_uses_ccip_and_leaves_out_corrupted_cells():
    evals = [_eval(1), _eval(2)]
    judges = {"character": {(1, 1.0): 0.6, (2, 1.0): 0.9}}
    assert R.rank(evals, judges, 0.01).rows[0]["epoch"] == 2
    ranked = R.rank(evals, judges, 0.01, corrupt={(1, 1.0): 0.95, (2, 1.0): 0.5}, corrupt_min=0.8)
    assert [(r["epoch"], r["character"]) for r in ranked.rows] == [(1, 0.6)]


def test_the_fbeta_pick_and_where_it_disagrees():
    # Nine epochs (cyberharem selects 3, wants 3 x 3 clearing the bar, else those clearing corrupt_min if 2 x 3 do):
    # epochs 8 and 9 have the best CCIP but are corrupted; F-beta (beta 3) weighs CCIP over controllability.
    ccip = {e: 0.1 * e for e in range(1, 10)}
    control = {e: 0.9 - 0.05 * e for e in range(1, 10)}
    aic = {e: 0.95 if e < 8 else 0.5 for e in range(1, 10)}
    fb = C.fbeta_pick(ccip, control, aic, 3.0)
    assert [r["passed"] for r in fb.rows] == [True] * 7 + [False] * 2
    c, p = np.array(list(ccip.values())), np.array(list(control.values()))
    c = np.clip((c - c.mean()) / c.std() * 0.2 + 0.6, 1e-6, 1)
    p = np.clip((p - p.mean()) / max(p.std(), 0.015) * 0.2 + 0.6, 1e-6, 1)
    f = 10 * c * p / (9 * p + c)
    assert [r["f"] for r in fb.rows] == pytest.approx(list(f))
    assert fb.epoch == 1 + int(np.argmax(f[:7]))
    few = C.fbeta_pick({1: 0.5, 2: 0.9}, {1: 0.5, 2: 0.5}, {1: 0.95, 2: 0.5}, 3.0)
    assert few.epoch == 2  # under 6 epochs, every epoch passes (cyberharem's fallback: the 6 best by corruption)
    ours = craft.Recommendation(9, 0.75, 1.0, ["ours"], [])
    said = C.with_fbeta(ours, fb, "ours", 3.0)
    assert said.epoch == 9 and said.reasons[-1].endswith("ours: epoch 9: the two picks disagree")
    followed = C.with_fbeta(ours, fb, "fbeta", 3.0)
    assert (followed.epoch, followed.weight_min) == (fb.epoch, 1.0) and "judges.pick = fbeta" in followed.reasons[-1]
    same = craft.Recommendation(fb.epoch, 1.0, 1.0, [], [])
    assert C.with_fbeta(same, fb, "ours", 3.0).reasons[-1].endswith("the two picks agree")
    assert C.fbeta_pick(ccip, {}, aic, 3.0).note.startswith("not made")  # no controllability: no pick, said why
