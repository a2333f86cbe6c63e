"""Export a training set in kohya sd-scripts' layout, with its two TOML files.

OUT/img/<N>_<folder>/<name>.png + <name>.txt   training images (.jpg/.webp/.bmp: kept as ingested) and captions
OUT/reg/<N>_<folder>/<name>.png (+ .txt)       regularisation images
OUT/val/1_<folder>/<name>.png + <name>.txt     the held-out validation pictures (a second dataset, all validation)
OUT/dataset_config.toml                        `--dataset_config` (one subset per folder)
OUT/lycoris_preset.toml                        Anima with a LyCORIS network: the layers it wraps (`preset=`)
OUT/train_network.toml                         `--config_file` for train_network.py / sdxl_train_network.py /
                                               anima_train_network.py

With masks, every PNG is RGBA: the image's RGB and its mask as alpha (white =
train; no mask = opaque = train everything), and every subset says
`alpha_mask = true`. Mapping targets sd-scripts' library/config_util.py
as of commit 264167fa (sd3 branch; v0.10.0 as far as we know): train_network.py validates with
ConfigSanitizer(True, True, args.masked_loss, True), which reads subsets that all
carry `conditioning_data_dir` as ControlNet subsets, and those refuse `is_reg`;
DreamBooth subsets take `is_reg` and `alpha_mask` together (v0.8.7 and older
have no `alpha_mask`). The held-out pictures' dataset says `validation_split = 1.0`
(sd-scripts' validation, library/config_util.py and train_util.split_train_val as of
commit 48d368fa, February 2026). The [train] keys go through kohya_args.TRAIN_ARGS.

No Prefect, no catalog: the caller hands the set, a function that gives an
object's path in the content store, and the recipe's training settings.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bakery.craft.bake import kohya_args as args
from bakery.craft.prepare.masks import as_rgb
from bakery.manifest import TrainImage

CAPTION_EXTENSION = ".txt"

# -- TOML ------------------------------------------------------------------------------------
def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError("TOML has no NaN/inf here")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)


def to_toml(data: Mapping[str, Any], comments: Sequence[str] = ()) -> str:
    """A small TOML writer: scalars, lists of scalars, tables and arrays of tables."""
    lines = [f"# {c}" for c in comments]

    def emit(table: Mapping[str, Any], prefix: str, indent: str) -> None:
        for k, v in table.items():
            if v is None or _is_table(v) or _is_table_array(v):
                continue
            lines.append(f"{indent}{k} = {_scalar(v)}")
        for k, v in table.items():
            name = f"{prefix}.{k}" if prefix else k
            if _is_table(v):
                lines.extend(["", f"{indent}[{name}]"])
                emit(v, name, indent)
            elif _is_table_array(v):
                for item in v:
                    lines.extend(["", f"{indent}[[{name}]]"])
                    emit(item, name, indent + "  ")

    emit(data, "", "")
    return "\n".join(lines).lstrip("\n") + "\n"


# -- configs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """What the export needs beside the pictures (a plain copy: craft does not import the recipe)."""

    name: str  # output name
    sdxl: bool
    resolution: int
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    # [train] as TrainParams.model_dump() gives it, learning_rate and lr_scheduler resolved (kohya_args.TRAIN_ARGS).
    train: Mapping[str, Any] = field(default_factory=dict)
    triggers: tuple[str, ...] = ()
    unet_only: bool = False  # a style_no_tags concept (rules.md §10)
    v_parameterization: bool = False  # resolved from the recipe and the base model
    zero_terminal_snr: bool = False
    total_steps: int = 0  # the bake's optimizer steps; 0: unknown
    architecture: str = ""  # a name in kohya_args.SCRIPTS; "": sd15, or sdxl when `sdxl`

    def context(self, masked: bool, has_reg: bool, head: int = 0, folder: Path = Path(".")) -> args.Context:
        return args.Context(self.name, self.sdxl, masked, has_reg, self.unet_only, self.v_parameterization,
                            self.zero_terminal_snr, self.total_steps, head, self.architecture, str(folder))


VALIDATION_DIR = "val"  # held-out pictures: a dataset of their own, all validation (`validation_split = 1.0`)


def _subsets(out: Path, images: Sequence[TrainImage], s: TrainSettings, heads: Mapping[str, int], masked: bool,
             keep_tokens_separator: bool, top: str | None = None) -> list[dict[str, Any]]:
    """One DreamBooth subset per folder, with the [train] keys TRAIN_ARGS puts on a subset (training folders)."""
    subsets = []
    for d, is_reg in sorted({(t.kohya_dir, t.is_reg) for t in images}, key=lambda x: (x[1], x[0])):
        folder, repeats = d.split("_", 1)[1], int(d.split("_", 1)[0])
        sub: dict[str, Any] = {
            "image_dir": str(out / (top or ("reg" if is_reg else "img")) / d),
            "num_repeats": repeats,
            "caption_extension": CAPTION_EXTENSION,
            "is_reg": is_reg,
        }
        if top == VALIDATION_DIR:
            pass  # our validation loss reads the full caption, unshuffled, unflipped: no augmentation here
        elif not is_reg:
            keyed = args.arguments(s.train, s.context(masked, False, heads.get(folder, 0)), "subset")
            if keep_tokens_separator:
                keyed.pop("keep_tokens", None)
                keyed["keep_tokens_separator"] = "|||"
            sub.update(keyed)
        elif s.train.get("flip_aug"):  # our bake flips regularisation images too
            sub["flip_aug"] = True
        if masked:  # the mask is each PNG's alpha channel (see masked_png)
            sub["alpha_mask"] = True
        subsets.append(sub)
    return subsets


def dataset_config(out: Path, images: Sequence[TrainImage], settings: TrainSettings, heads: Mapping[str, int],
                   masked: bool, keep_tokens_separator: bool,
                   held_out: Sequence[TrainImage] = ()) -> dict[str, Any]:
    """kohya's `--dataset_config`: one DreamBooth-style subset per folder, repeats and keep_tokens per subset.

    The held-out pictures make a second dataset with `validation_split = 1.0`: sd-scripts puts every picture of
    it in the validation set (ceil(n x 0) train, n validation) and trains on none of them."""
    bucket = {
        "resolution": settings.resolution,
        "min_bucket_reso": settings.min_bucket_reso,
        "max_bucket_reso": settings.max_bucket_reso,
        "bucket_reso_steps": settings.bucket_reso_steps,
        **args.arguments(settings.train, settings.context(masked, False), "dataset"),
    }
    datasets = [{**bucket, "subsets": _subsets(out, images, settings, heads, masked, keep_tokens_separator)}]
    if held_out:
        datasets.append({**bucket, "validation_split": 1.0, "subsets": _subsets(
            out, held_out, settings, heads, masked, keep_tokens_separator, VALIDATION_DIR)})
    return {"general": {"enable_bucket": True, "caption_extension": CAPTION_EXTENSION}, "datasets": datasets}


def train_network_config(out: Path, s: TrainSettings, masked: bool, has_reg: bool) -> dict[str, Any]:
    """kohya's `--config_file` from kohya_args.TRAIN_ARGS (sections are only for reading; sd-scripts flattens them)."""
    ctx = s.context(masked, has_reg, folder=out)
    sections = {place: args.arguments(s.train, ctx, place)
                for place in ("model", "network", "optimizer", "training", "saving")}
    sections["training"]["dataset_config"] = str(out / "dataset_config.toml")
    sections["saving"].update({
        "output_dir": str(out / "model"),
        "logging_dir": str(out / "log"),
        # rules.md §12: never publish an orphan LoRA; the triggers go in the metadata comment.
        "training_comment": "triggers: " + ", ".join(s.triggers),
    })
    return sections


