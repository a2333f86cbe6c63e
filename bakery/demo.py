"""The demo dataset: procedurally drawn "characters" with the flaws real scrapes have.

Two outfits, transparent backgrounds, images too small for training, exact and
near duplicates, an animated GIF, a rotated JPEG with an EXIF orientation tag,
booru-style caption sidecars, and a few broken files that must be skipped.
Deterministic: the same seed draws the same pixels.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

OUTFITS = {
    "red_dress": ((200, 40, 50), ["red_dress", "long_dress", "sleeveless"]),
    "blue_uniform": ((40, 70, 190), ["blue_shirt", "school_uniform", "pleated_skirt"]),
}
CHARACTER_TAGS = ["1girl", "solo", "green_eyes", "blonde_hair", "long_hair", "smile"]


def draw_character(size: tuple[int, int], outfit: str, seed: int, transparent: bool = False) -> Image.Image:
    rng = random.Random(seed)
    w, h = size
    mode = "RGBA" if transparent else "RGB"
    bg = (0, 0, 0, 0) if transparent else tuple(rng.randint(150, 255) for _ in range(3))
    im = Image.new(mode, size, bg)
    d = ImageDraw.Draw(im)
    if not transparent:  # some background clutter, as in real images
        for _ in range(6):
            x, y = rng.randrange(w), rng.randrange(h)
            r = rng.randint(w // 30 + 1, w // 8 + 2)
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randint(100, 230) for _ in range(3)))
    cx = w // 2 + rng.randint(-w // 10, w // 10)
    head = max(4, min(w, h) // 7)
    top = h // 6
    hair = (235, 200, 60)
    d.ellipse([cx - head * 1.3, top - head * 0.3, cx + head * 1.3, top + head * 2.6], fill=hair)  # long hair
    d.ellipse([cx - head, top, cx + head, top + 2 * head], fill=(250, 215, 190))  # face
    for ex in (cx - head // 2, cx + head // 2):  # green eyes
        d.ellipse([ex - head // 6, top + head * 0.8, ex + head // 6, top + head * 1.1], fill=(30, 150, 60))
    d.arc([cx - head // 2, top + head * 1.1, cx + head // 2, top + head * 1.6], 20, 160, fill=(120, 40, 40), width=2)
    colour = OUTFITS[outfit][0]
    d.polygon([(cx - head, top + 2 * head), (cx + head, top + 2 * head), (cx + 2 * head, h - h // 10),
               (cx - 2 * head, h - h // 10)], fill=colour)
    return im


def _tags(outfit: str) -> str:
    return ", ".join(CHARACTER_TAGS + OUTFITS[outfit][1])


def generate(dest: Path, seed: int = 7, count_per_outfit: int = 10) -> Path:
    """Write the demo images under `dest/images`; returns that folder."""
    images = dest / "images"
    rng = random.Random(seed)
    for k, outfit in enumerate(OUTFITS):
        folder = images / outfit
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count_per_outfit):
            # Mostly training-sized, some too small (they will need upscaling).
            small = i % 5 == 4
            size = (rng.randint(180, 300), rng.randint(240, 400)) if small else (rng.randint(512, 900), rng.randint(600, 1100))
            im = draw_character(size, outfit, seed=seed * 1000 + k * 100 + i, transparent=i % 4 == 1)
            stem = folder / f"{outfit}_{i:02d}"
            if im.mode == "RGBA":
                im.save(stem.with_suffix(".png"))
            elif i % 3 == 0:
                im.save(stem.with_suffix(".jpg"), quality=92)
            else:
                im.save(stem.with_suffix(".webp"), quality=90)
            stem.with_suffix(".txt").write_text(_tags(outfit) + "\n", encoding="utf-8")

    extras = images / "extras"
    extras.mkdir(parents=True, exist_ok=True)
    base = draw_character((640, 800), "red_dress", seed=99)
    base.save(extras / "pose.png")
    base.save(extras / "pose_copy.bmp")  # exact duplicate: same pixels, other format
    base.resize((600, 750), Image.LANCZOS).save(extras / "pose_resized.jpg", quality=90)  # near duplicate
    # A photo taken sideways: stored rotated, with the EXIF tag that turns it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    base.rotate(90, expand=True).save(extras / "pose_rotated.jpg", quality=90, exif=exif)
    frames = [draw_character((520, 640), "blue_uniform", seed=200 + k) for k in range(3)]
    frames[0].save(extras / "wave.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    for name, outfit in (("pose", "red_dress"), ("pose_copy", "red_dress"), ("pose_resized", "red_dress"),
                         ("pose_rotated", "red_dress"), ("wave", "blue_uniform")):
        (extras / f"{name}.txt").write_text(_tags(outfit) + "\n", encoding="utf-8")  # every image needs a caption
    (extras / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    (extras / "empty.png").write_bytes(b"")
    truncated = (images / "red_dress" / "red_dress_00.jpg").read_bytes()
    (extras / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    return images


DEMO_RECIPE = """# The demo recipe: written by `bakery demo`, runs on CPU in minutes.
[project]
name = "demo_chara"
workdir = "work"

