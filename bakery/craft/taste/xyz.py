"""The XYZ plot: epochs x LoRA weights x prompts x seeds, rendered with diffusers, and labelled grids.

The base pipeline is loaded once per evaluation. Each epoch's kohya-format file
(the file users publish) is loaded with diffusers' `load_lora_weights` as a
named adapter, its weight changed in place with `set_adapters` for every
column, and deleted before the next epoch: the base weights are never reloaded.
LoHa/LoKr/IA3/Diag-OFT files (which diffusers refuses), and every file of a family whose diffusers loader
does not read kohya's names (Anima), are merged by `lycoris.MergedNetwork` instead: each weight is a
re-merge of the kept original weights, unloading restores them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.bases.family import BaseFiles, Render
from bakery.craft.bake.bases.load import family_for
from bakery.craft.bake.networks import lycoris

MAX_BATCH = 8  # images per pipeline call

CellKey = tuple[int, float, int, int]  # (epoch, weight, prompt index, seed)


class ModelError(RuntimeError):
    """A base model or LoRA file that cannot be loaded, with what to pass instead."""


def pick_device(device: str = "auto") -> tuple[str, "object"]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("evaluate.device = 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
    if device == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def load_pipeline(base_model: str, architecture: str, device: str = "auto",
                  files: BaseFiles = BaseFiles()) -> tuple[object, str]:
    """The base pipeline from a diffusers folder, a single .safetensors/.ckpt file or a hub id (its family loads it,
    with the `files` the bake loaded it with)."""
    try:
        family = family_for(architecture)
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    _, dtype = pick_device(device)
    path = Path(base_model)
    try:
        if path.is_dir():
            pipe = family.load(path, "folder", files, dtype=dtype)
        elif path.is_file():
            pipe = family.load(path, "file", files, dtype=dtype)
        elif path.suffix in (".safetensors", ".ckpt") or path.is_absolute() or base_model.startswith("."):
            raise ModelError(f"base model {base_model!r} does not exist: pass train.base_model as a diffusers "
                             "folder, a .safetensors checkpoint or a hub id")
        else:
            pipe = family.load(base_model, "hub", files, dtype=dtype)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load base model {base_model!r} ({architecture}): {type(exc).__name__}: {exc}. "
                         "Pass a local diffusers folder or .safetensors file (models cannot be downloaded here)") from exc
    return _placed(pipe, device)


def _placed(pipe: object, device: str) -> tuple[object, str]:
    """The pipeline on `device` in its dtype (bf16/fp16 on CUDA, fp32 on CPU), without progress bars."""
    dev, dtype = pick_device(device)
    pipe.set_progress_bar_config(disable=True)
    return (pipe.to(dev) if pipe.dtype == dtype else pipe.to(dev, dtype)), dev


def _merged_tensors(path: str | Path, every: bool) -> dict | None:
    """The tensors of a file our merge applies: a LoHa/LoKr/IA3/Diag-OFT file, or any file where `every` (a family
    whose diffusers loader reads no kohya names); None for a file diffusers loads (LoRA, LoCon, DoRA, DyLoRA)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if not every and not lycoris.is_lycoris(f.keys()):
            return None
        return {k: f.get_tensor(k) for k in f.keys()}


@dataclass
class Timings:
    load_s: float = 0.0  # loading/unloading LoRA files and setting adapter weights
    render_s: float = 0.0  # text encoding + sampling + decoding
    cells: int = 0  # images rendered

    @property
    def reload_share(self) -> float:
        total = self.load_s + self.render_s
        return self.load_s / total if total else 0.0


