"""Short errors and lists, the run's log file, and LoHa/LoKr bakes evaluated like every other network.

Real `bakery run`s on the tiny model: one in a subprocess, so that what is checked is
everything the terminal shows (Prefect's console lines included).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bakery.cli import app
from bakery.report import markdown_summary, name_list, short_error, skip_summary
from storage import Catalog
from tests.conftest import write_recipe
from tests.images import gradient
from tests.test_bake_flow import TRAIN

ROOT = Path(__file__).parent.parent
runner = CliRunner()
# test_bake_flow's tiny bake (ends inside [train]) with concepts, a network type and a small evaluate.
BAKE = """
[[concepts]]
name = "chara"
trigger = "bakery_girl"
target_steps = 2  # AdamW doubles it (rules.md §8)
""" + TRAIN.format(epochs=1) + """network_type = "{network}"
conv_dim = 4
conv_alpha = 2

[evaluate]
weights = [0.0, 1.0]
seeds = [1]
steps = 1
width = 64
height = 64
"""


def make_project(folder: Path, network: str) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    for i, (w, h) in enumerate([(96, 96), (64, 128), (128, 64), (96, 96)]):
        gradient(w, h, seed=i).save(images / f"img{i}.png")
        (images / f"img{i}.txt").write_text("1girl, red_dress, smile\n", encoding="utf-8")
    return write_recipe(folder, BAKE.replace("{network}", network))


# -- the pure helpers ----------------------------------------------------------------------------

def test_name_list_gives_a_count_and_a_few_names():
    pics = [f"p{i}" for i in range(12)]
    assert name_list(pics, noun="picture") == "12 pictures: p0, p1, p2, p3, p4 and 7 more"
    assert name_list(pics[:5], noun="picture") == "5 pictures: p0, p1, p2, p3, p4"
    assert name_list(["a"], noun="picture") == "1 picture: a"
    assert name_list(pics, shown=2) == "p0, p1 and 10 more"
    assert name_list([], noun="file") == "0 files"


def test_short_error_is_one_line_within_the_limit():
    text = "ValueError: The following keys have not been correctly renamed: \n\n " + ", ".join(
        f"lora_te_layer_{i}.hada_w1_a" for i in range(1200))
    assert len(text) > 30_000
    line = short_error(text, 120)
    assert len(line) == 120 and "\n" not in line and line.endswith("…")
    assert line.startswith("ValueError: The following keys have not been correctly renamed: lora_te_layer_0.hada_w1_a")
    assert short_error("a\n  b") == "a b"  # short text: only the whitespace changes


def test_skip_lists_are_capped_and_say_where_the_rest_is():
    skips = [{"stage": "ingest", "subject": f"/img/{i}.png", "reason": "corrupt: " + "x" * 5000} for i in range(30)]
    lines = skip_summary(skips, limit=20, log="work/logs/run-1.log")
    assert len(lines) == 21 and all(len(line) <= 300 for line in lines)
    assert lines[-1] == "... and 10 more (all in work/logs/run-1.log)"
    many = [{"stage": "ingest", "subject": f"/img/{i}.png", "reason": f"corrupt file number {i}"} for i in range(50)]
    md = markdown_summary({"run_id": "r", "status": "completed", "recipe_path": "x"}, [], many, log="L.log", reasons=10)
    assert md.count("- **ingest** ×1") == 10 and "... and 40 more reasons (all in L.log)" in md


# -- real runs ------------------------------------------------------------------------------------

@pytest.mark.usefixtures("prefect_server")
def test_loha_and_lokr_bakes_are_evaluated(tmp_path: Path):
    """diffusers cannot load LoHa/LoKr files: evaluate applies them itself (bakery/craft/bake/networks/lycoris.py)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    recipe = make_project(tmp_path, "loha")
    work = tmp_path / "work"
    for network in ("loha", "lokr"):
        recipe.write_text(recipe.read_text().replace('network_type = "loha"', f'network_type = "{network}"'))
        result = runner.invoke(app, ["run", str(recipe)])
        assert result.exit_code == 0, result.output
        with Catalog.open(work, read_only=True) as cat:
            run = cat.last_run()
            stages = {s["stage"]: s for s in cat.stage_table(run["run_id"])}
            key = cat.rows("SELECT eval_key FROM evaluations WHERE run_id = ?", [run["run_id"]])[0]["eval_key"]
            ev = cat.evaluation(eval_key=key)
        assert run["status"] == "completed" and stages["bake"]["status"] == "ran"
        assert stages["evaluate"]["status"] == "ran", stages["evaluate"]
        assert Path(ev["report_path"]).is_file() and ev["cells"] == 4 + 2  # weights 0, 1 x 2 prompts x 1 seed + each prompt with the next seed at weight 0
        assert {m["weight"] for m in ev["metrics"]} == {0.0, 1.0}
        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run["flow_run_id"]])))
        assert {"evaluate-summary", "evaluate-metrics", "evaluate-report"} <= {a.key for a in arts}