[[sources]]
kind = "folder"
path = "images"
source_kind = "fanart_hires"

[[concepts]]
name = "demo_chara"
trigger = "demo_chara"
target_steps = 15  # steps per epoch (AdamW doubles them); the guide's 300 (100 per outfit) would take an hour on a CPU

  [[concepts.outfits]]
  name = "red_dress"
  trigger = "demo_chara_red_dress"
  paths = ["red_dress/**"]
  target_steps = 8

  [[concepts.outfits]]
  name = "blue_uniform"
  trigger = "demo_chara_blue_uniform"
  paths = ["blue_uniform/**"]
  target_steps = 8

# Small numbers so every stage runs on 2 CPU cores in minutes. The models under
# models/ have random weights (built by `bakery demo`): they prove the path, not quality.
[buckets]
resolution = 256
min_side = 128
max_side = 512

[masks]
checkpoint = "models/inspyrenet-random.pth"
mode = "fast"
size = 64

[autotag]
model = "models/wd14-tiny"

[train]
base_model = "tiny"
optimizer = "adamw"
learning_rate = 0.001
network_dim = 4
network_alpha = 2
batch_size = 2
epochs = 3

[trigger_check]
seeds = 2
steps = 8
size = 64

[evaluate]
weights = [0.0, 0.5, 1.0]
seeds = [1234]
steps = 8
width = 128
height = 128
"""


# The character and quality judges ([judges]) on tiny models in deepghs's formats (bakery/testmodels/tiny_deepghs.py):
# `bakery demo --judges` (make demo) adds this section so the report and the decisions page show their sections.
DEMO_JUDGES = """
[judges]
ccip_model = "models/deepghs/ccip"
corrupt_model = "models/deepghs/corrupt"
monochrome_model = "models/deepghs/monochrome"
completeness_model = "models/deepghs/completeness"
kind_model = "models/deepghs/kind"
aesthetic_model = "models/deepghs/aesthetic"
"""


def build_demo_models(models: Path) -> None:
    """Random-weight models of the real architectures and file formats (built once)."""
    from bakery.testmodels.inspyrenet import build_random_inspyrenet_ckpt
    from bakery.testmodels.tiny_wd14 import write_tiny_wd14

    if not (models / "wd14-tiny" / "model.onnx").exists():
        write_tiny_wd14(models / "wd14-tiny")
    if not (models / "inspyrenet-random.pth").exists():
        build_random_inspyrenet_ckpt(models / "inspyrenet-random.pth")


def write_demo(workdir: Path, judges: bool = False) -> Path:
    """Dataset, models and recipe under `workdir`; returns the recipe path. `judges`: the [judges] section on the
    tiny deepghs-format models (added to the demo's recipe when it lacks one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "images").exists():  # never redraw (or overwrite) an existing dataset
        generate(workdir)
    build_demo_models(workdir / "models")
    recipe = workdir / "recipe.toml"
    if not recipe.exists():
        recipe.write_text(DEMO_RECIPE, encoding="utf-8")
    if judges:
        from bakery.testmodels.tiny_deepghs import write_all

        if not (workdir / "models" / "deepghs" / "ccip" / "metrics.json").exists():
            write_all(workdir / "models" / "deepghs")
        text = recipe.read_text(encoding="utf-8")
        if "[judges]" not in text:
            recipe.write_text(text + DEMO_JUDGES, encoding="utf-8")
    return recipe
