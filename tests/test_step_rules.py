"""The guide's step rules and the composition report in real runs of the prune stage (rules.md §1, §3, §8, §10, §12).

One small set of captioned pictures from two source kinds; the recipe changes between runs in one work dir, so
the picture stages come back cached and the prune stage plans again with what the real stage parameters
(bakery/stage_params.py) hand it. Each rule is read back from the catalog, the report and `bakery status`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bakery.cli import app
from bakery.recipe import load_recipe
from storage import Catalog

pytestmark = pytest.mark.usefixtures("prefect_server")

# 6 fan art pictures (monochrome, retro), 4 low-res screencaps in colour: 60 % monochrome, 60 % retro.
FAN = "1girl, solo, red_hair, smile, monochrome, greyscale, retro_artstyle"
CAP = "1girl, solo, red_hair, smile, outdoors"


def _blocks(seed: int) -> Image.Image:
    """A picture of coarse random blocks: no two seeds are near duplicates."""
    cells = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(cells, "RGB").resize((48, 48), Image.NEAREST)


def _project(tmp_path: Path) -> None:
    for folder, n, caption in (("fan", 6, FAN), ("caps", 4, CAP)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            _blocks(len(folder) * 10 + i).save(tmp_path / folder / f"{folder}{i}.png")
            (tmp_path / folder / f"{folder}{i}.txt").write_text(caption, encoding="utf-8")


def _recipe(tmp_path: Path, train: str = "", repeats: str = "retro_cut = false\n", concept: str = "") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        '[project]\nname = "t"\nworkdir = "work"\n\n'
        '[[sources]]\nkind = "folder"\npath = "fan"\nsource_kind = "fanart_hires"\n\n'
        '[[sources]]\nkind = "folder"\npath = "caps"\nsource_kind = "screencap_lowres"\n\n'
        "[runtime]\nworkers = 2\n\n[upscale]\nmax_factor = 64.0\n\n[validation]\nenabled = false\n\n"
        f'[[concepts]]\nname = "CharaA"\ntrigger = "CharaA"\npaths = ["**"]\n{concept}\n'
        f"[repeats]\n{repeats}\n[train]\nmin_snr_gamma = 0\n{train}",
        encoding="utf-8")
    return path


def _prune(recipe: Path) -> tuple[str, set[int], list[str]]:
    """Run the recipe to the prune stage: (run id, the repeats of its folders, the prune stage's warnings)."""
    from flows.bake import bake_lora

    run_id = bake_lora(str(recipe), to_stage="prune")
    with Catalog.open(recipe.parent / "work", read_only=True) as cat:
        stages = {s["stage"]: s["status"] for s in cat.stage_table(run_id)}
        repeats = {r["repeats"] for r in cat.train_captions(run_id)}
        warnings = [w["message"] for w in cat.stage_warnings(run_id) if w["stage"] == "prune"]
    assert stages["prune"] in ("ran", "cached"), stages
    return run_id, repeats, warnings


def _composition(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "work" / "reports" / "composition.json").read_text(encoding="utf-8"))


def test_step_rules_apply_in_the_real_prune_stage(tmp_path: Path):
    _project(tmp_path)
    # Prodigy: 300 steps per epoch over 10 pictures.
    assert _prune(_recipe(tmp_path))[1] == {30}
    comp = _composition(tmp_path)
    (chara,) = comp["concepts"]
    # Source kinds in the guide's quality order, the shares, and what follows.
    assert list(chara["kinds"].items()) == [("fanart_hires", 6), ("screencap_lowres", 4)]
    assert (chara["monochrome"], chara["retro"]) == (6, 6) and chara["monochrome_share"] == 0.6
    assert comp["negatives"] == ["monochrome", "greyscale"]
    assert any("kept as they are (repeats.retro_cut = false)" in n for n in comp["notes"])
    # AdamW doubles the steps (§8), unless the recipe says not to.
    assert _prune(_recipe(tmp_path, 'optimizer = "adamw"\n'))[1] == {60}
    assert any(n.startswith("AdamW/CAME: steps x2") for n in _composition(tmp_path)["plan"])
    assert _prune(_recipe(tmp_path, 'optimizer = "adamw"\n', "retro_cut = false\nadamw_double = false\n"))[1] == {30}
    # IA3: half the steps (§12), through the prune stage's own parameters.
    assert _prune(_recipe(tmp_path, 'network_type = "ia3"\n'))[1] == {15}
    # A mostly retro set trains ~3x faster: its steps cut to 1/3, and said (§3).
    assert _prune(_recipe(tmp_path, repeats=""))[1] == {10}
    assert any("steps cut to 1/3" in n for n in _composition(tmp_path)["notes"])


def test_sdxl_by_architecture_is_the_sdxl_family(tmp_path: Path):
    _project(tmp_path)
    recipe = _recipe(tmp_path, 'architecture = "sdxl"\n')
    r = load_recipe(recipe)
    # 1024 px, UNet only with Prodigy, x1/2 steps: as `family = "sdxl"` (rules.md §8, §12).
    assert (r.buckets.resolution, r.evaluate.width, r.repeats.sdxl, r.train.train_text_encoder) == (1024, 1024, True, False)
    assert _prune(recipe)[1] == {15}
    assert any(n.startswith("SDXL: steps x1/2") for n in _composition(tmp_path)["plan"])


def test_batch_lr_style_and_lokr_numbers_are_said(tmp_path: Path):
    _project(tmp_path)
    recipe = _recipe(tmp_path, 'optimizer = "adamw"\nbatch_size = 4\n')
    run_id, _, warnings = _prune(recipe)
    assert load_recipe(recipe).train.effective_learning_rate == pytest.approx(1e-4 * 1.44)
    out = CliRunner().invoke(app, ["status", str(recipe)])
    assert out.exit_code == 0, out.output
    # `bakery status` shows the composition and the plan's notes.
    assert "composition CharaA: fanart_hires 6 (60%), screencap_lowres 4 (40%); monochrome 60%, retro 60%" in out.output
    assert "plan: batch size 4: lr x1.44" in out.output and "monochrome, greyscale" in out.output
    assert not [w for w in warnings if "style LoRA" in w or "lokr" in w]
    # A style LoRA under 150 pictures, at an lr outside 1e-5-5e-5 (§10): two warnings in the catalog.
    _, _, warnings = _prune(_recipe(tmp_path, 'optimizer = "adamw"\nlearning_rate = 1e-4\n',
                                    concept='prune = "style_all_tags_trigger"\n'))
    assert any("style LoRA CharaA: 10 pictures" in w for w in warnings)
    assert any("style LoRA CharaA: learning rate 0.0001 is outside" in w for w in warnings)
    # LoKr: 5e-5 by default with AdamW; outside 5e-5-8e-5 is said (§12).
    lokr = _recipe(tmp_path, 'optimizer = "adamw"\nnetwork_type = "lokr"\n')
    assert load_recipe(lokr).train.effective_learning_rate == 5e-5
    assert not [w for w in _prune(lokr)[2] if "lokr" in w]
    _, _, warnings = _prune(_recipe(tmp_path, 'optimizer = "adamw"\nnetwork_type = "lokr"\nlearning_rate = 1e-4\n'))
    assert any(w.startswith("lokr: learning rate 0.0001 is outside") for w in warnings)
