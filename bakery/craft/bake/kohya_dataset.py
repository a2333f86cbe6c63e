"""Export a training set in kohya sd-scripts' layout, with its two TOML files.

OUT/img/<N>_<folder>/<name>.png + <name>.txt   training images (.jpg/.webp/.bmp: kept as ingested) and captions
OUT/reg/<N>_<folder>/<name>.png (+ .txt)       regularisation images
OUT/dataset_config.toml                        `--dataset_config` (one subset per folder)
OUT/train_network.toml                         `--config_file` for train_network.py / sdxl_train_network.py

With masks, every PNG is RGBA: the image's RGB and its mask as alpha (white =
train; no mask = opaque = train everything), and every subset says
`alpha_mask = true`. Mapping targets sd-scripts' library/config_util.py
as of commit 264167fa (sd3 branch; v0.10.0 as far as we know): train_network.py validates with
ConfigSanitizer(True, True, args.masked_loss, True), which reads subsets that all
carry `conditioning_data_dir` as ControlNet subsets, and those refuse `is_reg`;
DreamBooth subsets take `is_reg` and `alpha_mask` together (v0.8.7 and older
have no `alpha_mask`).

No Prefect, no catalog: the caller hands the set, a function that gives an
object's path in the content store, and the recipe's training settings.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bakery.craft.prepare.masks import as_rgb
from bakery.manifest import TrainImage

CAPTION_EXTENSION = ".txt"

# Our network types -> sd-scripts network module and extra network_args.
NETWORKS: dict[str, tuple[str, list[str]]] = {
    "lora": ("networks.lora", []),
    "locon": ("networks.lora", ["conv_dim={conv_dim}", "conv_alpha={conv_alpha}"]),  # kohya's LoRA-C3Lier
    "dora": ("lycoris.kohya", ["algo=lora", "dora_wd=True"]),
    "loha": ("lycoris.kohya", ["algo=loha", "conv_dim={conv_dim}", "conv_alpha={conv_alpha}"]),
    "lokr": ("lycoris.kohya", ["algo=lokr", "conv_dim={conv_dim}", "conv_alpha={conv_alpha}"]),
    # LyCORIS's own modules, on the layers our bake wraps (lycoris_net): ia3's preset, LoRA's layers (attn-mlp).
    "ia3": ("lycoris.kohya", ["algo=ia3", "preset=ia3"]),
    "dylora": ("lycoris.kohya", ["algo=dylora", "block_size=4", "preset=attn-mlp"]),
    "diag-oft": ("lycoris.kohya", ["algo=diag-oft", "preset=attn-mlp"]),
}
# Our optimizers -> sd-scripts optimizer_type, optimizer_args and scheduler (rules.md §12).
OPTIMIZERS: dict[str, tuple[str, list[str], str]] = {
    "prodigy": ("Prodigy", ["weight_decay=0.01", "decouple=True", "use_bias_correction=True",
                            "safeguard_warmup=True", "d_coef=2"], "cosine"),
    "adamw": ("AdamW", [], "cosine_with_restarts"),
    "adamw8bit": ("AdamW8bit", [], "cosine_with_restarts"),
    "came": ("came_pytorch.CAME", ["weight_decay=0.04"], "cosine"),
}


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
    """The recipe's training parameters export needs (a plain copy: craft does not import the recipe)."""

    name: str
    base_model: str | None
    sdxl: bool
    clip_skip: int
    network_type: str
    network_dim: int
    network_alpha: float
    conv_dim: int
    conv_alpha: float
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    min_snr_gamma: float
    noise_offset: float
    ip_noise_gamma: float
    seed: int
    save_every_n_epochs: int
    resolution: int
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    triggers: tuple[str, ...] = ()
    unet_only: bool = False
    prior_loss_weight: float = 1.0  # regularisation images' loss weight
    v_parameterization: bool = False  # --v_parameterization (v-prediction models)
    zero_terminal_snr: bool = False  # --zero_terminal_snr


def dataset_config(out: Path, images: Sequence[TrainImage], settings: TrainSettings, heads: Mapping[str, int],
                   masked: bool, keep_tokens_separator: bool) -> dict[str, Any]:
    """kohya's `--dataset_config`: one DreamBooth-style subset per folder, repeats and keep_tokens per subset."""
    subsets = []
    for d, is_reg in sorted({(t.kohya_dir, t.is_reg) for t in images}, key=lambda x: (x[1], x[0])):
        folder, repeats = d.split("_", 1)[1], int(d.split("_", 1)[0])
        sub: dict[str, Any] = {
            "image_dir": str(out / ("reg" if is_reg else "img") / d),
            "num_repeats": repeats,
            "caption_extension": CAPTION_EXTENSION,
            "is_reg": is_reg,
        }
        if not is_reg:
            sub["shuffle_caption"] = True
            if keep_tokens_separator:
                sub["keep_tokens_separator"] = "|||"
            else:
                sub["keep_tokens"] = heads.get(folder, 0)
        if masked:  # the mask is each PNG's alpha channel (see masked_png)
            sub["alpha_mask"] = True
        subsets.append(sub)
    return {
        "general": {"enable_bucket": True, "caption_extension": CAPTION_EXTENSION},
        "datasets": [{
            "resolution": settings.resolution,
            "batch_size": settings.batch_size,
            "min_bucket_reso": settings.min_bucket_reso,
            "max_bucket_reso": settings.max_bucket_reso,
            "bucket_reso_steps": settings.bucket_reso_steps,
            "subsets": subsets,
        }],
    }