class Taster:
    """One loaded base pipeline; LoRA files are swapped in and out of it."""

    def __init__(self, base_model: str, architecture: str, clip_skip: int = 2, sampler: str = "euler_a",
                 device: str = "auto", pipe: object = None, prediction: P.Prediction | None = None,
                 files: BaseFiles = BaseFiles()):
        """`pipe`: an already loaded pipeline of `base_model` (moved to the device), else it is loaded (with `files`).
        `prediction`: epsilon or v, zero terminal SNR or not (None: as the base says); the family builds the
        sampler to match (bases/family.py's `use_sampler`) and renders (`render`)."""
        self.architecture, self.clip_skip = architecture, clip_skip
        self.pipe, self.device = (load_pipeline(base_model, architecture, device, files) if pipe is None
                                  else _placed(pipe, device))
        self.family = family_for(architecture)
        try:
            self.prediction = self.family.use_sampler(self.pipe, sampler, prediction)
        except ValueError as exc:
            raise ModelError(str(exc)) from exc
        self.adapter: str | None = None
        self.merged: lycoris.MergedNetwork | None = None  # a file applied by our own code (LoHa/LoKr, Anima's)
        self.timings = Timings()

    # -- LoRA ---------------------------------------------------------------------------
    def load_lora(self, path: str | Path, name: str) -> None:
        t = time.perf_counter()
        self.unload_lora()
        if not Path(path).is_file():
            raise ModelError(f"LoRA file {path} does not exist")
        try:
            tensors = _merged_tensors(path, not self.family.diffusers_loads_kohya)
            if tensors is not None:
                modules = lycoris.kohya_modules({"unet": self.family.denoiser(self.pipe),
                                                 "te": self.family.text_encoders(self.pipe)}, self.architecture)
                self.merged = lycoris.MergedNetwork(tensors, modules)
            else:
                self.pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:
            raise ModelError(f"cannot load LoRA {path} into the base model: {type(exc).__name__}: {exc}") from exc
        self.adapter = name
        self.timings.load_s += time.perf_counter() - t

    def set_weight(self, weight: float) -> None:
        t = time.perf_counter()
        if self.adapter is None:
            raise RuntimeError("no LoRA loaded")
        if self.merged is not None:
            self.merged.set_weight(float(weight))
        else:
            self.pipe.set_adapters([self.adapter], adapter_weights=[float(weight)])
        self.timings.load_s += time.perf_counter() - t

    def unload_lora(self) -> None:
        if self.adapter is not None:
            t = time.perf_counter()
            if self.merged is not None:
                self.merged.remove()
                self.merged = None
            else:
                self.pipe.delete_adapters(self.adapter)
            self.adapter = None
            self.timings.load_s += time.perf_counter() - t

    # -- rendering ----------------------------------------------------------------------
    def render(self, prompts: Sequence[str], negative: str, seeds: Sequence[int], steps: int, cfg: float,
               width: int, height: int) -> list[np.ndarray]:
        """One image per (prompt, seed), prompt-major; uint8 H x W x 3."""
        return self.render_jobs([(p, s) for p in prompts for s in seeds], negative, steps, cfg, width, height)

    def render_jobs(self, jobs: Sequence[tuple[str, int]], negative: str, steps: int, cfg: float,
                    width: int, height: int) -> list[np.ndarray]:
        """One image per (prompt, seed) job, in order, up to MAX_BATCH per pipeline call; uint8 H x W x 3."""
        import torch

        t = time.perf_counter()
        out: list[np.ndarray] = []
        for i in range(0, len(jobs), MAX_BATCH):
            chunk = jobs[i : i + MAX_BATCH]
            job = Render([p for p, _ in chunk], [negative] * len(chunk),
                         [torch.Generator("cpu").manual_seed(int(s)) for _, s in chunk], steps, cfg, width, height,
                         self.clip_skip, self.device, self.prediction)
            with torch.no_grad():
                images = self.family.render(self.pipe, job)
            out += [(np.clip(np.nan_to_num(im), 0, 1) * 255).round().astype(np.uint8) for im in images]
        self.timings.render_s += time.perf_counter() - t
        self.timings.cells += len(jobs)
        return out


@dataclass
class GridRun:
    images: dict[CellKey, np.ndarray] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    extra: dict[CellKey, np.ndarray] = field(default_factory=dict)  # the extra prompts' images, first seed only


