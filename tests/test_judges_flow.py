"""The judges end to end: the flow's evaluate wiring in a real Prefect run on the tiny model, with the recipe's
tagger and prune's record in a real catalog; every score lands in the catalog, the report and an artifact.
Without a tagger the tag judges are skipped with a note."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from bakery.manifest import BakeOutput, TrainImage, TrainSet
from bakery.recipe import EvaluateParams, parse_recipe
from storage import Catalog, ContentStore
from tests.lora_files import write_kohya_lora
from tests.test_judges import JUDGE_TAGS
from tests.wd14_model import write_tiny_wd14

pytestmark = pytest.mark.usefixtures("prefect_server")

TRIGGERS = ["chara", "chara_red", "chara_blue"]
CAPTIONS = {"red": "chara, chara_red, smile", "blue": "chara, chara_blue, smile"}
ABSORBED = {"red": ["blonde_hair", "red_dress", "1girl"], "blue": ["blonde_hair", "blue_shirt", "1girl"]}


def _png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from bakery.testmodels.tiny_sd15 import build_tiny_sd15

    root = tmp_path_factory.mktemp("judges")
    model = build_tiny_sd15(root / "tiny", words=[", ".join(TRIGGERS + ["smile", "outdoors", "night"])])
    work = root / "work"
    files = {e: str(write_kohya_lora(model, work / "bake" / f"c-{e:06d}.safetensors", seed=e, strength=0.4, epoch=e))
             for e in (1, 2)}
    bake = BakeOutput("c", str(model), "sd15", files, "bake-j", TRIGGERS, 2)
    store = ContentStore(work / "store")
    images = [TrainImage(g, f"{g}{i}", store.put_bytes(_png((200, 60 * i, 40) if g == "red" else (40, 60 * i, 200))).sha256,
                         CAPTIONS[g], 5)
              for g in CAPTIONS for i in range(2)]
    train = TrainSet(images, TRIGGERS)
    with Catalog.open(work) as cat:  # what the prune stage of an earlier run recorded
        cat.start_run("prune-run", "recipe.toml", "h", "{}", None)
        cat.add_train_captions("prune-run", [{"folder": t.folder, "name": t.name, "image_hash": t.image_hash,
                                              "caption": t.caption, "repeats": 5, "mask_hash": "", "is_reg": False}
                                             for t in images])
        stats = []
        for g, tags in ABSORBED.items():
            stats += [{"concept": g, "phase": "before_prune", "tag": t, "count": 2} for t in tags + ["smile"]]
            stats += [{"concept": g, "phase": "after_prune", "tag": t, "count": 2} for t in ["smile", *CAPTIONS[g].split(", ")[:2]]]
        cat.add_tag_stats("prune-run", stats)
    return bake, train, work, write_tiny_wd14(root / "wd14", extra_tags=JUDGE_TAGS)


def _taste(recipe, bake, train, work, run_id):
    from prefect import flow
    from prefect.context import get_run_context

    from flows.bake import taste
    from tasks.stage import RunInfo

    @flow(name="judges-test")
    def f():
        return taste(recipe, RunInfo(run_id, str(work)), bake, train), get_run_context().flow_run.id

    return f()


def test_judges_in_a_prefect_run(setup):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    bake, train, work, tagger = setup
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[3], steps=1, width=64, height=64, device="cpu",
                            prompts=["chara", "chara, chara_red", "chara, chara_blue"])
    recipe = parse_recipe({"evaluate": params.model_dump(mode="json"), "autotag": {"model": str(tagger)}}, work)
    result, flow_run_id = _taste(recipe, bake, train, work, "judge-run")
    html = Path(result.payload).read_text()
    for title in ("Effect relative to seed variation", "Identity", "Concept bleed", "Flexibility", "Ranking"):
        assert f"<h2>{title}</h2>" in html, title
    assert "SKIPPED: no tagger" not in html and "blonde_hair" in html and "chara, sitting, outdoors" in html
    with Catalog.open(work, read_only=True) as cat:
        ev = cat.evaluation(bake_key="bake-j")
        scores = cat.evaluation_scores(ev["eval_key"])
    by = {}
    for r in scores:
        by.setdefault((r["judge"], r["subject"]), set()).add((r["epoch"], r["weight"]))
    cells = {(e, w) for e in (1, 2) for w in (0.0, 1.0)}
    # Identity per trigger (its own group's absorbed tags; 1girl is a people count, never identity).
    assert by[("identity", "chara_red")] == cells and by[("identity", "chara_blue")] == cells
    # The concept trigger has no group of its own here: the tags every outfit group absorbed (blonde_hair).
    assert by[("identity", "chara")] == cells and "<code>chara</code>: <code>blonde_hair</code>" in html
    assert by[("bleed", "chara_red")] == cells and by[("bleed", "chara_blue")] == cells
    assert by[("flexibility", "chara, sitting, outdoors")] == cells  # the first default prompt
    assert by[("effect_ratio", "")] == {(1, 1.0), (2, 1.0)}
    # one seed: each of the 3 prompts once more at weight 0; flexibility: 2 epochs x 2 weights x 1 prompt x 1 seed
    assert ev["cells"] == 2 * 2 * 3 + 3 + 4
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    table = json.loads(next(a for a in arts if a.key == "evaluate-scores").data)
    assert len(table) == len(scores)


def test_without_a_tagger_the_tag_judges_are_skipped(setup):
    from tasks.stage import RunInfo
    from tasks.taste.evaluate import EVALUATE, evaluate_bake

    bake, train, work, _ = setup
    one = BakeOutput(**{**bake.__dict__, "files": {2: bake.files[2]}})
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[3], steps=1, width=64, height=64, device="cpu",
                            prompts=["chara, chara_red"])
    res = evaluate_bake(one, params, RunInfo("nt", str(work)), EVALUATE.code_version, train)
    html = res.report_path.read_text()
    assert html.count("SKIPPED: no tagger") == 4  # Identity, Concept bleed, Flexibility, Ranking
    assert "<h2>Effect relative to seed variation</h2>" in html  # needs no tagger
    assert {r["judge"] for r in res.scores} == {"effect_ratio"}


def test_character_judges_in_a_prefect_run(setup, tmp_path):
    """[judges] CCIP and corruption models (deepghs formats, tests/deepghs_models.py) beside the tag judges: their
    sections, their catalog rows per trigger and cell, the ranking's `character` column, the F-beta pick."""
    from tests.deepghs_models import write_all

    bake, train, work, tagger = setup
    models = write_all(tmp_path / "deepghs")
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[3], steps=1, width=64, height=64, device="cpu",
                            prompts=["chara, chara_red", "chara, chara_blue"])
    recipe = parse_recipe({"evaluate": params.model_dump(mode="json"), "autotag": {"model": str(tagger)},
                           "judges": {"ccip_model": str(models["ccip"]), "corrupt_model": str(models["corrupt"])}},
                          work)
    result, _ = _taste(recipe, bake, train, work, "character-run")
    html = Path(result.payload).read_text()
    for title in ("Character (CCIP)", "Corruption", "F-beta pick (cyberharem)", "Ranking"):
        assert f"<h2>{title}</h2>" in html, title
    assert not any(f"SKIPPED: no {m}" in html for m in ("tagger", "CCIP", "corruption"))
    assert "<code>ccip</code>, threshold 0.1785" in html and "self-similarity <code>chara</code>" in html
    # The tiny LoRA does nothing here (no usable cell): the ranking says so, the F-beta pick still reads the epochs.
    assert "no usable (epoch, weight) has a judge" in html
    with Catalog.open(work, read_only=True) as cat:
        ev = cat.evaluation(bake_key="bake-j")
        scores = cat.evaluation_scores(ev["eval_key"])
    cells = {(e, w) for e in (1, 2) for w in (0.0, 1.0)}
    by = {}
    for r in scores:
        by.setdefault((r["judge"], r["subject"]), set()).add((r["epoch"], r["weight"]))
    for trig in TRIGGERS:  # every trigger has training pictures and prompts naming it
        assert by[("character", trig)] == cells, trig
    assert by[("corruption", "")] == cells
    # One CCIP feature per picture and per render, cached by content hash: 4 training pictures, 8 renders of which
    # the weight-0 ones are the base model's, alike across epochs (2 x 2 x 2 - 2).
    cache = work / "cache" / "ccip-features"
    assert len(list(cache.rglob("*.npy"))) == len({t.image_hash for t in train.images}) + 6


def test_without_judges_models_the_character_judges_are_skipped(setup):
    from tasks.stage import RunInfo
    from tasks.taste.evaluate import EVALUATE, evaluate_bake

    bake, train, work, _ = setup
    one = BakeOutput(**{**bake.__dict__, "files": {2: bake.files[2]}})
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[3], steps=1, width=64, height=64, device="cpu",
                            prompts=["chara, chara_red"])
    html = evaluate_bake(one, params, RunInfo("nc", str(work)), EVALUATE.code_version, train).report_path.read_text()
    assert "SKIPPED: no CCIP model: set [judges] ccip_model" in html
    assert "SKIPPED: no corruption model: set [judges] corrupt_model" in html