# -- files -----------------------------------------------------------------------------------
def masked_png(image: Path, mask: Path | None, target: Path) -> None:
    """The image's RGB with its mask as alpha, for an `alpha_mask` subset.

    sd-scripts loads such an image as RGBA and weights the loss by alpha / 255
    (an image without alpha counts as all ones). No mask: opaque, train everything.
    """
    with Image.open(image) as im:
        rgba = as_rgb(im).convert("RGBA")  # a copy: RGB pixels as stored, alpha replaced below
    if mask is None:
        alpha = Image.new("L", rgba.size, 255)
    else:
        with Image.open(mask) as m:
            alpha = m.convert("L")
        if alpha.size != rgba.size:
            raise ValueError(f"mask of {target.stem} is {alpha.width}x{alpha.height}, "
                             f"its image {rgba.width}x{rgba.height}")
    rgba.putalpha(alpha)
    rgba.save(target, "PNG")


# The suffix sd-scripts finds a picture by (its IMAGE_EXTENSIONS); convert keeps trainable
# JPEG/WebP/BMP files as they are, every other stored picture is a PNG.
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}


def image_suffix(path: Path) -> str:
    """The suffix of a stored picture's own format (read from its header)."""
    with Image.open(path) as im:
        return SUFFIXES.get(im.format or "", ".png")


