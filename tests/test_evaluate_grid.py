"""The XYZ grid on the tiny model: kohya files loaded through diffusers, effect check, labelled grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bakery.craft.taste import evaluate as ev
from bakery.craft.taste import xyz
from tests.lora_files import write_kohya_lora

WORDS = ["bakery_girl, red_dress, smile, solo, blue_eyes"]


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    from bakery.testmodels.tiny_sd15 import build_tiny_sd15

    root = tmp_path_factory.mktemp("lora")
    model = build_tiny_sd15(root / "tiny", words=WORDS)
    files = {
        1: str(write_kohya_lora(model, root / "t-000001.safetensors", zero=True, epoch=1)),  # untrained
        2: str(write_kohya_lora(model, root / "t-000002.safetensors", seed=2, strength=0.4, epoch=2)),
        3: str(write_kohya_lora(model, root / "t-000003.safetensors", seed=3, strength=0.6, epoch=3)),
    }
    return model, files


def test_grid_effect_check_and_labels(loras):
    model, files = loras
    taster = xyz.Taster(str(model), "sd15", clip_skip=2, sampler="euler_a", device="cpu")
    prompts, seeds, weights = ["bakery_girl", "bakery_girl, red_dress, smile"], [1, 2], [0.0, 0.5, 1.0]
    cells = []
    run = xyz.render_grid(taster, files, weights, prompts, seeds, "lowres", steps=3, cfg=7.0, width=64, height=64,
                          on_cells=cells.append)
    assert len(run.images) == 3 * 3 * 2 * 2 and sum(cells) == len(run.images) == run.timings.cells
    assert all(img.shape == (64, 64, 3) and img.dtype == np.uint8 for img in run.images.values())
    assert run.timings.load_s > 0 and run.timings.render_s > 0 and taster.adapter is None

    evals = {}
    for epoch in files:
        cells_e = {k[1:]: v for k, v in run.images.items() if k[0] == epoch}
        evals[epoch] = ev.evaluate_epoch(epoch, cells_e, effect_min=1.0, fry_threshold=0.25, fry_max_weight=0.5)
    # The zero-initialised LoRA renders exactly the base images: flagged. The trained ones change them.
    assert evals[1].effect == 0.0 and evals[1].does_nothing
    assert evals[2].effect > 5 and not evals[2].does_nothing
    assert evals[3].effect > 5 and not evals[3].does_nothing
    # Weight 0 is the base model whatever the epoch (same seed, same prompt).
    assert np.array_equal(run.images[(2, 0.0, 0, 1)], run.images[(3, 0.0, 0, 1)])
    assert not np.array_equal(run.images[(2, 0.0, 0, 1)], run.images[(2, 0.0, 0, 2)])  # seeds differ

    grid = xyz.make_grid(run.images, [1, 2, 3], weights, 1, prompts[1], seeds)
    (left, top), (cw, ch) = grid.origin, grid.cell_size
    assert (cw, ch) == (128, 64)
    g = grid.gap
    assert g > 0 and grid.image.size == (left + 3 * cw + 2 * g, top + 3 * ch + 2 * g)
    texts = [t for t, _ in grid.labels]
    assert texts[0] == prompts[1] and "seeds 1, 2" in texts
    assert [t for t in texts if t.startswith("weight")] == ["weight 0", "weight 0.5", "weight 1"]
    assert [t for t in texts if t.startswith("epoch")] == ["epoch 1", "epoch 2", "epoch 3"]
    # Labels sit in the margins, images in their cells: row epoch 2, column weight 0.5, second seed.
    for t, (x0, y0, x1, y1) in grid.labels:
        assert x1 <= grid.image.size[0] and (y1 <= top or x1 <= left), t
    arr = np.asarray(grid.image)
    x, y = grid.cell_origin(1, 1)
    x += 64
    assert np.array_equal(arr[y : y + 64, x : x + 64], run.images[(2, 0.5, 1, 2)])


def test_missing_models_are_clear_errors(tmp_path):
    with pytest.raises(xyz.ModelError, match="does not exist: pass train.base_model"):
        xyz.Taster(str(tmp_path / "nope.safetensors"), "sd15", device="cpu")
    with pytest.raises(xyz.ModelError, match="unknown architecture"):
        xyz.load_pipeline(str(tmp_path), "sd3")
