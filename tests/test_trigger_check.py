"""Trigger check (rules.md §10, §13): the decision on real tagger runs, and the stage in real Prefect runs.

The tiny SD1.5 renders about the same picture for every prompt, so the flow tests
use a tiny model whose weights make the trigger's tokens pull its renders to a
constant tint (its embedding rows and the UNet's cross-attention values scaled),
and a tiny WD14 tagger with a tag that fires on that tint (blue minus red above
13.5 of 255). The trigger's renders carry the tag on every seed; the nonsense
controls' renders never do: the verdict is "contaminated" by design.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bakery.craft.caption import wd14
from bakery.craft.taste import trigger_check as craft
from storage import Catalog
from tests.conftest import write_recipe
from tests.wd14_model import write_tiny_wd14

TRIGGER = "bakery_girl"
TINT = ("odd_tint", 0, (1.0, 0.0, -1.0), -13.5)  # weights on the mean B, G, R: fires when B - R > 13.5


def _tags(tagger: wd14.WD14Tagger, colours: list[tuple[int, int, int]]) -> list[list[str]]:
    probs = tagger.predict([Image.new("RGB", (32, 32), c) for c in colours])
    return [[p.tag for p in wd14.select(row, tagger.tags, wd14.Thresholds())] for row in probs]


def test_drawn_tags_from_real_tagger_runs(tmp_path: Path):
    tagger = wd14.WD14Tagger(write_tiny_wd14(tmp_path / "m"))
    red = (255, 0, 0)
    controls = _tags(tagger, [(0, 0, 255), (20, 20, 20), (128, 128, 128), (0, 0, 250), (30, 30, 30), (120, 120, 120)])
    consistent = _tags(tagger, [red, red, (250, 10, 10), (30, 30, 30)])  # red on 3 of 4 seeds
    varied = _tags(tagger, [red, (0, 0, 255), (20, 20, 20), (128, 128, 128)])
    assert craft.drawn_tags(consistent, controls, 0.75) == ["red_theme"]
    assert craft.drawn_tags(varied, controls, 0.75) == []
    # simple_background fires on every picture, controls included: not the trigger's doing.
    assert craft.tag_shares(consistent)["simple_background"] == 1.0
    tags = {"red_one": consistent, "varied": varied, **{f"c{i}": controls[2 * i:2 * i + 2] for i in range(3)}}
    v = craft.judge(["red_one", "varied"], tags, None, ["c0", "c1", "c2"], 0.75, 0.1)
    assert [x.verdict for x in v] == ["contaminated", "free"]
    assert v[0].note.startswith("red_one: contaminated: the base model draws red_theme for it; concatenate")
    assert "Color_Item" in v[0].note and v[1].note == "varied: free"


def test_embedding_consistency_and_controls():
    rng = np.random.default_rng(0)
    same = np.ones((4, 8)) + rng.normal(0, 0.01, (4, 8))  # four near-identical renders
    assert craft.mean_pairwise_cosine(same) > 0.99
    spread = {c: rng.normal(0, 1, (4, 8)) for c in ("c0", "c1")}
    v = craft.judge(["t", "u"], None, {"t": same, "u": rng.normal(0, 1, (4, 8)), **spread}, ["c0", "c1"], 0.75, 0.1)
    assert [x.verdict for x in v] == ["contaminated", "free"]
    assert "a consistent picture (similarity 1.00" in v[0].note
    assert craft.control_words(3, 0) == craft.control_words(3, 0) != craft.control_words(3, 1)
    assert len(set(craft.control_words(5, 7))) == 5


# -- the stage in real runs -------------------------------------------------------------------------

def _contaminated_model(folder: Path, work: Path) -> Path:
    """The tiny SD1.5 with the trigger's tokens pulling every render to one tint (see the module docstring)."""
    import torch

    from bakery.craft.bake.bases.load import load_base

    if (folder / "model_index.json").exists():
        return folder
    pipe = load_base("tiny", work, words=[TRIGGER]).pipe
    with torch.no_grad():
        emb = pipe.text_encoder.get_input_embeddings()
        for token in pipe.tokenizer(TRIGGER, add_special_tokens=False).input_ids:
            emb.weight[token] *= 40
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2.to_v"):
                module.weight *= 20
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


