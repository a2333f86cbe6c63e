"""`bakery doctor RECIPE` and the check `bakery run` makes before a bake: the machine, the disk, the models, and
whether the bake fits the GPU.

The peak-VRAM estimate (docs/doctor.md says the same, with the figures):
- the frozen base: its exact parameter count, from the configs that ship with the package (bakery/configs/sd15,
  sdxl) instantiated on torch's meta device (no memory, no download; `count_sizes`, kept as SIZES); Anima's from
  its published sizes (DiT 2.0 B, Qwen3 0.6 B, Qwen-Image VAE 0.13 B). 2 bytes a parameter in fp16/bf16, 4 in fp32;
- the network: kohya's layer choice (`find_targets`) on those models, `dim x (in + out)` a layer (LoCon's convs with
  conv_dim), stored fp32 with its gradient (8 bytes) plus the optimizer's state (AdamW 8, AdamW8bit 2, Prodigy 16,
  CAME 12 bytes a parameter);
- activations: a per-architecture figure for one picture at its native side with and without gradient
  checkpointing (ACTIVATIONS), times the batch and the pixel count relative to that side; training the text
  encoder adds its own; latents not cached add the VAE encoder's;
- 10 % for the allocator's fragmentation. It estimates what `torch.cuda.max_memory_allocated` reports; the CUDA
  context (~0.3-0.5 GB) is outside it and is taken off the free VRAM instead.
What fits: the recipe's settings are changed one at a time, in the guide's order (gradient checkpointing, the text
encoder frozen, batch halved, dim halved, an 8-bit optimizer), until the estimate fits; the profile that sets them
(`sd15_8gb`, `sdxl_12gb`) is named when it fits.
"""

from __future__ import annotations

import errno
import functools
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bakery.models import describe, human_bytes, model_keys
from bakery.recipe import Recipe
from bakery.recipe.bake import TRAIN_PROFILES, TrainParams

GB = 1024**3
CONFIGS = Path(__file__).parent / "configs"
# Bytes of optimizer state per trainable parameter.
OPTIMIZER_STATE = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "came": 12}
# (native side px, activations of one picture with gradient checkpointing, without, text encoder when trained) in
# GB, half precision: calibrated on SD1.5 / SDXL bakes; benchmarks/vram.py measures them on a GPU.
ACTIVATIONS = {"sd15": (512, 0.6, 3.0, 0.25), "sdxl": (1024, 2.0, 11.0, 0.6), "anima": (1024, 2.5, 14.0, 0.5)}
VAE_ENCODE = {"sd15": 1.0, "sdxl": 3.5, "anima": 3.5}  # GB, one picture at the native side, no grad
ANIMA = {"base": 2.0e9, "text_encoder": 0.6e9, "vae": 0.13e9, "rank1": 1.43e6}  # published sizes; rank-1 LoRA
CONV_NETWORKS = ("locon", "loha", "lokr", "dylora")  # they train the 3x3 convs too, at conv_dim
CONTEXT = 0.4 * GB  # the CUDA context, not counted by max_memory_allocated
OVERHEAD = 1.10


@dataclass(frozen=True)
class Machine:
    torch: str
    cuda: str | None
    driver: str | None
    gpu: str | None
    vram_total: int
    vram_free: int
    bf16: bool


def machine() -> Machine:
    import torch

    if not torch.cuda.is_available():
        return Machine(torch.__version__, torch.version.cuda, None, None, 0, 0, False)
    free, total = torch.cuda.mem_get_info()
    return Machine(torch.__version__, torch.version.cuda, _driver(), torch.cuda.get_device_name(), total, free,
                   torch.cuda.is_bf16_supported())


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def architecture(train: TrainParams) -> str:
    """sd15, sdxl or anima: as the recipe says, else as the base model's file says, else sd15."""
    if train.architecture != "auto":
        return train.architecture
    path = Path(train.base_model or "")
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        from bakery.craft.bake.bases.checkpoint import kind_of

        with safe_open(str(path), "pt") as f:
            kind = kind_of(f.keys(), lambda k: tuple(f.get_slice(k).get_shape()))
        return kind if kind in ACTIVATIONS else "sd15"
    return "sdxl" if (path / "text_encoder_2").is_dir() else "sd15"


# (base + VAE params, text encoder params, rank-1 network params of the UNet, of the text encoders), by
# (architecture, convs trained): what `count_sizes` counts (a test keeps the two in step), kept as figures so that
# `bakery run`'s check imports no model library.
SIZES = {
    ("sd15", False): (943_174_827, 123_060_480, 423_936, 165_888),
    ("sd15", True): (943_174_827, 123_060_480, 1_050_816, 165_888),
    ("sdxl", False): (2_651_117_547, 816_081_920, 2_659_840, 903_168),
    ("sdxl", True): (2_651_117_547, 816_081_920, 3_074_240, 903_168),
}