def render_grid(
    taster: Taster,
    files: Mapping[int, str],
    weights: Sequence[float],
    prompts: Sequence[str],
    seeds: Sequence[int],
    negative: str,
    steps: int,
    cfg: float,
    width: int,
    height: int,
    on_cells: Callable[[int], None] | None = None,
    extra_prompts: Sequence[str] = (),
) -> GridRun:
    """Every epoch x weight x prompt x seed. Weight 0 and 1 are always rendered (the effect check needs them).

    `extra_prompts` (e.g. the flexibility judge's) are rendered at the first seed only, in the same
    pipeline calls as the grid's own cells, into `GridRun.extra` (not in the grid's images).
    """
    ws = sorted({float(w) for w in weights} | {0.0, 1.0})
    run = GridRun(timings=taster.timings)
    extra_jobs = [(p, seeds[0]) for p in extra_prompts]
    for epoch in sorted(files):
        taster.load_lora(files[epoch], f"epoch{epoch}")
        for w in ws:
            taster.set_weight(w)
            jobs = [(p, s) for p in prompts for s in seeds]
            imgs = iter(taster.render_jobs(jobs + extra_jobs, negative, steps, cfg, width, height))
            for pi in range(len(prompts)):
                for s in seeds:
                    run.images[(epoch, w, pi, s)] = next(imgs)
            for pi, (_, s) in enumerate(extra_jobs):
                run.extra[(epoch, w, pi, s)] = next(imgs)
            if on_cells:
                on_cells(len(prompts) * len(seeds))
        taster.unload_lora()
    return run


# -- grids --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridLayout:
    image: Image.Image
    labels: list[tuple[str, tuple[int, int, int, int]]]  # text, box (x0, y0, x1, y1)
    cell_size: tuple[int, int]  # one cell (all seeds side by side)
    origin: tuple[int, int]  # top-left of the first cell
    gap: int = 0  # white space between cells

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        return (self.origin[0] + col * (self.cell_size[0] + self.gap), self.origin[1] + row * (self.cell_size[1] + self.gap))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def make_grid(
    images: Mapping[CellKey, np.ndarray],
    epochs: Sequence[int],
    weights: Sequence[float],
    prompt_index: int,
    prompt: str,
    seeds: Sequence[int],
    row_label: str = "epoch",
    col_label: str = "weight",
) -> GridLayout:
    """Rows epochs, columns weights, seeds side by side in a cell; a title with the prompt, like A1111's XYZ plot.

    `row_label`, `col_label`: what a row and a column are called ("step", "strength" for a slider)."""
    sample = images[(epochs[0], float(weights[0]), prompt_index, seeds[0])]
    h, w = sample.shape[:2]
    cell_w, cell_h = w * len(seeds), h
    fs = max(12, min(28, h // 8))
    font = _font(fs)
    left = max(int(fs * 5), 90)
    title_h = fs * 2 + 8
    head_h = fs + 12
    gap = max(2, w // 16)
    width = left + (cell_w + gap) * len(weights) - gap
    height = title_h + head_h + (cell_h + gap) * len(epochs) - gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    labels: list[tuple[str, tuple[int, int, int, int]]] = []

    def text(s: str, x: int, y: int) -> None:
        box = draw.textbbox((x, y), s, font=font)
        draw.text((x, y), s, fill="black", font=font)
        labels.append((s, box))

    title = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    text(title, 6, 4)
    text(f"seeds {', '.join(map(str, seeds))}", 6, 4 + fs + 2)
    for c, wt in enumerate(weights):
        text(f"{col_label} {float(wt):g}", left + c * (cell_w + gap) + 4, title_h + 4)
    for r, ep in enumerate(epochs):
        y0 = title_h + head_h + r * (cell_h + gap)
        text(f"{row_label} {ep}", 6, y0 + cell_h // 2 - fs // 2)
        for c, wt in enumerate(weights):
            for k, s in enumerate(seeds):
                img = Image.fromarray(images[(ep, float(wt), prompt_index, s)])
                canvas.paste(img, (left + c * (cell_w + gap) + k * w, y0))
    return GridLayout(canvas, labels, (cell_w, cell_h), (left, title_h + head_h), gap)