CHECK = """
[[concepts]]
name = "chara"
trigger = "bakery_girl"

[train]
base_model = "{model}"

[trigger_check]
steps = 8
size = 64
{extra}

[evaluate]
device = "cpu"  # the tint margins are measured on the CPU's float32 renders
{evaluate}
"""


def _recipe(tmp_path: Path, extra: str = "", tagger: bool = True, evaluate: str = "") -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for i, colour in enumerate([(200, 60, 60), (60, 200, 60)]):
        Image.new("RGB", (48, 48), colour).save(images / f"a{i}.png")
        (images / f"a{i}.txt").write_text("1girl, smile", encoding="utf-8")
    model = _contaminated_model(tmp_path.parent / "tc-model", tmp_path / "build")
    text = CHECK.format(model=model, extra=extra, evaluate=evaluate)
    if tagger:
        write_tiny_wd14(tmp_path / "tagger", extra_tags=[TINT])
        text += '\n[autotag]\nmodel = "tagger"\n'
    return write_recipe(tmp_path, text)


def _run(recipe: Path, **kw) -> str:
    from flows.bake import bake_lora

    return bake_lora(str(recipe), to_stage="trigger_check", **kw)


def _stage(work: Path, run_id: str) -> dict:
    with Catalog.open(work / "catalog.duckdb", read_only=True) as cat:
        return {s["stage"]: s for s in cat.stage_table(run_id)}["trigger_check"]


@pytest.mark.usefixtures("prefect_server")
def test_contaminated_trigger_is_a_warning_recorded_and_cached(tmp_path: Path):
    recipe = _recipe(tmp_path)
    work = tmp_path / "work"
    first = _run(recipe)
    assert _stage(work, first)["status"] == "ran"
    with Catalog.open(work / "catalog.duckdb", read_only=True) as cat:
        rows = cat.rows("SELECT * FROM trigger_checks WHERE run_id = ? ORDER BY is_control, trigger", [first])
        warnings = cat.stage_warnings(first)
    assert [(r["trigger"], r["verdict"]) for r in rows[:1]] == [(TRIGGER, "contaminated")]
    assert rows[0]["drawn_tags"] == '["odd_tint"]'
    assert [r["trigger"] for r in rows[1:]] == sorted(craft.control_words(3, 0))  # the controls, no verdict
    assert all(r["is_control"] and r["verdict"] is None and "odd_tint" not in r["tag_shares"] for r in rows[1:])
    assert len(warnings) == 1 and warnings[0]["message"].startswith(
        "bakery_girl: contaminated: the base model draws odd_tint for it; concatenate")
    again = _run(recipe)
    assert _stage(work, again)["status"] == "cached"
    with Catalog.open(work / "catalog.duckdb", read_only=True) as cat:
        assert len(cat.stage_warnings(again)) == 1  # the cached result still warns


@pytest.mark.usefixtures("prefect_server")
def test_error_on_contaminated_fails_the_run_with_one_line(tmp_path: Path):
    from tasks.stage import StageFailed

    recipe = _recipe(tmp_path, "error_on_contaminated = true")
    with pytest.raises(StageFailed, match="contaminated trigger"):
        _run(recipe)
    with Catalog.open(tmp_path / "work" / "catalog.duckdb", read_only=True) as cat:
        run = cat.rows("SELECT status, message FROM runs")[0]
    assert run["status"] == "failed" and "\n" not in run["message"]
    assert "contaminated trigger(s) bakery_girl: the base model draws odd_tint" in run["message"]


@pytest.mark.usefixtures("prefect_server")
def test_skipped_with_a_note_without_a_judge(tmp_path: Path):
    recipe = _recipe(tmp_path, tagger=False)
    run_id = _run(recipe)
    stage = _stage(tmp_path / "work", run_id)
    assert stage["status"] == "skipped"
    assert stage["message"].startswith("no judge: set [autotag] model")