def _sizes(arch: str, conv: bool) -> tuple[int, int, int, int]:
    if arch == "anima":
        return int(ANIMA["base"] + ANIMA["vae"]), int(ANIMA["text_encoder"]), int(ANIMA["rank1"]), 0
    return SIZES[(arch, conv)]


@functools.cache
def count_sizes(arch: str, conv: bool) -> tuple[int, int, int, int]:
    """SIZES counted: the shipped configs on the meta device, kohya's layer choice on them."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bakery.craft.bake.networks.kohya_lora import NetworkSpec, find_targets

    spec = NetworkSpec(network_type="locon" if conv else "lora")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / arch / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / arch / "vae"))
        tes = [CLIPTextModel(CLIPTextConfig.from_pretrained(p)) for p in sorted((CONFIGS / arch).glob("text_encoder*"))]
    base = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in vae.parameters())
    te = sum(p.numel() for m in tes for p in m.parameters())
    return base, te, _rank1(unet, find_targets(unet, "unet", spec), conv), sum(
        _rank1(m, find_targets(m, "te", spec), False) for m in tes)


def _rank1(model, targets, conv: bool) -> int:
    modules = dict(model.named_modules())
    total = 0
    for name in targets.linear + (targets.conv if conv else []):
        m = modules[name]
        fan_in = m.in_features if hasattr(m, "in_features") else m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        total += fan_in + (m.out_features if hasattr(m, "out_features") else m.out_channels)
    return total


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, float]  # bytes

    @property
    def total(self) -> float:
        return sum(self.parts.values()) * OVERHEAD

    def text(self) -> str:
        return f"{self.total / GB:.1f} GB (" + ", ".join(f"{k} {v / GB:.2f}" for k, v in self.parts.items()) + ")"


def vram_estimate(train: TrainParams, resolution: int, arch: str, bf16_or_fp16: bool = True) -> Estimate:
    """The bake's peak VRAM (see the module docstring for the method)."""
    base, te, unet_r1, te_r1 = _sizes(arch, False)
    convs = _sizes(arch, True)[2] - unet_r1 if train.network_type in CONV_NETWORKS and arch != "anima" else 0
    weight = 2 if bf16_or_fp16 and train.mixed_precision != "no" else 4
    unet = train.network_dim * unet_r1 + train.conv_dim * convs
    trained = (unet if train.train_unet else 0) + (train.network_dim * te_r1 if train.train_text_encoder else 0)
    side, with_gc, without_gc, te_act = ACTIVATIONS[arch]
    scale = train.batch_size * (resolution / side) ** 2 * (weight / 2)
    checkpointing = train.gradient_checkpointing is not False  # None: on with CUDA
    act = (with_gc if checkpointing else without_gc) * scale + (te_act * train.batch_size
                                                                 if train.train_text_encoder else 0)
    vae = 0 if train.cache_latents else VAE_ENCODE[arch] * scale
    return Estimate({"base": (base + te) * weight, "network": trained * (8 + OPTIMIZER_STATE[train.optimizer]),
                     "activations": act * GB, "vae encode": vae * GB})


def fitting(train: TrainParams, resolution: int, arch: str, free: float) -> tuple[str, TrainParams] | None:
    """The first change (cumulative, in the guide's order) whose estimate fits `free` bytes; None: nothing fits."""
    profile = {"sd15": "sd15_8gb", "sdxl": "sdxl_12gb"}.get(arch)
    if profile:
        candidate = train.model_copy(update=TRAIN_PROFILES[profile])
        if vram_estimate(candidate, resolution, arch).total <= free:
            return f'profile = "{profile}"', candidate
    changes: dict[str, str] = {}
    for key, value in _steps(train):
        train = train.model_copy(update={key: value})
        changes[key] = f"{key} = {json.dumps(value)}"
        if vram_estimate(train, resolution, arch).total <= free:
            return ", ".join(changes.values()), train
    return None


def _steps(train: TrainParams):
    yield "gradient_checkpointing", True
    yield "train_text_encoder", False
    batch, dim = train.batch_size, train.network_dim
    while batch > 1:
        batch //= 2
        yield "batch_size", batch
    while dim > 8:
        dim //= 2
        yield "network_dim", dim
    if train.optimizer in ("adamw", "prodigy", "came"):
        yield "optimizer", "adamw8bit"


# -- disk -----------------------------------------------------------------------------------------------------------

