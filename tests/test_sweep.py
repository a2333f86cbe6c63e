"""Sweeps: [[variants]] validated by the recipe model, the ranking across variants, and real sweeps in Prefect:
one after another in one run (a failing variant leaves the other judged), and on a work pool with two process
workers, one killed mid-bake (tests/test_sweep_pool.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bakery.craft.sweep import Liveness, VariantOutcome, WorkerWait, cells_from_scores, rank_variants, sweep_html
from bakery.recipe import RecipeError, parse_recipe
from storage import Catalog
from tests.conftest import write_recipe
from tests.test_bake_flow import TRAIN
from tests.wd14_model import write_tiny_wd14

# Two outfits of one character, coloured so the tiny tagger's tags are known (red_theme, blue_theme).
PROJECT = """
[dedupe]
near = false

[validation]
enabled = false

[[concepts]]
name = "chara"
trigger = "chara"
target_steps = 2  # AdamW doubles the targets (rules.md §8)
  [[concepts.outfits]]
  name = "red"
  trigger = "chara_red"
  paths = ["red/**"]
  target_steps = 5
  [[concepts.outfits]]
  name = "blue"
  trigger = "chara_blue"
  paths = ["blue/**"]
  target_steps = 5

[autotag]
model = "{tagger}"

[trigger_check]
enabled = false

[evaluate]
weights = [0.0, 1.0]
seeds = [1]
steps = 1
width = 64
height = 64
effect_min = 0.0
effect_min_ratio = 0.0  # the tiny model's LoRA barely changes a picture: judge it anyway
"""


def make_sweep_project(folder: Path, variants: str, epochs: int = 2, extra: str = "") -> Path:
    for group, rgb in (("red", (200, 40, 50)), ("blue", (40, 70, 190))):
        (folder / "images" / group).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (64, 64), tuple(min(255, c + 9 * i) for c in rgb)).save(folder / "images" / group / f"{group}{i}.png")
    tagger = write_tiny_wd14(folder / "wd14")
    return write_recipe(folder, PROJECT.format(tagger=tagger) + TRAIN.format(epochs=epochs) + extra + variants)


# -- the recipe ---------------------------------------------------------------------------------------------

def test_variants_override_train_and_are_checked_by_the_recipe_model(tmp_path):
    recipe = parse_recipe({"project": {"name": "p"}, "train": {"base_model": "tiny", "network_dim": 8},
                           "variants": [{"name": "dim4", "network_dim": 4},
                                        {"name": "adamw", "optimizer": "adamw", "output_name": "mine"}]}, tmp_path)
    dim4, adamw = recipe.for_variant("dim4"), recipe.for_variant("adamw")
    assert (dim4.train.network_dim, dim4.train.base_model, dim4.train.output_name) == (4, "tiny", "p-dim4")
    assert (adamw.train.network_dim, adamw.train.optimizer, adamw.train.output_name) == (8, "adamw", "mine")
    assert dim4.variants == [] and dim4.workdir == recipe.workdir and recipe.train.network_dim == 8

    def problems(variants, train=None):
        with pytest.raises(RecipeError) as err:
            parse_recipe({"train": train or {}, "variants": variants}, tmp_path)
        return err.value.problems

    assert problems([{"name": "a", "network_dim": -4}]) == ["variants[0]: train.network_dim: must be > 0, got -4"]
    assert problems([{"name": "a", "netwrk_dim": 4}]) == ["variants[0]: train.netwrk_dim: unknown key"]
    assert problems([{"name": "a", "family": "pony"}]) == [
        "variants[0]: train.family cannot vary between variants: it sets other sections too; sweep one family per recipe"]
    assert problems([{"name": "a/b"}]) == ["variants[0].name: must contain only letters, digits, '_', '-', '.', got 'a/b'"]
    assert problems([{"name": "a"}, {"name": "a"}]) == ["(recipe): variant names must be unique, repeated: a"]
    # A clash with the recipe's own [train] only shows once merged.
    assert problems([{"name": "big", "network_dim": 64}], {"network_type": "loha"}) == [
        "(recipe): variant big: train: network_dim must be <= 32 for loha (rules.md §12), got 64"]
    slider = {"target": "skirt", "positive": ["long_skirt"], "negative": ["miniskirt"]}
    with pytest.raises(RecipeError, match="a \\[slider\\] recipe bakes none"):
        parse_recipe({"slider": slider, "variants": [{"name": "a"}]}, tmp_path)
    with pytest.raises(ValueError, match="no variant 'x' in the recipe: set \\[\\[variants\\]\\] name"):
        recipe.for_variant("x")


# -- the craft ----------------------------------------------------------------------------------------------

def test_liveness_counts_from_the_last_change_of_the_heartbeat():
    live = Liveness(lost_after_s=10)
    assert not live.lost(None, 0.0) and not live.lost(None, 9.0)
    assert live.lost(None, 10.5)  # nothing ever written: lost too
    live.restart(20.0)
    assert not live.lost("1 1", 21.0) and not live.lost("1 1", 30.0) and not live.lost("1 2", 31.0)
    assert not live.lost("1 2", 41.0) and live.lost("1 2", 41.5)


def test_waiting_variants_give_up_only_when_none_runs_for_the_whole_wait():
    wait = WorkerWait(give_up_after_s=10)
    assert not wait.stuck(waiting=2, running=0, now=0.0) and not wait.stuck(2, 0, 10.0)
    assert not wait.stuck(1, 1, 30.0)  # one bakes, the other waits its turn: the clock starts again
    assert not wait.stuck(1, 0, 31.0) and not wait.stuck(1, 0, 41.0) and wait.stuck(1, 0, 41.5)
    assert not wait.stuck(0, 0, 100.0)  # nothing waits
    assert not WorkerWait(0).stuck(3, 0, 0.0) and not WorkerWait(0).stuck(3, 0, 10**9)  # 0: as long as it takes


def test_publish_goes_through_fsspec_to_a_store_that_is_no_folder(tmp_path):
    """fsspec's in-memory store stands where s3:// would: nothing here may assume a local path."""
    import fsspec

    from tasks.sweep import publish

    report, lora, own = tmp_path / "report.html", tmp_path / "t-a-000001.safetensors", tmp_path / "a.html"
    for path, text in ((report, "sweep"), (lora, "lora bytes"), (own, "variant report")):
        path.write_text(text)
    done = VariantOutcome("a", {}, status="completed", files=[str(lora)], report_path=str(own))
    failed = VariantOutcome("b", {}, status="failed", files=[str(lora)])
    sent = publish("memory://loras", "proj", "s1", report, [done, failed])
    assert sent == ["/loras/proj/s1/report.html", "/loras/proj/s1/a/t-a-000001.safetensors", "/loras/proj/s1/a/a.html"]
    fs = fsspec.filesystem("memory")
    assert fs.cat("/loras/proj/s1/a/t-a-000001.safetensors") == b"lora bytes"
    assert not fs.exists("/loras/proj/s1/b")  # only completed variants are published
    fs.rm("/loras", recursive=True)