@pytest.mark.usefixtures("prefect_server")
def test_a_huge_error_is_one_line_on_the_terminal_and_whole_in_the_run_log(tmp_path: Path):
    """A LoRA file diffusers cannot read (LyCORIS 'full' network) at evaluate: diffusers lists its 400 keys."""
    import torch
    from prefect.settings import PREFECT_API_URL
    from safetensors.torch import save_file

    recipe = make_project(tmp_path, "lora")
    assert runner.invoke(app, ["run", str(recipe), "--to", "bake"]).exit_code == 0
    lora = next((tmp_path / "work" / "bakes").glob("t-*/t-000001.safetensors"))
    keys = [f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_{i:04d}_attn1_to_q.diff" for i in range(400)]
    assert len(", ".join(keys)) > 30_000
    save_file({k: torch.zeros(1) for k in keys}, str(lora),
              metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "full"}'})

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run([sys.executable, "-c", "from bakery.cli import main; main()", "run", str(recipe)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert keys[-1] not in out and "Traceback" not in out
    assert max(len(line) for line in out.splitlines()) < 1000  # progress bars redraw within a line
    last = out.strip().splitlines()[-1]
    assert last.startswith("bakery: run failed: stage evaluate failed: ModelError: cannot load LoRA")
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        run = cat.last_run()
    log = tmp_path / "work" / "logs" / f"run-{run['run_id']}.log"
    assert len(last) < 500 and last.endswith(f"(details in {log})")
    text = log.read_text()
    assert all(k in text for k in keys) and "Traceback" in text  # the full error and where it came from
    assert run["status"] == "failed" and len(run["message"]) <= 300 and str(log) in run["message"]

    status = runner.invoke(app, ["status", str(recipe)])
    assert status.exit_code == 0 and re.search(r"evaluate +failed", status.output)
    assert max(len(line) for line in status.output.splitlines()) <= 350 and keys[-1] not in status.output


def test_missing_lora_files_are_counted_with_the_whole_list_in_the_run_log(tmp_path: Path):
    from bakery.manifest import BakeOutput
    from bakery.recipe import EvaluateParams
    from tasks.stage import RunInfo
    from tasks.taste.evaluate import EVALUATE, evaluate_bake

    files = {e: str(tmp_path / "bakes" / f"cake-{e:06d}.safetensors") for e in range(1, 13)}
    bake = BakeOutput(name="cake", base_model="tiny", architecture="sd15", files=files, bake_key="k", triggers=["x"])
    with pytest.raises(FileNotFoundError) as err:
        evaluate_bake(bake, EvaluateParams(), RunInfo("r1", str(tmp_path)), EVALUATE.code_version)
    log = tmp_path / "logs" / "run-r1.log"
    assert str(err.value) == (f"bake 'cake' lacks 12 LoRA files: {', '.join(list(files.values())[:5])} and 7 more "
                              f"(all in {log}): moved or deleted since the bake?")
    assert all(f in log.read_text() for f in files.values())
