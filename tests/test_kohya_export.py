"""kohya export (layout, pixels, both TOML files parsed back and checked as sd-scripts checks them) and tag
statistics, without Prefect."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import voluptuous
from PIL import Image

from bakery.craft.bake import kohya_dataset as kohya
from bakery.craft.caption import tagstats
from bakery.kohya_export import train_values
from bakery.manifest import TrainImage
from bakery.recipe.bake import TrainParams
from storage import ContentStore
from tests import sd_scripts_schema


def _settings(unet_only: bool = False, sdxl: bool = False, **train) -> kohya.TrainSettings:
    """Export settings over [train] as the recipe model makes it (defaults, then `train`)."""
    t = TrainParams.model_validate({"base_model": "/models/sd15.safetensors", "batch_size": 2, **train})
    values = train_values(t)
    return kohya.TrainSettings(name="mylora", sdxl=sdxl, resolution=512, min_bucket_reso=256, max_bucket_reso=1024,
                               bucket_reso_steps=64, train=values, triggers=("CharaA", "Outfit1"), unet_only=unet_only)


def test_export_layout_masks_reg_and_configs(tmp_path: Path):
    store = ContentStore(tmp_path / "store")
    img = store.put_bytes(_noise_png(tmp_path / "a.png", (64, 48))).sha256
    mask = store.put_bytes(_gradient_mask(tmp_path / "m.png", (64, 48))).sha256
    images = [
        TrainImage("CharaA", "a", img, "CharaA, smile", 3, mask_hash=mask),
        TrainImage("Outfit1", "b", img, "CharaA, Outfit1 ||| sitting", 6),  # no mask: opaque alpha
        TrainImage("CharaA", "r", img, "smile", 1, is_reg=True),
        TrainImage("Style", "s", img, "", 2),  # style mode "no tags": no caption file
    ]
    out = tmp_path / "out"
    files = kohya.export(out, images, store.path, _settings(unet_only=True), {"CharaA": 1, "Outfit1": 2},
                         keep_tokens_separator=True)
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == [
        "dataset_config.toml", "img/2_Style/s.png", "img/3_CharaA/a.png", "img/3_CharaA/a.txt",
        "img/6_Outfit1/b.png", "img/6_Outfit1/b.txt", "reg/1_CharaA/r.png", "reg/1_CharaA/r.txt",
        "train_network.toml",
    ]
    _assert_rgb_and_alpha(out / "img/3_CharaA/a.png", store.path(img), store.path(mask))
    for opaque in ("img/6_Outfit1/b.png", "reg/1_CharaA/r.png", "img/2_Style/s.png"):
        _assert_rgb_and_alpha(out / opaque, store.path(img), None)
    ds = tomllib.loads(files["dataset_config"].read_text())
    assert ds["general"] == {"enable_bucket": True, "caption_extension": ".txt"}
    d = ds["datasets"][0]
    assert (d["resolution"], d["batch_size"], d["min_bucket_reso"], d["max_bucket_reso"], d["bucket_reso_steps"]) == (
        512, 2, 256, 1024, 64)
    subs = {Path(s["image_dir"]).relative_to(out).as_posix(): s for s in d["subsets"]}
    assert set(subs) == {"img/2_Style", "img/3_CharaA", "img/6_Outfit1", "reg/1_CharaA"}
    assert subs["reg/1_CharaA"]["is_reg"] is True and subs["reg/1_CharaA"]["num_repeats"] == 1
    assert subs["img/6_Outfit1"]["keep_tokens_separator"] == "|||" and subs["img/6_Outfit1"]["shuffle_caption"]
    assert all(s["alpha_mask"] is True and "conditioning_data_dir" not in s for s in subs.values())
    cfg = tomllib.loads(files["train_config"].read_text())
    flat = {k: v for section in cfg.values() for k, v in section.items()}  # what sd-scripts does with sections
    assert flat["pretrained_model_name_or_path"] == "/models/sd15.safetensors"
    assert flat["network_module"] == "networks.lora" and flat["network_dim"] == 32 and flat["network_alpha"] == 16.0
    assert flat["optimizer_type"] == "Prodigy" and flat["learning_rate"] == 1.0 and flat["lr_scheduler"] == "cosine"
    assert "decouple=True" in flat["optimizer_args"]
    assert flat["max_train_epochs"] == 8 and flat["clip_skip"] == 2 and flat["min_snr_gamma"] == 5.0
    assert flat["masked_loss"] is True and flat["network_train_unet_only"] is True and flat["prior_loss_weight"] == 1.0
    assert flat["save_model_as"] == "safetensors" and flat["output_name"] == "mylora"


# -- sd-scripts' own dataset check ----------------------------------------------------------------
# Every export variant, with masks on train and regularisation images built here directly
# (the pipeline makes no regularisation images yet).
VARIANTS = ["plain", "masks", "reg", "masks_reg", "style_no_tags", "keep_tokens_separator"]


def _variant(tmp_path: Path, variant: str) -> tuple[Path, ContentStore, list[TrainImage]]:
    store = ContentStore(tmp_path / "store")
    img = store.put_bytes(_noise_png(tmp_path / "a.png", (40, 56))).sha256
    mask = store.put_bytes(_gradient_mask(tmp_path / "m.png", (40, 56))).sha256
    masked = "masks" in variant
    images = [
        TrainImage("CharaA", "a", img, "CharaA, smile", 3, mask_hash=mask if masked else ""),
        TrainImage("Outfit1", "b", img, "CharaA, Outfit1, sitting", 6),
    ]
    if "reg" in variant:
        images += [TrainImage("CharaA", "r1", img, "1girl, smile", 1, mask_hash=mask if masked else "", is_reg=True),
                   TrainImage("CharaA", "r2", img, "1girl", 1, is_reg=True)]
    settings, sep = _settings(), False
    if variant == "style_no_tags":
        images, settings = [TrainImage("Style", "s", img, "", 2)], _settings(unet_only=True)
    if variant == "keep_tokens_separator":
        images = [TrainImage("CharaA", "a", img, "CharaA ||| smile, sitting", 3)]
        sep = True
    out = tmp_path / "out"
    kohya.export(out, images, store.path, settings, {"CharaA": 1, "Outfit1": 2}, keep_tokens_separator=sep)
    return out, store, images


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_export_passes_sd_scripts_dataset_check(tmp_path: Path, variant: str):
    out, store, images = _variant(tmp_path, variant)
    masked = any(t.mask_hash for t in images)
    flat = {k: v for section in tomllib.loads((out / "train_network.toml").read_text()).values()
            for k, v in section.items()}
    assert flat["masked_loss"] is masked  # train_network.py's support_controlnet
    for support_controlnet in (True, False):
        checked = sd_scripts_schema.check_train_network(out / "dataset_config.toml", support_controlnet)
        (dataset,) = checked["datasets"]
        # DreamBooth subsets: the only kind that honours is_reg and alpha_mask.
        assert sd_scripts_schema.subset_kind(dataset) == "dreambooth"
        assert len(dataset["subsets"]) == len({(t.kohya_dir, t.is_reg) for t in images})
        assert all(s.get("alpha_mask", False) is masked for s in dataset["subsets"])
        assert {s["is_reg"] for s in dataset["subsets"]} == {t.is_reg for t in images}
    if masked:  # each PNG carries its mask (or full opacity) as alpha over the untouched RGB
        for t in images:
            png = out / ("reg" if t.is_reg else "img") / t.kohya_dir / f"{t.name}.png"
            _assert_rgb_and_alpha(png, store.path(t.image_hash), store.path(t.mask_hash) if t.mask_hash else None)
    else:  # unmasked exports copy the stored image byte for byte
        for t in images:
            png = out / ("reg" if t.is_reg else "img") / t.kohya_dir / f"{t.name}.png"
            assert png.read_bytes() == store.path(t.image_hash).read_bytes()


def test_the_old_conditioning_layout_is_refused(tmp_path: Path):
    """What export wrote before alpha masks (conditioning_data_dir + is_reg) fails the same check."""
    out, _, _ = _variant(tmp_path, "masks_reg")
    ds = tomllib.loads((out / "dataset_config.toml").read_text())
    for sub in ds["datasets"][0]["subsets"]:
        del sub["alpha_mask"]
        sub["conditioning_data_dir"] = str(out / "mask" / Path(sub["image_dir"]).name)
    old = tmp_path / "old_dataset_config.toml"
    old.write_text(kohya.to_toml(ds), encoding="utf-8")
    assert sd_scripts_schema.subset_kind(ds["datasets"][0]) == "controlnet"
    # --masked_loss: every subset has conditioning_data_dir, so the ControlNet schema is chosen; it has no is_reg.
    with pytest.raises(voluptuous.MultipleInvalid, match=r"extra keys not allowed.*'is_reg'"):
        sd_scripts_schema.check_train_network(old, masked_loss=True)
    # Without it: the DreamBooth schema, which has no conditioning_data_dir.
    with pytest.raises(voluptuous.MultipleInvalid, match=r"extra keys not allowed.*'conditioning_data_dir'"):
        sd_scripts_schema.check_train_network(old, masked_loss=False)


def test_a_mask_that_does_not_fit_its_image_is_refused(tmp_path: Path):
    store = ContentStore(tmp_path / "store")
    img = store.put_bytes(_noise_png(tmp_path / "a.png", (40, 56))).sha256
    mask = store.put_bytes(_gradient_mask(tmp_path / "m.png", (56, 40))).sha256
    with pytest.raises(ValueError, match=r"mask of a is 56x40, its image 40x56"):
        kohya.export(tmp_path / "out", [TrainImage("CharaA", "a", img, "CharaA", 3, mask_hash=mask)], store.path,
                     _settings(), {"CharaA": 1})


def test_network_and_optimizer_mapping():
    cfg = kohya.train_network_config(Path("/o"), _settings(network_type="locon", optimizer="adamw", learning_rate=1e-4,
                                                           sdxl=True, base_model=None), False, False)
    assert cfg["network"]["network_args"] == ["conv_dim=16", "conv_alpha=8.0"]
    # One restart (the guide's) is two cosine cycles: sd-scripts' lr_scheduler_num_cycles counts cycles.
    assert cfg["optimizer"]["lr_scheduler"] == "cosine_with_restarts" and cfg["optimizer"]["lr_scheduler_num_cycles"] == 2
    assert "clip_skip" not in cfg["model"] and "prior_loss_weight" not in cfg["training"]
    text = kohya.to_toml(cfg)
    assert "pretrained_model_name_or_path" not in text  # None is left out, the comment tells the user
    # Batch size 2 with AdamW: x1.2 (rules.md §12), the rate the bake trains at.
    assert tomllib.loads(text)["optimizer"]["learning_rate"] == pytest.approx(1.2e-4)
    assert kohya.train_network_config(Path("/o"), _settings(network_type="lokr"), False, False)["network"][
        "network_module"] == "lycoris.kohya"


def test_toml_writer_escapes():
    data = {"a": 'say "hi"\\n', "n": [1, 2], "t": {"x": True, "arr": [{"k": 1}, {"k": 2}]}}
    assert tomllib.loads(kohya.to_toml(data, ["comment"])) == data


def test_tag_stats_frequency_diff_overlap():
    def rows(group, phase, **tags):
        return [{"concept": group, "phase": phase, "tag": t, "count": c} for t, c in tags.items()]

    cur = (rows("A", "before_prune", bow=5, red_hair=5, smile=2) + rows("A", "after_prune", A=5, smile=2)
           + rows("misc", "before_prune", bow=3, red_hair=1) + rows("misc", "after_prune", A=3, bow=3))
    prev = rows("A", "after_prune", A=4, smile=1, frown=1) + rows("misc", "after_prune", A=3, bow=3)
    freq = tagstats.frequency(cur, "A")
    assert freq[0] == {"group": "A", "tag": "A", "before": 0, "after": 5, "state": ""}
    assert {"group": "A", "tag": "bow", "before": 5, "after": 0, "state": "pruned"} in freq
    (d,) = tagstats.diff(prev, cur)
    assert d.group == "A" and d.gained == {} and d.lost == {"frown": 1} and d.changed == {"A": (4, 5), "smile": (1, 2)}
    ov = {o.tag: o for o in tagstats.overlap(cur)}
    assert ov["bow"].pruned_in == ("A",) and ov["bow"].kept_in == ("misc",)
    assert ov["red_hair"].pruned_in == ("A", "misc") and ov["red_hair"].kept_in == ()
    assert "smile" not in ov
    assert "bow" in tagstats.format_table(freq)


def _noise_png(path: Path, size: tuple[int, int]) -> bytes:
    """An RGB picture whose every pixel differs, so a changed channel shows."""
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)
    return path.read_bytes()


def _gradient_mask(path: Path, size: tuple[int, int]) -> bytes:
    """A greyscale mask with every level from black to white."""
    w, h = size
    ramp = (np.arange(w * h) * 255 // (w * h - 1)).astype(np.uint8).reshape(h, w)
    Image.fromarray(ramp, "L").save(path)
    return path.read_bytes()


def _assert_rgb_and_alpha(png: Path, image: Path, mask: Path | None) -> None:
    """The exported PNG is RGBA: the stored image's RGB, and the mask as alpha (none: fully opaque)."""
    with Image.open(png) as got, Image.open(image) as want:
        assert got.mode == "RGBA" and got.size == want.size
        arr = np.asarray(got)
        assert np.array_equal(arr[..., :3], np.asarray(want.convert("RGB")))
    if mask is None:
        assert (arr[..., 3] == 255).all()
    else:
        with Image.open(mask) as m:
            assert np.array_equal(arr[..., 3], np.asarray(m.convert("L")))


