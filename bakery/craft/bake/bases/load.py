"""Loading a base: the registry of families (`FAMILIES`, `family_for`), `load_base`, `use_prediction`.

The interface every family provides, and what a new family must bring, is in bases/family.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import anima, checkpoint, sd15, sdxl
from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.bases.family import Base, BaseFamily, BaseFiles

TINY = "tiny"
TINY_ARCHITECTURE = "sd15"  # the tiny model with architecture "auto" is SD1.5-shaped
INDEXES = ("model_index.json", "modular_model_index.json")  # a diffusers folder's (a modular pipeline's)
HUB_ARCHITECTURE = "sd15"  # a hub id with architecture "auto": nothing to read it from before loading

FAMILIES: dict[str, BaseFamily] = {f.name: f for f in (sd15.FAMILY, sdxl.FAMILY, anima.FAMILY)}


def modules() -> list[ModuleType]:
    """The seam's and every family's modules (with the classes they build on): what a stage that loads, trains
    or renders a base runs, for its code version."""
    import importlib
    import pkgutil
    import sys

    from bakery.craft.bake.bases import single_file

    classes = [c for f in FAMILIES.values() for c in type(f).__mro__ if c.__module__.startswith("bakery.")]
    parts = [sys.modules[c.__module__] for c in classes]
    # A family's package counts whole (every module in it, as listed on disk): its attributes would name only the
    # submodules this process happened to import, and the code version would differ from process to process.
    package = [importlib.import_module(f"{p.__name__}.{m.name}") for p in parts if hasattr(p, "__path__")
               for m in pkgutil.iter_modules(p.__path__)]
    helpers = [m for part in parts if not hasattr(part, "__path__")  # the modules a family's parts import
               for m in vars(part).values() if isinstance(m, ModuleType) and m.__name__.startswith(__package__ + ".")]
    return list(dict.fromkeys([sys.modules[__name__], sys.modules[Base.__module__], checkpoint, P, single_file,
                               *parts, *package, *helpers]))


def family_for(architecture: str) -> BaseFamily:
    """The family of `architecture` ("sd15", "sdxl"); ValueError for one the bake does not know."""
    if architecture not in FAMILIES:
        raise ValueError(f"unknown architecture {architecture!r}: expected {' or '.join(map(repr, FAMILIES))}")
    return FAMILIES[architecture]


# --- loading -------------------------------------------------------------------------


def load_base(base_model: str | None, workdir: Path, *, vae: str | None = None, architecture: str = "auto",
              words: Sequence[str] = (), files: BaseFiles = BaseFiles()) -> Base:
    """The base pipeline: `tiny`, a single `.safetensors` checkpoint, a diffusers folder or a hub id; `files`: the
    files named beside it ([train] vae, text_encoder, llm_adapter, t5_tokenizer; `vae` sets files.vae)."""
    if not base_model:
        raise BakeError("train.base_model is not set: pass a .safetensors checkpoint, a diffusers folder, "
                        "a hub id, or 'tiny' (a small random-weight model that proves the pipeline)")
    files = replace(files, vae=vae) if vae else files
    if base_model == TINY:
        family = family_for(TINY_ARCHITECTURE if architecture == "auto" else architecture)
        source, form, own = family.tiny(Path(workdir), words)  # type: ignore[attr-defined]
        files = BaseFiles(**{**own.set(), **files.set()})  # what the recipe names wins over the tiny's own
        return Base(family.load(source, form, files), family, str(source), files)
    try:
        pipe, arch = _pipeline(base_model, Path(base_model).expanduser(), architecture, files)
    except BakeError:
        raise
    except Exception as exc:  # diffusers' own errors (offline hub, wrong file) say what went wrong
        raise BakeError(f"cannot load train.base_model {base_model!r}: {type(exc).__name__}: {exc}. "
                        "Pass a local .safetensors checkpoint or diffusers folder (or 'tiny')") from exc
    return Base(pipe, family_for(arch), base_model, files)


def _pipeline(base_model: str, path: Path, architecture: str, files: BaseFiles) -> tuple[Any, str]:
    """(pipeline, architecture) of a file, a diffusers folder or a hub id; unsupported checkpoints refused."""
    _refuse_unsupported(path, base_model, files)
    if path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise BakeError(f"train.base_model {base_model!r}: expected a .safetensors checkpoint")
        arch = architecture if architecture != "auto" else _file_kind(path, files)
        return family_for(arch).load(path, "file", files), arch  # offline: the configs ship with the package
    if path.is_dir() or not _looks_like_hub_id(base_model):
        index = next((path / n for n in INDEXES if (path / n).exists()), None)
        if index is None:
            raise BakeError(f"train.base_model {base_model!r}: no such file, and not a diffusers folder "
                            "(model_index.json missing)")
        class_name = json.loads(index.read_text()).get("_class_name", "")
        arch = next(f.name for f in FAMILIES.values() if f.pipeline == class_name)  # refused unless one is
        return family_for(arch).load(path, "folder", files), arch
    arch = architecture if architecture != "auto" else HUB_ARCHITECTURE
    return family_for(arch).load(base_model, "hub", files), arch


def _file_kind(path: Path, files: BaseFiles) -> str:
    """What a single file is, from its tensor names (bases/checkpoint.py); a Cosmos DiT with train.llm_adapter
    beside it is Anima's."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        kind = checkpoint.kind_of(f.keys(), lambda k: tuple(f.get_slice(k).get_shape()))
    return "anima" if kind == "cosmos" and files.llm_adapter else kind


def _refuse_unsupported(path: Path, base_model: str, files: BaseFiles) -> None:
    """A file or diffusers folder no family trains: one line saying what it is."""
    if path.is_file() and path.suffix == ".safetensors":
        reason = checkpoint.refusal(_file_kind(path, files), lambda k: _shape(path, k))
    elif path.is_dir() and (path / "model_index.json").exists():
        unet = path / "unet" / "config.json"
        channels = json.loads(unet.read_text()).get("in_channels") if unet.exists() else None
        reason = checkpoint.folder_refusal(json.loads((path / "model_index.json").read_text()).get("_class_name", ""),
                                           channels)
    else:
        return
    if reason:
        raise BakeError(f"train.base_model {base_model!r} is {reason}")


def _shape(path: Path, key: str) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return tuple(f.get_slice(key).get_shape())


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def use_prediction(base: Base, v_parameterization: bool | None = None,
                   zero_terminal_snr: bool | None = None) -> P.Prediction:
    """Epsilon or v-prediction, zero terminal SNR or not, as the base's family reads it (the recipe's keys on
    top); the pipeline's scheduler takes it on (samplers built from its config match), `base.prediction` keeps it."""
    return base.family.use_prediction(base, v_parameterization, zero_terminal_snr)
