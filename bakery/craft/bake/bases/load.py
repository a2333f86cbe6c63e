"""Loading a base: the registry of families (`FAMILIES`, `family_for`), `load_base`, `use_prediction`.

The interface every family provides, and what a new family must bring, is in bases/family.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import anima, checkpoint, sd15, sdxl
from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.bases.family import Base, BaseFamily

TINY = "tiny"
TINY_ARCHITECTURE = "sd15"  # the tiny model is SD1.5-shaped
HUB_ARCHITECTURE = "sd15"  # a hub id with architecture "auto": nothing to read it from before loading

FAMILIES: dict[str, BaseFamily] = {f.name: f for f in (sd15.FAMILY, sdxl.FAMILY, anima.FAMILY)}


def modules() -> list[ModuleType]:
    """The seam's and every family's modules (with the classes they build on): what a stage that loads, trains
    or renders a base runs, for its code version."""
    import sys

    from bakery.craft.bake.bases import single_file

    classes = [c for f in FAMILIES.values() for c in type(f).__mro__ if c.__module__.startswith("bakery.")]
    return list(dict.fromkeys([sys.modules[__name__], sys.modules[Base.__module__], checkpoint, P, single_file,
                               *(sys.modules[c.__module__] for c in classes)]))


def family_for(architecture: str) -> BaseFamily:
    """The family of `architecture` ("sd15", "sdxl"); ValueError for one the bake does not know."""
    if architecture not in FAMILIES:
        raise ValueError(f"unknown architecture {architecture!r}: expected {' or '.join(map(repr, FAMILIES))}")
    return FAMILIES[architecture]


# --- loading -------------------------------------------------------------------------


def load_base(base_model: str | None, workdir: Path, *, vae: str | None = None, architecture: str = "auto",
              words: Sequence[str] = ()) -> Base:
    """The base pipeline: `tiny`, a single `.safetensors` checkpoint, a diffusers folder or a hub id."""
    if not base_model:
        raise BakeError("train.base_model is not set: pass a .safetensors checkpoint, a diffusers folder, "
                        "a hub id, or 'tiny' (a small random-weight model that proves the pipeline)")
    if base_model == TINY:
        family = family_for(TINY_ARCHITECTURE)
        folder = family.tiny(Path(workdir), words)  # type: ignore[attr-defined]
        base = Base(family.load(folder, "folder"), family, str(folder))
    else:
        try:
            pipe, arch = _pipeline(base_model, Path(base_model).expanduser(), architecture)
        except BakeError:
            raise
        except Exception as exc:  # diffusers' own errors (offline hub, wrong file) say what went wrong
            raise BakeError(f"cannot load train.base_model {base_model!r}: {type(exc).__name__}: {exc}. "
                            "Pass a local .safetensors checkpoint or diffusers folder (or 'tiny')") from exc
        base = Base(pipe, family_for(arch), base_model)
    if vae:
        try:
            base.family.use_vae(base.pipe, vae)
        except Exception as exc:
            raise BakeError(f"cannot load train.vae {vae!r}: {type(exc).__name__}: {exc}") from exc
    return base


def _pipeline(base_model: str, path: Path, architecture: str) -> tuple[Any, str]:
    """(pipeline, architecture) of a file, a diffusers folder or a hub id; unsupported checkpoints refused."""
    _refuse_unsupported(path, base_model)
    if path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise BakeError(f"train.base_model {base_model!r}: expected a .safetensors checkpoint")
        arch = architecture if architecture != "auto" else _file_architecture(path)
        return family_for(arch).load(path, "file"), arch  # offline: the configs ship with the package
    if path.is_dir() or not _looks_like_hub_id(base_model):
        if not (path / "model_index.json").exists():
            raise BakeError(f"train.base_model {base_model!r}: no such file, and not a diffusers folder "
                            "(model_index.json missing)")
        class_name = json.loads((path / "model_index.json").read_text()).get("_class_name", "")
        arch = next(f.name for f in FAMILIES.values() if f.pipeline == class_name)  # refused unless one is
        return family_for(arch).load(path, "folder"), arch
    arch = architecture if architecture != "auto" else HUB_ARCHITECTURE
    return family_for(arch).load(base_model, "hub"), arch


def _file_architecture(path: Path) -> str:
    """The family of a single file, from its tensor names (bases/checkpoint.py)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return checkpoint.kind_of(f.keys(), lambda k: tuple(f.get_slice(k).get_shape()))


def _refuse_unsupported(path: Path, base_model: str) -> None:
    """A file or diffusers folder no family trains: one line saying what it is."""
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shape = lambda k: tuple(f.get_slice(k).get_shape())
            reason = checkpoint.refusal(checkpoint.kind_of(f.keys(), shape), shape)
    elif path.is_dir() and (path / "model_index.json").exists():
        unet = path / "unet" / "config.json"
        channels = json.loads(unet.read_text()).get("in_channels") if unet.exists() else None
        reason = checkpoint.folder_refusal(json.loads((path / "model_index.json").read_text()).get("_class_name", ""),
                                           channels)
    else:
        return
    if reason:
        raise BakeError(f"train.base_model {base_model!r} is {reason}")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def use_prediction(base: Base, v_parameterization: bool | None = None,
                   zero_terminal_snr: bool | None = None) -> P.Prediction:
    """Epsilon or v-prediction, zero terminal SNR or not, as the base's family reads it (the recipe's keys on
    top); the pipeline's scheduler takes it on (samplers built from its config match), `base.prediction` keeps it."""
    return base.family.use_prediction(base, v_parameterization, zero_terminal_snr)