PICTURE_COPIES = 3  # the store's original, the converted/trimmed/upscaled derivatives, masks and crops
EVALUATE_BYTES = 256 * 1024**2  # the grids' renders and the report
LOGS_BYTES = 64 * 1024**2  # the catalog, Prefect's results, the logs
PICTURE_STAGES = ("scrape", "ingest", "convert", "dedupe", "alpha", "trim", "upscale", "crops", "masks", "buckets")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def disk_need(recipe: Recipe) -> dict[str, int]:
    """What a run of the recipe writes under its work dir, by part (bytes); see docs/doctor.md."""
    pictures = sum(folder_bytes(recipe.resolve(s.path)) for s in recipe.sources if s.kind == "folder")
    need = {"pictures": PICTURE_COPIES * pictures, "bake": 0, "evaluate": EVALUATE_BYTES, "logs": LOGS_BYTES}
    t = recipe.train
    if t.base_model and t.base_model != "tiny" and recipe.slider is None:
        arch = architecture(t)
        _, _, unet_r1, te_r1 = _sizes(arch, False)
        params = t.network_dim * (unet_r1 + (te_r1 if t.train_text_encoder else 0))
        saves = -(-t.epochs // t.save_every_n_epochs)
        need["bake"] = params * (2 if t.save_precision != "fp32" else 4) * saves + params * (
            4 + OPTIMIZER_STATE[t.optimizer])
    return need


def free_disk(folder: Path) -> int:
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_line(recipe: Recipe) -> tuple[bool, str]:
    need = disk_need(recipe)
    left = max(sum(need.values()) - folder_bytes(recipe.workdir), 0)
    free = free_disk(recipe.workdir)
    parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in need.items())
    return free >= left, (f"disk under {recipe.workdir}: {human_bytes(free)} free; this run writes about "
                          f"{human_bytes(left)} more ({parts}, less what the work dir holds)")


def disk_full_line(recipe: Recipe, error_text: str, recipe_path: Path) -> str | None:
    """A run stopped by a full disk, as one line: how much is free and how much the stage needs; None otherwise."""
    if f"Errno {errno.ENOSPC}" not in error_text and "No space left" not in error_text:
        return None
    stage = next((s for s in (*PICTURE_STAGES, "regularisation", "trigger_check", "bake", "evaluate", "slide")
                  if f"stage {s} failed" in error_text), None)
    part = "pictures" if stage in PICTURE_STAGES else "bake" if stage in ("bake", "slide", "regularisation") else \
        "evaluate" if stage else None
    need = disk_need(recipe)
    needs = need[part] if part else sum(need.values())
    return (f"{'stage ' + stage if stage else 'the run'} stopped: the disk under {recipe.workdir} is full "
            f"({human_bytes(free_disk(recipe.workdir))} free; {'it' if stage else 'the run'} needs about "
            f"{human_bytes(needs)}): free some space and run again (bakery doctor {recipe_path})")


# -- the report and the check before a run -------------------------------------------------------------------------


def bakes(recipe: Recipe) -> bool:
    return recipe.slider is None and bool(recipe.train.base_model) and recipe.train.base_model != "tiny"


def vram_line(recipe: Recipe, m: Machine) -> tuple[bool, str]:
    t, res = recipe.train, recipe.buckets.resolution
    arch = architecture(t)
    est = vram_estimate(t, res, arch)
    what = (f"bake: {arch} at {res} px, batch {t.batch_size}, {t.network_type} dim {t.network_dim}, "
            f"{t.optimizer}: peak VRAM about {est.text()}")
    if not m.gpu or t.device == "cpu":
        return True, what + "; no CUDA GPU: the bake runs on the CPU (slow)"
    free = m.vram_free - CONTEXT
    if est.total <= free:
        return True, what + f"; fits {m.gpu} ({human_bytes(m.vram_free)} free)"
    fix = fitting(t, res, arch, free)
    hint = f"fits with {fix[0]}" if fix else "nothing in reach fits: a smaller resolution or a larger GPU"
    return False, (what + f"; does NOT fit {m.gpu} ({human_bytes(m.vram_free)} free): it would spill into shared "
                   f"memory (10-100x slower) or stop out of memory; {hint}")


def report(recipe: Recipe) -> list[str]:
    """`bakery doctor`: one line per fact."""
    m = machine()
    lines = [f"torch {m.torch} ({'CUDA ' + m.cuda + ' build' if m.cuda else 'CPU build'})"]
    lines.append(f"GPU: {m.gpu}, driver {m.driver or 'unknown'}, {human_bytes(m.vram_free)} free of "
                 f"{human_bytes(m.vram_total)}, bf16 {'yes' if m.bf16 else 'no (fp16)'}" if m.gpu else
                 "GPU: none visible to torch (CPU only)")
    lines.append(("ok    " if disk_line(recipe)[0] else "SHORT ") + disk_line(recipe)[1])
    for key in model_keys():
        row = describe(recipe, key)
        if row["state"] != "not set":
            lines.append(f"model {key}: {row['state']}: {row['value']}")
    if bakes(recipe):
        fits, line = vram_line(recipe, m)
        lines.append(("ok    " if fits else "SHORT ") + line)
    return lines


def preflight(recipe: Recipe, bake: bool = True) -> list[str]:
    """What stops `bakery run` before it starts (one line each): a disk too small, a bake (when `bake`: the run
    reaches the stage) that will not fit."""
    problems = []
    fits, line = disk_line(recipe)
    if not fits:
        problems.append(line)
    if bake and bakes(recipe):
        m = machine()
        if m.gpu:
            fits, line = vram_line(recipe, m)
            if not fits:
                problems.append(line)
    return problems