def test_a_picture_kept_as_ingested_is_exported_under_its_own_suffix(tmp_path: Path):
    """Convert keeps trainable JPEG/WebP/BMP files as they are: sd-scripts finds them by suffix."""
    import io

    from PIL import Image

    store = ContentStore(tmp_path / "store")
    hashes = {}
    for fmt, name in (("JPEG", "j"), ("WEBP", "w"), ("BMP", "b")):
        buf = io.BytesIO()
        Image.new("RGB", (40, 56), (200, 90, 30)).save(buf, fmt)
        hashes[name] = store.put_bytes(buf.getvalue()).sha256
    images = [TrainImage("CharaA", n, h, "CharaA, smile", 1) for n, h in hashes.items()]
    out = tmp_path / "out"
    kohya.export(out, images, store.path, _settings(), {"CharaA": 1})
    for name, suffix in (("j", ".jpg"), ("w", ".webp"), ("b", ".bmp")):
        exported = out / "img/1_CharaA" / f"{name}{suffix}"
        assert exported.read_bytes() == store.path(hashes[name]).read_bytes()


# -- what the export leaves out, on a real run -------------------------------------------------------
def _status_rows(output: str) -> dict[str, list[int]]:
    """`bakery status`'s stage table: stage -> [in, split, out, skipped]."""
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[1] in ("ran", "cached") and all(c.isdigit() for c in cells[2:6]):
            rows[cells[0]] = [int(c) for c in cells[2:6]]
    return rows


