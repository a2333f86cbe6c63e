"""`bakery doctor` and the check before `bakery run`: the VRAM estimate and what fits, the disk, a full disk in one
line, and the throughput warning of a bake that spills out of VRAM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bakery.craft.bake.bases.checkpoint import FIRST_CONV
from bakery.craft.bake.throughput import Throughput
from bakery.doctor import (
    SIZES,
    Machine,
    count_sizes,
    disk_full_line,
    fitting,
    preflight,
    vram_estimate,
    vram_line,
)
from bakery.recipe.bake import TrainParams
from bakery.recipe.model import load_recipe

ROOT = Path(__file__).resolve().parent.parent
GB = 1024**3


def _bakery(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakery.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _project(tmp_path: Path, picture_bytes: int = 1000) -> Path:
    """A recipe with a (sparse) picture of `picture_bytes` and an SD1.5-layout base file (one tensor)."""
    (tmp_path / "images").mkdir()
    with open(tmp_path / "images" / "a.png", "wb") as f:
        f.truncate(picture_bytes)
    save_file({FIRST_CONV: torch.zeros(320, 4, 3, 3)}, tmp_path / "base.safetensors")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[project]\nname = "p"\n[[sources]]\nkind = "folder"\npath = "images"\n'
                      '[train]\nbase_model = "base.safetensors"\n', encoding="utf-8")
    return recipe


def test_the_base_sizes_are_the_published_ones_and_the_table_is_what_the_configs_count():
    for (arch, conv), sizes in SIZES.items():
        assert count_sizes(arch, conv) == sizes, (arch, conv)
    base, te, unet_r1, te_r1 = SIZES[("sd15", False)]
    assert abs(base - (859_520_964 + 83_653_863)) < 1e6  # SD1.5 UNet + VAE
    assert abs(te - 123_060_480) < 1e6  # CLIP ViT-L/14 text model
    assert 30e6 < 32 * (unet_r1 + te_r1) * 2 < 45e6  # a dim-32 SD1.5 LoRA file in fp16: ~37 MB, as kohya's are
    sdxl = SIZES[("sdxl", False)]
    assert abs(sdxl[0] - (2_567_463_684 + 83_653_863)) < 1e6


def test_the_estimate_moves_with_the_settings():
    def gb(arch="sd15", res=512, **kw):
        return vram_estimate(TrainParams(**kw), res, arch).total / GB

    assert gb(gradient_checkpointing=True) < gb(gradient_checkpointing=False)
    assert gb(batch_size=4) > gb(batch_size=1) and gb(network_dim=128) > gb(network_dim=8)
    assert gb(optimizer="adamw8bit") < gb(optimizer="adamw") < gb(optimizer="prodigy")
    assert gb(cache_latents=False) > gb(cache_latents=True)
    assert gb(train_text_encoder=False) < gb(train_text_encoder=True)
    assert gb(network_type="locon", conv_dim=32) > gb(network_type="locon", conv_dim=4) > gb(network_type="lora")
    assert gb("sdxl", 1024) > gb() and gb(res=768) > gb()
    assert 3 < gb(gradient_checkpointing=True, optimizer="adamw") < 8  # SD1.5 LoRAs bake on 6-8 GB cards
    assert 8 < gb("sdxl", 1024, gradient_checkpointing=True, train_text_encoder=False) < 14  # and SDXL on 12 GB


def test_what_fits_a_smaller_card():
    big = TrainParams(network_dim=64, batch_size=4, gradient_checkpointing=False, optimizer="adamw")
    change, fitted = fitting(big, 512, "sd15", 6 * GB)
    assert change == 'profile = "sd15_8gb"' and vram_estimate(fitted, 512, "sd15").total <= 6 * GB
    change, fitted = fitting(big, 1024, "sdxl", 12 * GB)
    assert "gradient_checkpointing = true" in change and vram_estimate(fitted, 1024, "sdxl").total <= 12 * GB
    assert fitting(big, 1024, "sdxl", 4 * GB) is None  # the base alone does not fit


def test_a_bake_that_does_not_fit_the_gpu_is_one_line_with_what_fits(tmp_path):
    recipe = load_recipe(_project(tmp_path))  # SD1.5 at 512, batch 1, dim 32, Prodigy, text encoder trained
    small = Machine("2.14.1", "12.8", "570.1", "GeForce GTX 1660", int(6 * GB), int(3.5 * GB), False)
    fits, line = vram_line(recipe, small)
    assert not fits and "\n" not in line
    assert "does NOT fit GeForce GTX 1660 (3.5 GB free)" in line and "shared memory" in line
    assert "fits with gradient_checkpointing = true, train_text_encoder = false" in line
    big = Machine("2.14.1", "12.8", "570.1", "RTX 4090", int(24 * GB), int(23 * GB), True)
    assert vram_line(recipe, big)[0]


def test_doctor_reports_the_machine_the_disk_the_models_and_the_bake(tmp_path):
    done = _bakery("doctor", str(_project(tmp_path)))
    out = done.stdout
    assert out.startswith(f"torch {torch.__version__}")
    assert "GPU: none visible" in out or "GPU: " in out
    assert "disk under" in out and "free; this run writes about" in out
    assert "model train.base_model: present" in out and str(tmp_path / "base.safetensors") in out
    assert "bake: sd15 at 512 px, batch 1, lora dim 32, prodigy: peak VRAM about" in out
    assert done.returncode == 0, done.stderr


def test_run_stops_in_one_line_when_the_disk_is_too_small(tmp_path):
    recipe = _project(tmp_path, picture_bytes=8 * 1024**4)  # 8 TB (sparse): three copies will not fit
    assert preflight(load_recipe(recipe))
    done = _bakery("run", str(recipe))
    assert done.returncode == 1 and done.stdout == ""
    line = done.stderr.strip()
    assert "\n" not in line and "free; this run writes about" in line and "--go-on" in line


def test_a_full_disk_is_one_line_with_what_is_free_and_what_is_needed(tmp_path):
    recipe = load_recipe(_project(tmp_path))
    with pytest.raises(OSError) as full:
        with open("/dev/full", "wb") as f:  # a real ENOSPC
            f.write(b"x" * 4096)
            f.flush()
    line = disk_full_line(recipe, f"stage convert failed: OSError: {full.value}", Path("recipe.toml"))
    assert line.startswith("stage convert stopped: the disk under") and "free; it needs about 2.9 KB" in line
    assert disk_full_line(recipe, "stage convert failed: ValueError: bad", Path("recipe.toml")) is None


def test_a_bake_that_slows_far_below_its_first_steps_is_warned_once():
    clock, meter, warnings = 0.0, Throughput(), []
    for i in range(40):
        clock += 0.1 if i < 20 else 2.0  # the spill: 20x slower
        if i == 12:
            clock += 30  # an epoch's save: one long gap is not a slowdown
        warnings.append(meter.tick(clock))
    said = [w for w in warnings if w]
    assert len(said) == 1 and "slowed from 10.00 to" in said[0] and "shared memory" in said[0]
    assert warnings.index(said[0]) > 20
