"""The evaluate stage in a real Prefect run on the tiny model: catalog rows, grids, report, artifacts, cache.

The report is opened in headless Chromium (Debian's package) and must show its images.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bakery.manifest import BakeOutput, TrainImage, TrainSet
from bakery.recipe import EvaluateParams
from storage import Catalog, ContentStore
from tests.lora_files import write_kohya_lora

pytestmark = pytest.mark.usefixtures("prefect_server")

TRIGGER = "bakery_girl"
WORDS = ["bakery_girl, red_dress, smile, solo, blue_eyes, lowres"]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64
    img = np.stack([0.8 * x, 0.2 + 0.3 * y, 0.5 + 0.0 * x], axis=2) + rng.normal(0, 0.02, (64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_clip(folder: Path) -> Path:
    """A random-weight CLIP vision tower + processor in transformers format (the likeness model's layout)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> tuple[BakeOutput, TrainSet, Path, Path]:
    from bakery.testmodels.tiny_sd15 import build_tiny_sd15

    root = tmp_path_factory.mktemp("evaluate")
    model = build_tiny_sd15(root / "tiny", words=WORDS)
    out = root / "work" / "bake"
    files = {
        1: write_kohya_lora(model, out / "cake-000001.safetensors", zero=True, epoch=1),
        2: write_kohya_lora(model, out / "cake-000002.safetensors", seed=2, strength=0.4, epoch=2),
        3: write_kohya_lora(model, out / "cake-000003.safetensors", seed=3, strength=0.5, epoch=3,
                            metadata={"ss_num_epochs": "3"}),
    }
    bake = BakeOutput(name="cake", base_model=str(model), architecture="sd15",
                      files={e: str(p) for e, p in files.items()}, bake_key="bake-abc", triggers=[TRIGGER], clip_skip=2)
    work = root / "work"
    store = ContentStore(work / "store")
    images = [TrainImage("bakery_girl", f"img{i}", store.put_bytes(_png(i)).sha256,
                         f"{TRIGGER}, red_dress, smile" + (", solo" if i % 2 else ""), 10) for i in range(4)]
    train = TrainSet(images=images, triggers=[TRIGGER])
    # Loss per step: falls until epoch 2, rises at epoch 3.
    with Catalog.open(work) as cat:
        step = 0
        for epoch, mean in ((1, 0.20), (2, 0.15), (3, 0.17)):
            rows = []
            for k in range(6):
                step += 1
                rows.append({"bake_key": "bake-abc", "step": step, "epoch": epoch, "loss": mean + 0.002 * (k % 3 - 1), "lr": 1.0})
            cat.add_bake_log(rows)
    return bake, train, work, _tiny_clip(root / "clip")


def _run(bake: BakeOutput, train: TrainSet | None, params: EvaluateParams, work: Path, run_id: str):
    """The flow's wiring after bake: `taste(recipe, run, bake payload, train set)` inside a real flow run."""
    from prefect import flow
    from prefect.context import get_run_context

    from bakery.recipe import parse_recipe
    from flows.bake import taste
    from tasks.stage import RunInfo

    recipe = parse_recipe({"evaluate": params.model_dump(mode="json")}, work)

    @flow(name="evaluate-test")
    def f():
        result = taste(recipe, RunInfo(run_id, str(work)), bake, train)
        return result, get_run_context().flow_run.id

    return f()


def test_evaluate_in_a_prefect_run(baked, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    bake, train, work, clip = baked
    params = EvaluateParams(weights=[0.0, 0.5, 1.0], seeds=[7], steps=2, width=64, height=64, tags_per_prompt=2,
                            likeness_model=str(clip), device="cpu")
    result, flow_run_id = _run(bake, train, params, work, "run1")
    report = Path(result.payload)
    assert report.is_file() and report.name == "report.html"

    with Catalog.open(work, read_only=True) as cat:
        ev = cat.evaluation(bake_key="bake-abc")
        assert cat.rows("SELECT status FROM stage_runs WHERE run_id = 'run1'") == [{"status": "ran"}]
        warned = cat.stage_warnings("run1")
    # Loss falls to epoch 2 then rises; epoch 2 changes the image and does not fry: recommended.
    assert ev["recommended_epoch"] == 2 and ev["loss_shape"] == "falling_then_rising"
    assert ev["recommended_file"] == bake.files[2]
    assert 0 < ev["weight_min"] <= ev["weight_max"] <= 1.0
    assert any("loss rule" in r for r in ev["reasons"])
    epochs = {e["epoch"]: e for e in ev["epochs"]}
    assert epochs[1]["does_nothing"] and epochs[1]["effect"] == 0.0
    assert not epochs[2]["does_nothing"] and not epochs[3]["does_nothing"]
    assert any(f.startswith("epoch 1: LoRA does nothing") and "empty or missing captions" in f for f in ev["flags"])
    assert warned == [{"stage": "evaluate", "message": f} for f in ev["flags"]]  # the guide's alarms, with the run
    assert epochs[2]["loss_mean"] == pytest.approx(0.15)
    # Likeness with the configured embedding model, for every epoch x weight.
    assert ev["likeness_method"] == "embedding:clip_vision_model"
    assert len(ev["metrics"]) == 9 and all(m["likeness"] is not None for m in ev["metrics"])
    # epochs x weights x prompts (trigger, trigger + 2 tags) x seeds, + each prompt at weight 0 with the next seed
    assert ev["cells"] == 3 * 3 * 2 * 1 + 2

    # Grids: one per prompt, rows epochs x columns weights.
    grids = sorted(report.parent.glob("grid-*.png"))
    assert len(grids) == 2
    html = report.read_text()
    for needle in ("Epoch 2", "LoRA does nothing", "bakery_girl, red_dress, smile", "ss_network_dim", "Loss per epoch"[:4],
                   "Tags of", "Buckets", "embedding:clip_vision_model"):
        assert needle in html, needle
    assert "http://" not in html and "https://" not in html and html.count("data:image/png;base64,") == 2 + 2

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    by_key = {a.key: a for a in arts}
    assert {"evaluate-summary", "evaluate-metrics", "evaluate-report"} <= set(by_key)
    assert "Recommended: epoch 2" in by_key["evaluate-summary"].data
    assert len(json.loads(by_key["evaluate-metrics"].data)) == 9

    # Unchanged bake and parameters: the stage comes back from the cache.
    again, _ = _run(bake, train, params, work, "run2")
    assert again.payload == result.payload
    with Catalog.open(work, read_only=True) as cat:
        assert cat.rows("SELECT status FROM stage_runs WHERE run_id = 'run2'") == [{"status": "cached"}]
    # A cached result whose report was deleted is tasted again.
    shutil.rmtree(report.parent)
    third, _ = _run(bake, train, params, work, "run3")
    assert Path(third.payload).is_file()
    with Catalog.open(work, read_only=True) as cat:
        assert cat.rows("SELECT status FROM stage_runs WHERE run_id = 'run3'") == [{"status": "ran"}]

    _screenshot_shows_images(report, tmp_path)


def test_evaluate_without_training_set_uses_metadata_and_says_likeness_not_measured(baked):
    from tasks.stage import RunInfo
    from tasks.taste.evaluate import EVALUATE, evaluate_bake

    bake, _, work, _ = baked
    only_zero = BakeOutput(**{**bake.__dict__, "files": {1: bake.files[1]}, "bake_key": "nothing-logged"})
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[1], steps=1, width=64, height=64, tags_per_prompt=1, device="cpu")
    res = evaluate_bake(only_zero, params, RunInfo("r", str(work)), EVALUATE.code_version)
    assert res.recommendation.epoch is None and "LoRA does nothing" in res.recommendation.flags[0]
    html = res.report_path.read_text()
    assert "No epoch to recommend" in html and "not measured: no training images" in html
    assert "No loss log for this bake" in html
    # Prompts from the file's ss_tag_frequency: the trigger alone, then with its most frequent kept tag.
    assert "bakery_girl, solo" in html
    with Catalog.open(work, read_only=True) as cat:
        ev = cat.evaluation(eval_key=res.eval_key)
    assert ev["recommended_epoch"] is None and ev["likeness_method"] is None and ev["loss_shape"] == "none"


def _screenshot_shows_images(report: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the report test needs Chromium (Debian: apt-get install chromium; `make browser` does it)")
    shot = tmp_path / "shot.png"
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--hide-scrollbars", "--window-size=1280,2400",
        f"--screenshot={shot}", report.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32) / 255
    assert img.shape[:2] == (2400, 1280)
    mx, mn = img.max(axis=2), img.min(axis=2)
    non_white = (mn < 0.9).mean()
    colourful = ((mx - mn) > 0.25).mean()  # text and tables are grey: colour comes from the grids and plots
    assert non_white > 0.05, non_white
    assert colourful > 0.01, colourful


def test_tasting_is_one_craft_call_with_no_prefect_and_no_catalog(baked):
    """bakery/craft/taste/tasting.py taste: the loss log and training images handed in, a recommendation out."""
    from bakery.craft.taste import tasting

    bake, train, _, _ = baked
    # At one step this random LoRA's change is a small share of the change between seeds: the ratio rule
    # (tests/test_judges.py) would call it "does nothing"; here the absolute rule alone is under test.
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[1], steps=1, width=64, height=64, tags_per_prompt=1, device="cpu",
                            effect_min_ratio=0.0)
    files = {e: str(p) for e, p in bake.files.items()}
    last = tasting.read_metadata(files[3])
    # Loss means 0.30, 0.20, 0.25: the loss rule picks epoch 2, the last of steadily falling loss.
    log = [{"step": e, "epoch": e, "loss": loss} for e, loss in ((1, 0.30), (2, 0.20), (3, 0.25))]
    refs = {TRIGGER: [np.asarray(Image.open(io.BytesIO(_png(i))).convert("RGB")) for i in range(2)]}
    prompts = tasting.evaluation_prompts(bake, train, params, last)
    inputs = tasting.TasteInputs(bake, files, [1, 2, 3], prompts, last, train, refs, log)
    cells = []
    t = tasting.taste(inputs, params, on_cells=cells.append)
    assert prompts[0] == TRIGGER and sum(cells) == 3 * 2 * len(prompts)
    assert t.evals[0].does_nothing and not t.evals[1].does_nothing  # epoch 1's file is all zeros
    assert t.recommendation.epoch == 2 and t.recommended_file == files[2]
    assert t.recommendation.reasons[0].startswith("loss rule")
    assert t.report.likeness_method == "histogram" and len(t.grids) == len(prompts)
    assert all(png.startswith(b"\x89PNG") for _, png in t.grids)


def test_a_mostly_monochrome_set_renders_with_monochrome_negatives(baked):
    """The composition report's negatives (rules.md §3: over ~50 % monochrome) reach the evaluation renders."""
    from dataclasses import replace

    from tasks.stage import RunInfo
    from tasks.taste.evaluate import EVALUATE, evaluate_bake

    bake, train, work, _ = baked
    one = BakeOutput(**{**bake.__dict__, "files": {2: bake.files[2]}})
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[1], steps=1, width=64, height=64, tags_per_prompt=1, device="cpu")
    plain = evaluate_bake(one, params, RunInfo("r", str(work)), EVALUATE.code_version, train)
    grey = evaluate_bake(one, params, RunInfo("r", str(work)), EVALUATE.code_version,
                         replace(train, eval_negatives=["monochrome", "greyscale"]))
    assert "lowres, bad anatomy, worst quality, monochrome, greyscale" in grey.report_path.read_text()
    assert "monochrome" not in plain.report_path.read_text() and grey.eval_key != plain.eval_key