@pytest.mark.usefixtures("prefect_server")
def test_the_demo_export_names_what_it_leaves_out_and_agrees_with_status(tmp_path: Path):
    """The demo through prune: the held-out pictures go to val/ as sd-scripts' validation set, named with every
    skipped picture on the terminal and in left_out.tsv, and every count is the one `bakery status` shows."""
    from typer.testing import CliRunner

    from bakery.cli import app
    from storage import Catalog
    from tests.review_work import demo_work, run_recipe

    recipe = demo_work(tmp_path / "demo", per_outfit=10)
    run_id = run_recipe(recipe)
    dest = tmp_path / "kohya"
    done = CliRunner().invoke(app, ["export-kohya", str(recipe), str(dest)])
    assert done.exit_code == 0, done.output
    status = CliRunner().invoke(app, ["status", str(recipe)])
    with Catalog.open(recipe.parent / "work", read_only=True) as cat:
        held = [r for r in cat.validation_pictures(run_id) if r["held_out"]]
        skips = cat.skips_for(run_id)
    assert len(held) == 2 and len(skips) == 6  # one of each outfit's 9 (min_group 8); broken files, duplicates
    rows = _status_rows(status.output)
    n_in, split, out, skipped = rows["ingest"][0], sum(r[1] for r in rows.values()), rows["prune"][2], \
        sum(r[3] for r in rows.values())
    trained = out - len(held)
    assert f"exported {trained} training pictures of run {run_id}" in done.output
    assert f"picture account: {n_in} picture(s) in + {split} split (frames) = {trained} exported + {len(held)} " \
           f"held out + {skipped} skipped" in done.output
    assert f"skipped ({skipped}):" in status.output and n_in + split == trained + len(held) + skipped
    pictures = sorted(p.relative_to(dest).as_posix() for p in dest.glob("img/*/*") if p.suffix != ".txt")
    assert len(pictures) == trained
    # Named, with why: on the terminal and in the file, one line per picture.
    table = [line.split("\t") for line in (dest / "left_out.tsv").read_text(encoding="utf-8").splitlines()]
    assert table[0] == ["picture", "stage", "reason"] and len(table) - 1 == len(held) + skipped
    for r in held:
        subject = f"{r['folder']}/{r['name']}"
        assert [subject, "prune"] in [row[:2] for row in table]
        assert f"prune: {subject}: held out for validation" in done.output
        assert (dest / "val" / f"1_{r['folder']}" / f"{r['name']}.png").is_file()
        assert (dest / "val" / f"1_{r['folder']}" / f"{r['name']}.txt").read_text() == r["caption"]
        assert not any(p.endswith(f"/{r['name']}.png") for p in pictures)  # never trained on
    for s in skips:
        assert [s["subject"], s["stage"], s["reason"]] in table
        assert f"{s['stage']}: {s['subject']}: {s['reason']}" in done.output
    # sd-scripts: the second dataset is all validation, and the config passes its check.
    cfg = tomllib.loads((dest / "train_network.toml").read_text())
    checked = sd_scripts_schema.check_train_network(dest / "dataset_config.toml", cfg["training"]["masked_loss"])
    train_set, val_set = checked["datasets"]
    assert "validation_split" not in train_set and val_set["validation_split"] == 1.0
    assert sorted(Path(s["image_dir"]).name for s in val_set["subsets"]) == sorted(f"1_{r['folder']}" for r in held)
    for sub in val_set["subsets"]:  # as our validation loss: the full caption, in order, unflipped
        assert not {"shuffle_caption", "flip_aug", "caption_dropout_rate"} & set(sub)
        n = len(list(Path(sub["image_dir"]).glob("*.png")))
        assert sd_scripts_schema.validation_counts(n, val_set["validation_split"]) == (0, n)
    flat = {k: v for section in cfg.values() for k, v in section.items()}
    assert sd_scripts_schema.argument_problems(flat) == []