@pytest.mark.usefixtures("prefect_server")
def test_embedding_alone_judges_and_records_similarities(tmp_path: Path):
    from tests.test_evaluate import _tiny_clip

    clip = _tiny_clip(tmp_path / "clip")
    recipe = _recipe(tmp_path, tagger=False, evaluate=f'likeness_model = "{clip}"')
    run_id = _run(recipe)
    assert _stage(tmp_path / "work", run_id)["status"] == "ran"
    with Catalog.open(tmp_path / "work" / "catalog.duckdb", read_only=True) as cat:
        rows = cat.rows("SELECT * FROM trigger_checks WHERE run_id = ? ORDER BY is_control, trigger", [run_id])
    assert rows[0]["trigger"] == TRIGGER and rows[0]["verdict"] in ("free", "contaminated")
    assert -1 <= rows[0]["similarity"] <= 1 and -1 <= rows[0]["control_similarity"] <= 1
    assert rows[0]["drawn_tags"] == "[]" and all(r["tag_shares"] is None for r in rows[1:])  # no tagger
    log = (tmp_path / "work" / "logs" / f"run-{run_id}.log").read_text()
    assert "trigger_check: bakery_girl: " in log


def test_evaluation_report_section_reads_the_latest_verdicts(tmp_path: Path):
    import time

    from bakery.craft.taste.evaluate import LossChoice, Recommendation
    from bakery.craft.taste.reports import evaluation as eval_report

    row = {"is_control": False, "tag_shares": "{}", "similarity": None, "control_similarity": None}
    with Catalog.open(tmp_path / "catalog.duckdb") as cat:
        cat.add_trigger_checks("old", "r1", [{**row, "trigger": TRIGGER, "verdict": "free", "drawn_tags": "[]"}])
        time.sleep(0.01)
        cat.add_trigger_checks("new", "r2", [
            {**row, "trigger": TRIGGER, "verdict": "contaminated", "drawn_tags": '["odd_tint"]', "similarity": 0.91,
             "control_similarity": 0.4},
            {**row, "trigger": "qocivoqi", "is_control": True, "verdict": None, "drawn_tags": None}])
        latest = cat.latest_trigger_checks([TRIGGER, "never_checked"])
    assert [(r["trigger"], r["verdict"]) for r in latest] == [(TRIGGER, "contaminated")]
    data = eval_report.ReportData(
        name="cake", base_model="tiny", architecture="sd15", triggers=[TRIGGER],
        recommendation=Recommendation(None, None, None, [], []), evals=[], loss_means={},
        loss_choice=LossChoice(None, "none", ""), grids=[], likeness_method=None, likeness_note="", trigger_check=latest)
    html = eval_report.render_html(data)
    assert "<h2>Trigger check</h2>" in html and "odd_tint" in html and ">contaminated<" in html and "0.91" in html
    assert "Trigger check" not in eval_report.render_html(eval_report.ReportData(**{**data.__dict__, "trigger_check": []}))


def test_ccip_one_character_on_the_base_model(tmp_path: Path):
    """The trigger check's CCIP judge on deepghs-format files (tests/deepghs_models.py: same colour, same character):
    a trigger whose renders are all one colour draws one character; varied renders, and the controls, do not."""
    from bakery.craft import deepghs
    from tests.deepghs_models import write_ccip

    model = deepghs.CCIP(write_ccip(tmp_path / "ccip"), "judges.ccip_model")
    renders = {"one": [(200, 30, 30), (210, 40, 30), (190, 35, 40), (205, 30, 35)],
               "varied": [(200, 30, 30), (30, 30, 200), (30, 200, 30), (128, 128, 128)],
               "c0": [(30, 30, 200), (200, 30, 30), (30, 200, 30), (220, 20, 220)],
               "c1": [(128, 128, 128), (30, 200, 30), (200, 200, 30), (30, 30, 200)]}
    share = {p: craft.same_pair_share(model.differences(model.features(
        [np.full((16, 16, 3), c, np.uint8) for c in cs])), model.threshold) for p, cs in renders.items()}
    assert share["one"] == 1.0 and share["varied"] < 0.5 and share["c0"] == 0.0
    v = craft.judge(["one", "varied"], None, None, ["c0", "c1"], 0.75, 0.1, share)
    assert [x.verdict for x in v] == ["contaminated", "free"]
    assert "one character by CCIP (100% of its render pairs the same character vs the controls' 0%)" in v[0].note
    assert "CCIP same pairs (controls)" in craft.markdown(v, ["c0", "c1"], [0, 1, 2, 3], ["CCIP"])