def _scores(rank: dict, identity: dict) -> list[dict]:
    rows = [{"epoch": e, "weight": w, "judge": "rank_score", "subject": "", "score": s} for (e, w), s in rank.items()]
    rows += [{"epoch": e, "weight": w, "judge": "identity", "subject": subj, "score": s}
             for (e, w, subj), s in identity.items()]
    return rows + [{"epoch": 1, "weight": 1.0, "judge": "effect_ratio", "subject": "", "score": 3.0}]


def test_ranking_across_variants_names_the_best_and_what_it_beat():
    a = cells_from_scores(_scores({(1, 1.0): 0.4, (2, 1.0): 0.7}, {(2, 1.0, "x"): 0.6, (2, 1.0, "y"): 0.8}))
    assert {"epoch": 2, "weight": 1.0, "score": 0.7, "identity": pytest.approx(0.7), "character": None,
            "flexibility": None, "bleed": None} in a
    b = cells_from_scores(_scores({(3, 0.5): 0.5}, {}))
    r = rank_variants({"a": a, "b": b, "c": []}, tolerance=0.05)
    assert [(x["variant"], x["epoch"], x["weight"]) for x in r.rows] == [("a", 2, 1.0), ("b", 3, 0.5), ("a", 1, 1.0)]
    assert r.tied == [("a", 2, 1.0)]
    assert r.reasons[0] == "variant a, epoch 2 at weight 1 scores best (0.70: identity 0.70)"
    assert r.reasons[1] == "the best of variant b (epoch 3, weight 0.5) scores 0.50 ()"
    assert r.reasons[2].startswith("c: no usable (epoch, weight)")
    close = rank_variants({"a": a, "b": b}, tolerance=0.25)
    assert close.reasons[1] == "the data cannot decide between variants a, b: their best cells lie within 0.25"
    assert rank_variants({"c": []}, 0.05).rows == []
    page = sweep_html("t", [VariantOutcome("a", {"network_dim": 4}, "completed", 2, ["attempt 1: lost", "attempt 2: ok"])], r)
    assert "attempt 1: lost<br>attempt 2: ok" in page and "<td>a</td><td>2</td><td>1</td><td>0.70</td>" in page


def test_each_variant_run_follows_the_sweep_runs_plan():
    from bakery.stages import plan_run
    from flows.bake import BUILT
    from flows.sweep import variant_plan

    assert variant_plan(plan_run(BUILT)) == {"from_stage": None, "to_stage": None}
    assert variant_plan(plan_run(BUILT, from_stage="prune")) == {"from_stage": "bake", "to_stage": None}
    assert variant_plan(plan_run(BUILT, only_stage="evaluate")) == {"from_stage": "evaluate", "to_stage": None}
    assert variant_plan(plan_run(BUILT, only_stage="bake")) == {"from_stage": "bake", "to_stage": "bake"}
    assert variant_plan(plan_run(BUILT, to_stage="bake")) == {"from_stage": None, "to_stage": "bake"}


