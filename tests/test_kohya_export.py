"""kohya export (layout + both TOML files parsed back) and tag statistics, without Prefect."""

from __future__ import annotations

import tomllib
from pathlib import Path

from PIL import Image

from bakery.craft import kohya, tagstats
from bakery.manifest import TrainImage
from storage import ContentStore


def _settings(**kw) -> kohya.TrainSettings:
    base = dict(name="mylora", base_model="/models/sd15.safetensors", sdxl=False, clip_skip=2, network_type="lora",
                network_dim=32, network_alpha=16.0, conv_dim=16, conv_alpha=8.0, epochs=8, batch_size=2,
                optimizer="prodigy", learning_rate=1.0, min_snr_gamma=5.0, noise_offset=0.0, ip_noise_gamma=0.0,
                seed=42, save_every_n_epochs=1, resolution=512, min_bucket_reso=256, max_bucket_reso=1024,
                bucket_reso_steps=64, triggers=("CharaA", "Outfit1"))
    return kohya.TrainSettings(**{**base, **kw})


def test_export_layout_masks_reg_and_configs(tmp_path: Path):
    store = ContentStore(tmp_path / "store")
    img = store.put_bytes(_png(tmp_path / "a.png", "RGB", (64, 48))).sha256
    mask = store.put_bytes(_png(tmp_path / "m.png", "L", (64, 48))).sha256
    images = [
        TrainImage("CharaA", "a", img, "CharaA, smile", 3, mask_hash=mask),
        TrainImage("Outfit1", "b", img, "CharaA, Outfit1 ||| sitting", 6),  # no mask: a white one is written
        TrainImage("CharaA", "r", img, "smile", 1, is_reg=True),
        TrainImage("Style", "s", img, "", 2),  # style mode "no tags": no caption file
    ]
    out = tmp_path / "out"
    files = kohya.export(out, images, store.path, _settings(unet_only=True), {"CharaA": 1, "Outfit1": 2},
                         keep_tokens_separator=True)
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == [
        "dataset_config.toml", "img/2_Style/s.png", "img/3_CharaA/a.png", "img/3_CharaA/a.txt",
        "img/6_Outfit1/b.png", "img/6_Outfit1/b.txt", "mask/2_Style/s.png", "mask/3_CharaA/a.png",
        "mask/6_Outfit1/b.png", "mask/reg/1_CharaA/r.png", "reg/1_CharaA/r.png", "reg/1_CharaA/r.txt",
        "train_network.toml",
    ]
    assert (out / "mask/3_CharaA/a.png").read_bytes() == store.path(mask).read_bytes()
    with Image.open(out / "mask/6_Outfit1/b.png") as m:
        assert m.mode == "L" and m.size == (64, 48) and m.getextrema() == (255, 255)
    ds = tomllib.loads(files["dataset_config"].read_text())
    assert ds["general"] == {"enable_bucket": True, "caption_extension": ".txt"}
    d = ds["datasets"][0]
    assert (d["resolution"], d["batch_size"], d["min_bucket_reso"], d["max_bucket_reso"], d["bucket_reso_steps"]) == (
        512, 2, 256, 1024, 64)
    subs = {Path(s["image_dir"]).relative_to(out).as_posix(): s for s in d["subsets"]}
    assert set(subs) == {"img/2_Style", "img/3_CharaA", "img/6_Outfit1", "reg/1_CharaA"}
    assert subs["reg/1_CharaA"]["is_reg"] is True and subs["reg/1_CharaA"]["num_repeats"] == 1
    assert subs["img/6_Outfit1"]["keep_tokens_separator"] == "|||" and subs["img/6_Outfit1"]["shuffle_caption"]
    assert subs["img/3_CharaA"]["conditioning_data_dir"] == str(out / "mask/3_CharaA")
    cfg = tomllib.loads(files["train_config"].read_text())
    flat = {k: v for section in cfg.values() for k, v in section.items()}  # what sd-scripts does with sections
    assert flat["pretrained_model_name_or_path"] == "/models/sd15.safetensors"
    assert flat["network_module"] == "networks.lora" and flat["network_dim"] == 32 and flat["network_alpha"] == 16.0
    assert flat["optimizer_type"] == "Prodigy" and flat["learning_rate"] == 1.0 and flat["lr_scheduler"] == "cosine"
    assert "decouple=True" in flat["optimizer_args"]
    assert flat["max_train_epochs"] == 8 and flat["clip_skip"] == 2 and flat["min_snr_gamma"] == 5.0
    assert flat["masked_loss"] is True and flat["network_train_unet_only"] is True and flat["prior_loss_weight"] == 1.0
    assert flat["save_model_as"] == "safetensors" and flat["output_name"] == "mylora"


def test_network_and_optimizer_mapping():
    cfg = kohya.train_network_config(Path("/o"), _settings(network_type="locon", optimizer="adamw", learning_rate=1e-4,
                                                           sdxl=True, base_model=None), False, False)
    assert cfg["network"]["network_args"] == ["conv_dim=16", "conv_alpha=8.0"]
    assert cfg["optimizer"]["lr_scheduler"] == "cosine_with_restarts" and cfg["optimizer"]["lr_scheduler_num_cycles"] == 1
    assert "clip_skip" not in cfg["model"] and "prior_loss_weight" not in cfg["training"]
    text = kohya.to_toml(cfg)
    assert "pretrained_model_name_or_path" not in text  # None is left out, the comment tells the user
    assert tomllib.loads(text)["optimizer"]["learning_rate"] == 1e-4
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


def _png(path: Path, mode: str, size: tuple[int, int]) -> bytes:
    Image.new(mode, size, 200).save(path)
    return path.read_bytes()
