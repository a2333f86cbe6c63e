"""The base-model seam: the one interface the bake asks of a base model, the registry of families, loading a base.

The bake's loop, data, loss, optimizer, saving and resuming know no architecture: everything that depends
on the base model's shape goes through its family (`BaseFamily`), found by its architecture name with
`family_for`. A family here is an architecture (`train.architecture`: SD1.5, SDXL), not a line of
checkpoints of one architecture (bakery/recipe/families.py: pony, illustrious, noobai).

What a new family (a DiT, say) provides: a module under bakery/craft/bake/bases/ with one object, `FAMILY`,
named in `FAMILIES` below, that has every member of `BaseFamily`:

- `name`, `resolution`, `pipeline`: its architecture name, native side, diffusers pipeline class;
- loading: `load` (a single file offline, a diffusers folder, a hub id), `use_vae` (train.vae);
- its parts: `denoiser`, `text_encoders` (what the network may train), `vae`;
- the noisy input and its target: `use_prediction` (sets `Base.prediction`), `noise_schedule` (a
  `NoiseSchedule`: timesteps are indices 0 .. num_train_timesteps - 1 into `alphas_cumprod`, which min-SNR
  and the Huber snr schedule read; a denoiser that takes sigmas converts them in `predict`), `timesteps`
  (drawn from the step's generator), `target`, `encode` (pixels -> latents);
- text and predicting: `text_encoder` (captions -> an opaque conditioning), `predict` (the prediction in the
  latents' layout, (N, C, H, W): the loss, masks and validation work on it);
- the network: `network_parts` (kohya prefixes: the denoiser's is `lora_unet`), `targets` (the modules a
  LoRA wraps and their kohya names);
- rendering: `prompt_kwargs` (taste/xyz.py's renders, regularisation, the trigger check);

and, outside the family's module: its kohya metadata (`ss_base_model_version`, `modelspec.architecture`) in
networks/kohya_lora.py's ARCHITECTURES; its single files recognised by bases/checkpoint.py (`kind_of` gives
its name, `refusal`/`folder_refusal` let it through); its name in the recipe's `train.architecture`.
Optionally a tiny random-weight model for tests (`tiny`: `train.base_model = "tiny"` is SD1.5's).

`load_base` picks the family (the recipe's `train.architecture`, or what the file or folder is), refuses
what no family trains, and asks the family for the pipeline and the VAE.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import checkpoint, sd15, sdxl
from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.precision import Precision

TINY = "tiny"
TINY_ARCHITECTURE = "sd15"  # the tiny model is SD1.5-shaped
HUB_ARCHITECTURE = "sd15"  # a hub id with architecture "auto": nothing to read it from before loading


class NoiseSchedule(Protocol):
    """The forward process the denoiser learns to undo, as the loop reads it (diffusers' DDPMScheduler has it)."""

    config: Any  # .num_train_timesteps: timesteps are 0 .. num_train_timesteps - 1
    alphas_cumprod: Any  # per timestep: the signal's share (SNR = a / (1 - a)), for min-SNR and Huber's snr schedule

    def add_noise(self, latents: Any, noise: Any, timesteps: Any) -> Any:
        """The noised input at `timesteps`."""


class BaseFamily(Protocol):
    """What the bake asks of a base model's family. Modules are torch modules, pipelines diffusers pipelines."""

    name: str  # the architecture: train.architecture, BakeOutput.architecture, the metadata's key
    resolution: int  # its native side in pixels (a slider's default)
    pipeline: str  # its diffusers pipeline class name, as a folder's model_index.json says it

    # -- loading: a single file offline (bases/single_file.py), a diffusers folder or a hub id --
    def load(self, source: str | Path, form: str, **kwargs: Any) -> Any:
        """The pipeline; `form` is "file", "folder" or "hub"; `kwargs` go to diffusers (e.g. `dtype`)."""

    def use_vae(self, pipe: Any, vae: str) -> None:
        """The VAE at `vae` (a single file or a diffusers folder) instead of the pipeline's."""

    # -- its parts --
    def denoiser(self, pipe: Any) -> Any:
        """The module that predicts (SD's UNet; a DiT's transformer)."""

    def text_encoders(self, pipe: Any) -> list[Any]:
        """The text encoders, in the order of their kohya prefixes."""

    def vae(self, pipe: Any) -> Any:
        """The autoencoder between pixels and latents."""

    # -- the noisy input and its target --
    def use_prediction(self, base: Base, v_parameterization: bool | None,
                       zero_terminal_snr: bool | None) -> P.Prediction:
        """What the base predicts (read from it, the recipe's keys on top); the pipeline's sampler takes it on."""

    def noise_schedule(self, base: Base) -> NoiseSchedule:
        """The training noise schedule for `base.prediction`."""

    def timesteps(self, schedule: NoiseSchedule, n: int, gen: Any) -> Any:
        """`n` training timesteps drawn from the CPU generator `gen` (on the CPU)."""

    def target(self, base: Base, schedule: NoiseSchedule, latents: Any, noise: Any, timesteps: Any) -> Any:
        """What the denoiser learns to predict for `latents` noised with `noise` at `timesteps`."""

    def encode(self, vae: Any, pixels: Any, device: str) -> Any:
        """Pixels (N, C, H, W) in [-1, 1] -> the latents the denoiser works on, fp32 on `device` (no gradient)."""

    # -- text and predicting --
    def text_encoder(self, base: Base, clip_skip: int, device: str, cache: bool) -> Callable[[list[str]], Any]:
        """Captions -> their conditioning (one row per caption); `cache`: each distinct caption encoded once."""

    def predict(self, base: Base, prec: Precision, noisy: Any, timesteps: Any, cond: Any,
                sizes: Sequence[tuple[int, int]]) -> Any:
        """The denoiser's prediction for `noisy` at `timesteps`, conditioned on `cond` (from `text_encoder`);
        `sizes`: each row's picture (width, height). Called under the precision's autocast."""

    # -- the network: which modules, under which kohya names --
    def network_parts(self, denoiser: Any, text_encoders: Sequence[Any]) -> list[tuple[str, Any, str]]:
        """(kohya prefix, model, kind) of each model given (the denoiser None: not trained); the denoiser's
        prefix is kohya_lora.UNET_PREFIX."""

    def targets(self, model: Any, kind: str, spec: K.NetworkSpec) -> K.Targets:
        """The modules of `model` a LoRA of `spec` wraps, with the names kohya gives them (`Targets.renames`)."""

    # -- rendering (taste/xyz.py, regularisation, the trigger check) --
    def prompt_kwargs(self, pipe: Any, prompts: list[str], negatives: list[str], clip_skip: int,
                      device: str) -> dict[str, Any]:
        """What the pipeline's call takes for these prompts (embeddings with A1111's clip skip, or the texts)."""


FAMILIES: dict[str, BaseFamily] = {f.name: f for f in (sd15.FAMILY, sdxl.FAMILY)}


def modules() -> list[ModuleType]:
    """The seam's and every family's modules (with the classes they build on): what a stage that loads, trains
    or renders a base runs, for its code version."""
    import sys

    from bakery.craft.bake.bases import single_file

    classes = [c for f in FAMILIES.values() for c in type(f).__mro__ if c.__module__.startswith("bakery.")]
    return list(dict.fromkeys([sys.modules[__name__], checkpoint, P, single_file,
                               *(sys.modules[c.__module__] for c in classes)]))


def family_for(architecture: str) -> BaseFamily:
    """The family of `architecture` ("sd15", "sdxl"); ValueError for one the bake does not know."""
    if architecture not in FAMILIES:
        raise ValueError(f"unknown architecture {architecture!r}: expected {' or '.join(map(repr, FAMILIES))}")
    return FAMILIES[architecture]


@dataclass
class Base:
    pipe: Any
    architecture: str  # a name in FAMILIES
    source: str  # what was loaded (a folder, a file, a hub id)
    prediction: P.Prediction = field(default_factory=P.Prediction)  # set by `use_prediction`

    @property
    def family(self) -> BaseFamily:
        return family_for(self.architecture)


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
        base = Base(family.load(folder, "folder"), family.name, str(folder))
    else:
        try:
            pipe, arch = _pipeline(base_model, Path(base_model).expanduser(), architecture)
        except BakeError:
            raise
        except Exception as exc:  # diffusers' own errors (offline hub, wrong file) say what went wrong
            raise BakeError(f"cannot load train.base_model {base_model!r}: {type(exc).__name__}: {exc}. "
                            "Pass a local .safetensors checkpoint or diffusers folder (or 'tiny')") from exc
        base = Base(pipe, arch, base_model)
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