def _write_pictures(out: Path, images: Sequence[TrainImage], store_path: Callable[[str], Path], masked: bool,
                    top: str | None = None) -> None:
    for t in images:
        base = out / (top or ("reg" if t.is_reg else "img")) / t.kohya_dir
        base.mkdir(parents=True, exist_ok=True)
        if masked:
            masked_png(store_path(t.image_hash), store_path(t.mask_hash) if t.mask_hash else None,
                       base / f"{t.name}.png")
        else:
            source = store_path(t.image_hash)
            shutil.copyfile(source, base / f"{t.name}{image_suffix(source)}")
        if t.caption:  # no file = empty caption (style mode "no tags"); sd-scripts rejects empty files
            (base / f"{t.name}{CAPTION_EXTENSION}").write_text(t.caption, encoding="utf-8")


def export(out: Path, images: Sequence[TrainImage], store_path: Callable[[str], Path], settings: TrainSettings,
           heads: Mapping[str, int], keep_tokens_separator: bool = False,
           held_out: Sequence[TrainImage] = ()) -> dict[str, Path]:
    """Write the folders and both TOML files; returns their paths. `held_out`: the validation pictures never
    trained on, written to val/<1>_<folder>/ as sd-scripts' validation dataset."""
    masked = settings.train.get("masked_loss", True) and any(t.mask_hash for t in images)
    _write_pictures(out, images, store_path, masked)
    _write_pictures(out, held_out, store_path, masked, VALIDATION_DIR)
    has_reg = any(t.is_reg for t in images)
    comments = [
        "kohya sd-scripts dataset config, written by `bakery export-kohya`",
        f"train with: accelerate launch {settings.context(masked, has_reg).script.file}"
        f" --config_file {out / 'train_network.toml'}",
    ]
    if held_out:
        comments.append(f"the second dataset ({VALIDATION_DIR}/) holds the {len(held_out)} held-out picture(s): "
                        "validation only (validation_split = 1.0), never trained on")
    dpath, tpath = out / "dataset_config.toml", out / "train_network.toml"
    dpath.write_text(to_toml(dataset_config(out, images, settings, heads, masked, keep_tokens_separator, held_out),
                             comments), encoding="utf-8")
    tcomments = ["kohya sd-scripts train_network config, written by `bakery export-kohya`"]
    tcomments += [f"not as the recipe says: {line}" for line in args.left_out(settings.train, settings.context(
        masked, has_reg))]
    tpath.write_text(to_toml(train_network_config(out, settings, masked, has_reg), tcomments), encoding="utf-8")
    files = {"dataset_config": dpath, "train_config": tpath}
    if any(a.startswith("preset=") for a in args.arguments(settings.train, settings.context(
            masked, has_reg, folder=out), "network").get("network_args", [])):  # a flow script's LyCORIS layers
        files["lycoris_preset"] = out / args.LYCORIS_PRESET
        files["lycoris_preset"].write_text(to_toml(args.lycoris_preset(settings.train["network_type"]), [
            "LyCORIS preset: the layers our bake wraps, written by `bakery export-kohya`"]), encoding="utf-8")
    return files