# -- one machine: the variants one after another in one run --------------------------------------------------

TWO_VARIANTS = """
[[variants]]
name = "dim4"

[[variants]]
name = "dim2"
network_dim = 2
network_alpha = 1
"""
VARIANTS = TWO_VARIANTS + """
[[variants]]
name = "broken"
base_model = "no-such-model-folder"
"""


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("prefect_server")
def test_a_sweep_here_bakes_each_variant_judges_them_and_survives_a_failing_one(tmp_path, capsys):
    from bakery.cli import _print_run
    from bakery.recipe import load_recipe
    from flows.bake import bake_lora

    published = tmp_path / "published"
    recipe = make_sweep_project(tmp_path, VARIANTS, extra=f'[sweep]\npublish_url = "file://{published}"\n')
    state = bake_lora(str(recipe), return_state=True)
    assert state.is_completed(), state.message
    run_id = state.result()
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        rows = {r["variant"]: r for r in cat.sweep_variants(run_id)}
        stages = {s["stage"]: s["status"] for s in cat.stage_table(run_id)}
        runs = {r["variant_run_id"]: {s["stage"]: s["status"] for s in cat.stage_table(r["variant_run_id"])}
                for r in rows.values()}
    assert stages["prune"] == "ran" and "bake" not in stages  # the sweep's run prepares; its variants bake
    assert rows["dim4"]["status"] == rows["dim2"]["status"] == "completed"
    assert rows["broken"]["status"] == "failed" and "no-such-model-folder" in rows["broken"]["message"]
    for name in ("dim4", "dim2"):
        ran = runs[rows[name]["variant_run_id"]]
        assert ran["prune"] == ran["autotag"] == "cached" and ran["bake"] == ran["evaluate"] == "ran", ran
        assert rows[name]["eval_key"] and Path(rows[name]["report_path"]).is_file()
    assert rows["dim2"]["bake_key"] != rows["dim4"]["bake_key"]
    files = sorted(p.name for p in (tmp_path / "work" / "bakes").glob("*/*.safetensors"))
    assert files == ["t-dim2-000001.safetensors", "t-dim2-000002.safetensors",
                     "t-dim4-000001.safetensors", "t-dim4-000002.safetensors"]
    report = next((tmp_path / "work" / "sweeps").glob(f"{run_id}-*/report.html")).read_text()
    assert "Ranking across variants" in report and "<td>broken</td>" in report and "scores best" in report
    assert "<td>dim4</td><td>" in report and "<td>dim2</td><td>" in report
    # ... and copied through fsspec (a local folder here; s3:// etc. with their fsspec package).
    sent = sorted(str(p.relative_to(published)) for p in published.rglob("*") if p.is_file())
    sweep_id = next((tmp_path / "work" / "sweeps").glob(f"{run_id}-*")).name
    assert sent == sorted([f"t/{sweep_id}/report.html", *(f"t/{sweep_id}/{v}/t-{v}-00000{e}.safetensors"
                                                           for v in ("dim2", "dim4") for e in (1, 2)),
                           f"t/{sweep_id}/dim2/report.html", f"t/{sweep_id}/dim4/report.html"])
    assert (published / "t" / sweep_id / "dim4" / "t-dim4-000002.safetensors").read_bytes() == next(
        (tmp_path / "work" / "bakes").glob("t-dim4-*/t-dim4-000002.safetensors")).read_bytes()
    _print_run(load_recipe(recipe), run_id)  # what `bakery run` prints after the stage table
    out = capsys.readouterr().out
    assert "sweep (3 variants):" in out and "  broken: failed (1 flow run(s)); Flow run encountered" in out
    assert f"sweep report: {tmp_path / 'work' / 'sweeps'}" in out


def test_the_catalog_waits_while_another_process_holds_it(tmp_path):
    """The flow runs of a sweep on two workers share one catalog: an opening waits for the other's to close."""
    import subprocess
    import sys
    import time

    with Catalog.open(tmp_path):
        pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(1.5)\n"
        "con.close()"), str(tmp_path / "catalog.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with Catalog.open(tmp_path) as cat:
            cat.add_sweep_variants("r", [VariantOutcome("v", {"network_dim": 4}, "completed", 1, ["ok"]).row()])
        assert time.monotonic() - started > 0.5  # it waited for the holder, then wrote
    finally:
        holder.wait(timeout=30)
    with Catalog.open(tmp_path, read_only=True) as cat:
        assert cat.sweep_variants("r")[0]["overrides"] == {"network_dim": 4}

