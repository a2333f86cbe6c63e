"""The bake stage in real Prefect runs: cached, loss in the catalog, resumed after a kill.

The prune stage (which hands bake its TrainSet) is built elsewhere: here a small
flow gathers the images with the real stages and gives each a plain caption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow

from bakery.craft.bake.networks import kohya_lora as K
from bakery.manifest import BakeOutput, TrainImage, TrainSet
from bakery.recipe import load_recipe
from storage import Catalog
from tests.conftest import write_recipe
from tests.images import gradient

pytestmark = pytest.mark.usefixtures("prefect_server")
ROOT = Path(__file__).parent.parent
TRAIN = """
[buckets]
resolution = 96
min_side = 64
max_side = 128
step = 32

[train]
base_model = "tiny"
optimizer = "adamw"
learning_rate = 0.001
epochs = {epochs}
batch_size = 2
network_dim = 4
network_alpha = 2
"""


@flow(name="gather-then-bake")
def gather_then_bake(recipe_path: str, style_no_tags: bool = False) -> tuple[str, BakeOutput]:
    from flows.bake import BUILT, gather, run_bake
    from tasks.stage import begin_run, end_run

    recipe = load_recipe(recipe_path)
    run = begin_run(recipe.workdir, recipe_path, recipe.digest(), recipe.model_dump_json(), 1)
    images = gather(recipe_path, run, list(BUILT), [])
    caption = "" if style_no_tags else "bakery_girl, red_dress"
    trainset = TrainSet([TrainImage("chara", ref.name, ref.hash, caption, 2) for ref in images],
                        ["bakery_girl"], unet_only=style_no_tags)
    output = run_bake(recipe, run, trainset)
    end_run(run, "completed")
    return run.run_id, output


def make_project(folder: Path, epochs: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    for i, (w, h) in enumerate([(96, 96), (64, 128), (128, 64), (96, 96)]):
        gradient(w, h, seed=i).save(images / f"img{i}.png")
    return write_recipe(folder, TRAIN.format(epochs=epochs))


def bake_stage(workdir: Path, run_id: str) -> dict:
    with Catalog.open(workdir, read_only=True) as cat:
        return {s["stage"]: s for s in cat.stage_table(run_id)}["bake"]


def test_bake_stage_runs_logs_loss_and_is_cached(tmp_path):
    recipe = make_project(tmp_path, epochs=2)
    run_id, out = gather_then_bake(str(recipe))
    work = tmp_path / "work"
    assert bake_stage(work, run_id)["status"] == "ran"
    assert out.name == "t" and out.architecture == "sd15" and out.triggers == ["bakery_girl"] and out.clip_skip == 2
    assert sorted(out.files) == [1, 2]
    assert [Path(p).name for p in out.files.values()] == ["t-000001.safetensors", "t-000002.safetensors"]
    assert (Path(out.base_model) / "model_index.json").exists()  # evaluate loads the same base
    _, meta = K.read_kohya(out.files[2])
    assert meta["ss_output_name"] == "t" and meta["modelspec.trigger_phrase"] == "bakery_girl"
    with Catalog.open(work, read_only=True) as cat:
        log = cat.bake_log(out.bake_key)
    assert [r["step"] for r in log] == list(range(1, 9)) and {r["epoch"] for r in log} == {1, 2}
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in log)

    # The dashboard shows the bake's progress (steps, epoch, loss, it/s, ETA) and its loss per epoch.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # the session's server holds other tests' bakes too: the newest
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bake-progress", "bake-loss"])),
                                     sort=ArtifactSort.CREATED_DESC)
    by_type = {a.type: a for a in reversed(arts)}
    assert by_type["progress"].data == 100.0 and "loss" in by_type["progress"].description
    assert "it/s" in by_type["progress"].description and "ETA" in by_type["progress"].description
    assert by_type["table"].key == "bake-loss"

    run2, out2 = gather_then_bake(str(recipe))
    assert bake_stage(work, run2)["status"] == "cached" and out2 == out


def test_a_style_with_no_tags_trains_the_unet_alone(tmp_path):
    """rules.md §10 mode 1 in the real bake: the LoRA has no text-encoder weights (as export-kohya's
    network_train_unet_only says), though train.train_text_encoder is on."""
    recipe = make_project(tmp_path, epochs=1)
    assert load_recipe(recipe).train.train_text_encoder
    _, out = gather_then_bake(str(recipe), style_no_tags=True)
    tensors, _ = K.read_kohya(out.files[1])
    assert tensors and not [k for k in tensors if k.startswith("lora_te")]
    assert any(k.startswith("lora_unet") for k in tensors)


def child_env() -> dict[str, str]:
    """The environment of a child Python: this repository, this process's torch threads, this Prefect server."""
    import torch
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads()),
            "PREFECT_API_URL": PREFECT_API_URL.value()}


def run_child(code: str) -> None:
    """Run `code` in a fresh child Python (as kill_at_first_state does), failing with its output if it fails."""
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def kill_at_first_state(code: str, work: Path) -> None:
    """Run `code` in a child Python (this Prefect server) and SIGKILL it once a training state is saved in `work`."""
    child = subprocess.Popen([sys.executable, "-c", code], env=child_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while not list((work / "bakes").glob("*/state/state.pt")):
            assert child.poll() is None, "the training finished or failed before it could be killed"
            assert time.monotonic() < deadline, "no training state after 240 s"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def test_killed_bake_resumes_when_the_flow_is_rerun(tmp_path):
    recipe = make_project(tmp_path / "a", epochs=4)
    work = tmp_path / "a" / "work"
    # mid-training: epoch 1 saved, epoch 2 running
    kill_at_first_state(f"from tests.test_bake_flow import gather_then_bake; gather_then_bake({str(recipe)!r})", work)
    killed_at = time.time()
    assert not (list((work / "bakes").glob("*/t-000004.safetensors")))

    run_id, out = gather_then_bake(str(recipe))
    assert bake_stage(work, run_id)["status"] == "ran"
    with Catalog.open(work, read_only=True) as cat:
        log = cat.bake_log(out.bake_key)
        messages = cat.rows("SELECT created_at FROM bake_log WHERE bake_key = ? AND epoch = 1", [out.bake_key])
    assert [r["step"] for r in log] == list(range(1, 17))
    assert all(m["created_at"].timestamp() < killed_at for m in messages)  # epoch 1 was not trained again

    # The same project baked without interruption gives the same weights.
    ref_recipe = make_project(tmp_path / "b", epochs=4)
    _, ref = gather_then_bake(str(ref_recipe))
    assert ref.bake_key == out.bake_key
    a, _ = K.read_kohya(out.files[4])
    b, _ = K.read_kohya(ref.files[4])
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-3
    assert json.loads(K.read_kohya(out.files[4])[1]["ss_steps"]) == 16
    # ... and the same file, byte for byte (seeded on the CPU; the header is written in sorted order).
    assert Path(out.files[4]).read_bytes() == Path(ref.files[4]).read_bytes()