def train_network_config(out: Path, s: TrainSettings, masked: bool, has_reg: bool) -> dict[str, Any]:
    """kohya's `--config_file` (sections are only for reading; sd-scripts flattens them)."""
    module, net_args = NETWORKS[s.network_type]
    opt_type, opt_args, scheduler = OPTIMIZERS[s.optimizer]
    model: dict[str, Any] = {"pretrained_model_name_or_path": s.base_model}
    if not s.sdxl:
        model["clip_skip"] = s.clip_skip
    training: dict[str, Any] = {
        "max_train_epochs": s.epochs,
        "seed": s.seed,
        "mixed_precision": "fp16",
        "sdpa": True,
        "gradient_checkpointing": True,
        "cache_latents": True,
        "max_data_loader_n_workers": 2,
        "persistent_data_loader_workers": True,
        "dataset_config": str(out / "dataset_config.toml"),
        "network_train_unet_only": s.unet_only,
        "masked_loss": masked,
    }
    if s.min_snr_gamma > 0:
        training["min_snr_gamma"] = s.min_snr_gamma
    if s.noise_offset > 0:
        training["noise_offset"] = s.noise_offset
    if s.ip_noise_gamma > 0:
        training["ip_noise_gamma"] = s.ip_noise_gamma
    if has_reg:
        training["prior_loss_weight"] = s.prior_loss_weight
    if s.v_parameterization:
        training["v_parameterization"] = True
    if s.zero_terminal_snr:
        training["zero_terminal_snr"] = True
    optimizer: dict[str, Any] = {
        "optimizer_type": opt_type,
        "learning_rate": s.learning_rate,
        "lr_scheduler": scheduler,
    }
    if opt_args:
        optimizer["optimizer_args"] = opt_args
    if scheduler == "cosine_with_restarts":
        optimizer["lr_scheduler_num_cycles"] = 1
    network: dict[str, Any] = {"network_module": module, "network_dim": s.network_dim, "network_alpha": s.network_alpha}
    args = [a.format(conv_dim=s.conv_dim, conv_alpha=s.conv_alpha) for a in net_args]
    if args:
        network["network_args"] = args
    saving = {
        "output_dir": str(out / "model"),
        "output_name": s.name,
        "save_model_as": "safetensors",
        "save_precision": "fp16",
        "save_every_n_epochs": s.save_every_n_epochs,
        "save_state": True,
        "logging_dir": str(out / "log"),
        # rules.md §12: never publish an orphan LoRA; the triggers go in the metadata comment.
        "training_comment": "triggers: " + ", ".join(s.triggers),
    }
    return {"model": model, "network": network, "optimizer": optimizer, "training": training, "saving": saving}


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


def export(out: Path, images: Sequence[TrainImage], store_path: Callable[[str], Path], settings: TrainSettings,
           heads: Mapping[str, int], keep_tokens_separator: bool = False) -> dict[str, Path]:
    """Write the folders and both TOML files; returns their paths."""
    masked = any(t.mask_hash for t in images)
    for t in images:
        base = out / ("reg" if t.is_reg else "img") / t.kohya_dir
        base.mkdir(parents=True, exist_ok=True)
        if masked:
            masked_png(store_path(t.image_hash), store_path(t.mask_hash) if t.mask_hash else None,
                       base / f"{t.name}.png")
        else:
            source = store_path(t.image_hash)
            shutil.copyfile(source, base / f"{t.name}{image_suffix(source)}")
        if t.caption:  # no file = empty caption (style mode "no tags"); sd-scripts rejects empty files
            (base / f"{t.name}{CAPTION_EXTENSION}").write_text(t.caption, encoding="utf-8")
    has_reg = any(t.is_reg for t in images)
    comments = [
        "kohya sd-scripts dataset config, written by `bakery export-kohya`",
        "train with: accelerate launch "
        + ("sdxl_train_network.py" if settings.sdxl else "train_network.py")
        + f" --config_file {out / 'train_network.toml'}",
    ]
    dpath, tpath = out / "dataset_config.toml", out / "train_network.toml"
    dpath.write_text(to_toml(dataset_config(out, images, settings, heads, masked, keep_tokens_separator), comments),
                     encoding="utf-8")
    tcomments = ["kohya sd-scripts train_network config, written by `bakery export-kohya`"]
    if not settings.base_model:
        tcomments.append("set pretrained_model_name_or_path (recipe train.base_model was not set)")
    tpath.write_text(to_toml(train_network_config(out, settings, masked, has_reg), tcomments), encoding="utf-8")
    return {"dataset_config": dpath, "train_config": tpath}
