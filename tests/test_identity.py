"""One identity per picture and the picture account: unit tests of the rules, then real runs.

Seen by a new user: `pic0.png` beside `pic0.jpg` lost half the pictures at buckets and in
`export-kohya`; `anim.gif` beside `anim.webp` lost frames. Here every picture comes out
with a unique, stable name, and a stage that loses one fails the run naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bakery.account import account
from bakery.cli import app
from bakery.craft.gather.names import Wanted, collisions, unique_names
from bakery.manifest import ImageRef, Skip, StageResult
from storage import Catalog
from tests.conftest import write_recipe
from tests.images import gradient

H = [f"{i:x}" * 64 for i in range(10)]  # content hashes


# -- names ------------------------------------------------------------------------------------
def test_a_name_without_collision_stays_as_it_is():
    assert unique_names([Wanted("chara/pic0", H[1], "png"), Wanted("chara/pic1", H[2], "jpg")]) == {
        H[1]: "chara/pic0", H[2]: "chara/pic1"}


def test_same_stem_pictures_are_told_apart_by_extension_in_any_order():
    wanted = [Wanted("pic0", H[1], "png"), Wanted("pic0", H[2], "jpg"), Wanted("pic1", H[3], "png")]
    names = unique_names(wanted)
    assert names == {H[1]: "pic0_png", H[2]: "pic0_jpg", H[3]: "pic1"}
    assert unique_names(list(reversed(wanted))) == names  # stable: order of discovery does not matter


def test_same_stem_and_extension_falls_back_to_the_content_hash():
    # img001.png in two source folders; Pic0.png and pic0.png (one folder on a case-insensitive export)
    names = unique_names([Wanted("img001", H[1], "png"), Wanted("img001", H[2], "png"),
                          Wanted("Pic0", H[3], "png"), Wanted("pic0", H[4], "png")])
    assert names == {H[1]: f"img001_{H[1][:8]}", H[2]: f"img001_{H[2][:8]}",
                     H[3]: f"Pic0_{H[3][:8]}", H[4]: f"pic0_{H[4][:8]}"}


def test_a_suffixed_name_never_takes_a_name_another_picture_has():
    names = unique_names([Wanted("pic0", H[1], "png"), Wanted("pic0", H[2], "jpg"), Wanted("pic0_jpg", H[3], "png")])
    assert names[H[3]] == "pic0_jpg" and names[H[1]] == "pic0_png" and names[H[2]] == f"pic0_{H[2][:8]}"
    assert not collisions(list(names.values()))


def test_one_content_under_two_labels_is_one_picture():
    assert unique_names([Wanted("b", H[1], "png"), Wanted("a", H[1], "png")]) == {H[1]: "a"}


# -- the account ------------------------------------------------------------------------------
def refs(*names: str) -> list[ImageRef]:
    return [ImageRef(n, H[i % 10]) for i, n in enumerate(names)]


def test_account_of_a_stage_that_splits_and_skips():
    result = StageResult(images=refs("a", "anim0001", "anim0002", "anim0003"), skips=[Skip("bad", "corrupt")],
                         origins={"anim0001": "anim", "anim0002": "anim", "anim0003": "anim"})
    books = account(["a", "anim", "bad"], result)
    assert books.ok and (books.n_in, books.n_split, books.n_out, books.n_skipped) == (3, 2, 4, 1)
    assert books.n_in + books.n_split == books.n_out + books.n_skipped


def test_account_names_the_lost_the_doubled_and_the_unknown():
    result = StageResult(images=[ImageRef("a", H[1]), ImageRef("A", H[2]), ImageRef("ghost", H[3])],
                         skips=[Skip("b", "too small")], origins={"A": "c"})
    books = account(["a", "b", "c", "d"], result)
    assert not books.ok
    assert books.lost == ["d"] and books.named_twice == ["A", "a"] and books.unknown == ["ghost"]
    line = books.problem("buckets")
    assert "\n" not in line and "1 picture(s) lost: d" in line and "named twice: A, a" in line


def test_a_long_list_of_lost_pictures_stays_one_short_line():
    books = account([f"p{i}" for i in range(500)], StageResult(images=[]))
    line = books.problem("upscale")
    assert len(books.lost) == 500 and len(line) < 300 and line.endswith("and 495 more")


# -- real runs --------------------------------------------------------------------------------
def _frames(path: Path, seeds: list[int], fmt: str) -> None:
    frames = [gradient(64, 48, seed=s) for s in seeds]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)


def _same_stem_folder(root: Path) -> None:
    """8 different pictures in 4 stems, two animations sharing a stem, and a file named like a frame."""
    root.mkdir(parents=True)
    for i in range(4):
        gradient(96, 64, seed=10 + i).save(root / f"pic{i}.png")
        Image.fromarray(np.asarray(gradient(96, 64, seed=20 + i))[::-1].copy()).save(root / f"pic{i}.jpg", quality=95)
        (root / f"pic{i}.txt").write_text(f"1girl, tag{i}", encoding="utf-8")
    (root / "pic0.png.txt").write_text("1girl, own_caption", encoding="utf-8")  # pic0.png's own caption
    _frames(root / "anim.gif", [1, 2, 3], "GIF")
    _frames(root / "anim.webp", [4, 5], "WEBP")
    (root / "anim.txt").write_text("1girl, animated", encoding="utf-8")
    _frames(root / "clip.gif", [6, 7], "GIF")
    gradient(64, 48, seed=8).save(root / "clip0001.png")
    (root / "clip.txt").write_text("clip", encoding="utf-8")
    (root / "clip0001.txt").write_text("still", encoding="utf-8")


# No held-out validation picture: every picture must reach the training set and the export.
CONCEPT = ('\n[dedupe]\nnear = false\n\n[validation]\nenabled = false\n\n'
           '[[concepts]]\nname = "CharaA"\ntrigger = "CharaA"\nprune = "fluid"\n')


@pytest.mark.usefixtures("prefect_server")
def test_same_stem_pictures_all_reach_the_kohya_export(tmp_path: Path):
    from flows.bake import bake_lora

    _same_stem_folder(tmp_path / "images")
    recipe = write_recipe(tmp_path, CONCEPT)
    run_id = bake_lora(str(recipe))
    pictures = 8 + 3 + 2 + 2 + 1  # pic*.png/jpg, anim.gif, anim.webp, clip.gif frames, clip0001.png
    with Catalog.open(tmp_path / "work", read_only=True) as cat:
        table = {s["stage"]: s for s in cat.stage_table(run_id)}
        names = {r["name"]: r["caption"] for r in cat.train_captions(run_id)}
        warnings = [w["message"] for w in cat.stage_warnings(run_id)]
    for stage in ("ingest", "convert", "dedupe", "alpha", "trim", "upscale", "masks", "buckets", "prune"):
        s = table[stage]
        assert s["n_lost"] == 0 and s["n_in"] + s["n_split"] == s["n_out"] + s["n_skipped"], s
    assert table["convert"]["n_split"] == 2 + 1 + 1 and table["buckets"]["n_out"] == pictures
    expected = {f"pic{i}_{ext}" for i in range(4) for ext in ("png", "jpg")} | {
        "anim_gif0001", "anim_gif0002", "anim_gif0003", "anim_webp0001", "anim_webp0002"}
    assert expected <= set(names) and len(names) == pictures
    clip = sorted(n for n in names if n.startswith("clip"))  # two frames and a file all want "clip0001"
    assert len(clip) == 3 and "clip0002" in clip and all(n.startswith("clip0001_") for n in clip if n != "clip0002")
    # Sidecars: a picture's own file wins; a stem's file serving two pictures is a warning.
    assert names["pic0_png"] == "CharaA, 1girl, own_caption" and names["pic0_jpg"] == "CharaA, 1girl, tag0"
    assert names["pic1_png"] == names["pic1_jpg"] == "CharaA, 1girl, tag1"
    shared = sorted(w.split(" captions ")[0].rsplit("/", 1)[-1] for w in warnings if " captions " in w)
    assert shared == ["anim.txt", "pic1.txt", "pic2.txt", "pic3.txt"]

    out = CliRunner().invoke(app, ["export-kohya", str(recipe), str(tmp_path / "kohya")])
    assert out.exit_code == 0, out.output
    exported = sorted(p.stem for p in (tmp_path / "kohya/img").rglob("*.png"))
    assert len(exported) == len(set(exported)) == pictures

    # Stable across runs: the same files give the same names in a fresh work dir too.
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(recipe.read_text().replace('workdir = "work"', 'workdir = "work2"'), encoding="utf-8")
    again = bake_lora(str(fresh))
    with Catalog.open(tmp_path / "work2", read_only=True) as cat:
        assert {r["name"]: r["caption"] for r in cat.train_captions(again)} == names
    status = CliRunner().invoke(app, ["status", str(recipe)])
    assert status.exit_code == 0, status.output
    header = next(line for line in status.output.splitlines() if line.startswith("stage"))
    assert header.split() == ["stage", "status", "in", "+split", "out", "skipped", "account", "processed", "time"]
    assert "warnings (5): ingest 4, bake 1" in status.output  # the shared sidecars; no base model: no bake


@pytest.mark.usefixtures("prefect_server")
def test_a_stage_that_loses_a_picture_fails_the_run_and_names_it(tmp_path: Path):
    from prefect import flow, task

    from tasks.stage import RunInfo, Stage, StageFailed, run_stage

    @task
    def leaky(inputs, params_json, workdir, run_id, workers):
        # keeps the pictures whose name sorts first: "c" vanishes without a skip
        return StageResult(images=sorted(inputs)[:2], skips=[Skip(sorted(inputs)[3].name, "too small")], n_in=len(inputs))

    @flow
    def one_stage(workdir: str) -> None:
        run = RunInfo("leaky-run", workdir)
        with Catalog.open(run.catalog) as cat:
            cat.start_run(run.run_id, "recipe.toml", "h", "{}", None)
        run_stage(Stage("leaky", leaky, "v1"), refs("a", "b", "c", "d"), "{}", run)

    with pytest.raises(StageFailed, match=r"leaky broke the picture account .*1 picture\(s\) lost: c$"):
        one_stage(str(tmp_path))
    with Catalog.open(tmp_path, read_only=True) as cat:
        row = cat.stage_table("leaky-run")[0]
    assert (row["status"], row["n_in"], row["n_out"], row["n_skipped"], row["n_lost"]) == ("failed", 4, 2, 1, 1)
    assert "lost: c" in row["message"]
