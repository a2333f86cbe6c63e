"""The base-model seam: the one interface the bake asks of a base model, the registry of families, loading a base.

The bake's loop, data, loss, optimizer, saving and resuming know no architecture: everything that depends
on the base model's shape goes through its family (`BaseFamily`), found by its architecture name with
`family_for`. A family here is an architecture (`train.architecture`: SD1.5, SDXL), not a line of
checkpoints of one architecture (bakery/recipe/families.py: pony, illustrious, noobai).

What a new family (a DiT, say) provides: a module under bakery/craft/bake/bases/ with one object, `FAMILY`,
named in `FAMILIES` (bases/load.py), that has every member of `BaseFamily`:

- `name`, `resolution`, `pipeline`: its architecture name, native side, diffusers pipeline class;
- loading: `load` (a single file offline, a diffusers folder, a hub id, with the base's other files: a
  `BaseFiles`), `use_vae` (train.vae);
- its parts: `denoiser`, `text_encoders` (what the network may train), `vae`, `conditioners` (modules that
  run with the denoiser every step, frozen with it: Anima's LLM adapter; none for SD);
- the noisy input and its target: `use_prediction` (sets `Base.prediction`), `noise_schedule` (a
  `NoiseSchedule` built with the recipe's `TimestepSampling`: DDPM's timesteps are indices 0 ..
  num_train_timesteps - 1 into `alphas_cumprod`, which min-SNR and the Huber snr schedule read; rectified
  flow's (bases/flow.py) are sigma * num_train_timesteps with no `alphas_cumprod`, and the bake refuses
  those two settings; a denoiser that takes sigmas converts them in `predict`), `timesteps` (drawn from the
  step's generator, knowing the latents' size), `target`, `encode` (pixels -> latents), `fp16` (whether fp16
  mixed precision is safe: when not, the bake refuses it and `auto` falls back to fp32 without bf16);
- text and predicting: `text_encoder` (captions -> an opaque conditioning; given every caption the bake will
  ask for, it may encode them at once and unload the text encoder), `predict` (the prediction in the
  latents' layout, (N, C, H, W): the loss, masks and validation work on it);
- the network: `network_parts` (kohya prefixes: the denoiser's is `lora_unet`), `targets` (the modules a
  LoRA wraps and their kohya names);
- rendering (taste/xyz.py's `Taster`, through which the grids, regularisation and the trigger check all draw):
  `use_sampler` (the recipe's sampler name -> the pipeline's scheduler, or a one-line refusal) and `render` (one
  pipeline call for a `Render`: prompts, negatives, one seeded generator per image, steps, CFG, size -> pixels),
  `diffusers_loads_kohya` (False: taste applies our LoRA files with networks/lycoris.py's merge, by `targets`' names,
  and the family has `write_diffusers_form(kohya_file) -> Path`: the file in the names diffusers and ComfyUI
  read, written beside it, for `bakery diffusers-form`);

and, outside the family's module: its kohya metadata (`ss_base_model_version`, `modelspec.architecture`) in
networks/kohya_lora.py's ARCHITECTURES; its single files recognised by bases/checkpoint.py (`kind_of` gives
its name, `refusal`/`folder_refusal` let it through); its name in the recipe's `train.architecture` (and, for
a base sampled by rectified flow, in bakery/recipe/families.py's FLOW_ARCHITECTURES: its samplers are checked
when the recipe is read).
Optionally a tiny random-weight model for tests (`tiny(workdir, words)` -> (source, form, `BaseFiles`): what
`load` takes; `train.base_model = "tiny"` is SD1.5's, or the family's named by `train.architecture`).

The registry of families and `load_base` (which picks the family from the recipe's `train.architecture`, or
from what the file or folder is, refuses what no family trains, and asks the family for the pipeline and the
VAE) are in bases/load.py: this module is the interface alone, so a family's module can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.precision import Precision


@dataclass(frozen=True)
class TimestepSampling:
    """How a rectified-flow base draws its training timesteps (the recipe's train.timestep_sampling,
    discrete_flow_shift, sigmoid_scale; bases/flow.py). DDPM bases draw uniformly and ignore it."""

    method: str = "sigmoid"  # sigma | uniform | sigmoid | shift | flux_shift
    shift: float = 1.0
    sigmoid_scale: float = 1.0


class NoiseSchedule(Protocol):
    """The forward process the denoiser learns to undo, as the loop reads it (diffusers' DDPMScheduler has it)."""

    config: Any  # .num_train_timesteps: timesteps are 0 .. num_train_timesteps - 1 (flow: floats in [0, that])
    # per timestep: the signal's share (SNR = a / (1 - a)), for min-SNR and Huber's snr schedule; None: no SNR
    # table (rectified flow), and the bake refuses those settings
    alphas_cumprod: Any

    def add_noise(self, latents: Any, noise: Any, timesteps: Any) -> Any:
        """The noised input at `timesteps`."""

    # Optional: `metadata() -> dict[str, str]`, the `ss_*` keys of how it samples (bases/flow.py's FlowSchedule,
    # as sd-scripts' flow trainers write them); written into every LoRA file the bake saves.


@dataclass(frozen=True)
class BaseFiles:
    """The files a base loads with besides `train.base_model`, by their [train] keys (None: not set): the VAE, and
    for a base whose parts ship apart (Anima) its text encoder, LLM adapter and T5 tokenizer."""

    vae: str | None = None
    text_encoder: str | None = None
    llm_adapter: str | None = None
    t5_tokenizer: str | None = None

    @classmethod
    def of(cls, source: Any) -> BaseFiles:
        """From [train] (TrainParams) or a stage's params dict: the keys it has."""
        get = source.get if isinstance(source, Mapping) else lambda k: getattr(source, k, None)
        return cls(**{f.name: get(f.name) for f in fields(cls)})

    def set(self) -> dict[str, str]:
        """The keys that are set (what a params JSON, a cache key or the bake's output records)."""
        return {k: v for k, v in asdict(self).items() if v}


class BaseFamily(Protocol):
    """What the bake asks of a base model's family. Modules are torch modules, pipelines diffusers pipelines."""

    name: str  # the architecture: train.architecture, BakeOutput.architecture, the metadata's key
    resolution: int  # its native side in pixels (a slider's default)
    pipeline: str  # its diffusers pipeline class name, as a folder's model_index.json says it
    fp16: bool  # fp16 mixed precision is safe for it (False: refused; `auto` picks bf16, else fp32)

    # -- loading: a single file offline (bases/single_file.py), a diffusers folder or a hub id --
    def load(self, source: str | Path, form: str, files: BaseFiles = BaseFiles(), **kwargs: Any) -> Any:
        """The pipeline; `form` is "file", "folder" or "hub"; `files`: the VAE and other parts named beside the
        base (a missing one it needs: a BakeError naming its recipe key); `kwargs` go to diffusers (e.g. `dtype`)."""

    def use_vae(self, pipe: Any, vae: str) -> None:
        """The VAE at `vae` (a single file or a diffusers folder) instead of the pipeline's."""

    # -- its parts --
    def denoiser(self, pipe: Any) -> Any:
        """The module that predicts (SD's UNet; a DiT's transformer)."""

    def text_encoders(self, pipe: Any) -> list[Any]:
        """The text encoders, in the order of their kohya prefixes."""

    def vae(self, pipe: Any) -> Any:
        """The autoencoder between pixels and latents."""

    def conditioners(self, pipe: Any) -> list[Any]:
        """Modules between the text encoders and the denoiser that run every step (Anima's LLM adapter): frozen
        on the device in the weight dtype, checkpointed and in train mode with the denoiser."""

    # -- the noisy input and its target --
    def use_prediction(self, base: Base, v_parameterization: bool | None,
                       zero_terminal_snr: bool | None) -> P.Prediction:
        """What the base predicts (read from it, the recipe's keys on top); the pipeline's sampler takes it on."""

    def noise_schedule(self, base: Base, sampling: TimestepSampling) -> NoiseSchedule:
        """The training noise schedule for `base.prediction`, drawing timesteps as `sampling` says."""

    def timesteps(self, schedule: NoiseSchedule, n: int, gen: Any, size: tuple[int, int]) -> Any:
        """`n` training timesteps drawn from the CPU generator `gen` (on the CPU); `size`: the latents' (h, w)."""

    def target(self, base: Base, schedule: NoiseSchedule, latents: Any, noise: Any, timesteps: Any) -> Any:
        """What the denoiser learns to predict for `latents` noised with `noise` at `timesteps`."""

    def encode(self, vae: Any, pixels: Any, device: str) -> Any:
        """Pixels (N, C, H, W) in [-1, 1] -> the latents the denoiser works on, fp32 on `device` (no gradient)."""

    # -- text and predicting --
    def text_encoder(self, base: Base, clip_skip: int, device: str, cache: bool,
                     captions: Sequence[str] = ()) -> Callable[[list[str]], Any]:
        """Captions -> their conditioning (one row per caption); `cache`: each distinct caption encoded once.
        `captions` (with `cache`): every caption the bake will ask for, when known ahead (no caption
        augmentation); a family may encode them now and unload its text encoder (sd-scripts'
        --cache_text_encoder_outputs)."""

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

    # -- rendering (taste/xyz.py's Taster: the grids, regularisation, the trigger check) --
    diffusers_loads_kohya: bool  # the pipeline's `load_lora_weights` reads kohya's LoRA names (else: our merge)

    def use_sampler(self, pipe: Any, sampler: str, prediction: P.Prediction | None) -> Any:
        """The pipeline samples with the recipe's `sampler` ("euler_a", ...) from now on; a name the family
        cannot sample with is a ValueError of one line. `prediction`: how the LoRA was trained (None: as the
        base says). Returns what `Render.prediction` carries (its `describe()` is the report's line)."""

    def render(self, pipe: Any, job: Render) -> list[Any]:
        """One pipeline call: an image per prompt, float H x W x 3 in [0, 1], in the prompts' order."""


@dataclass(frozen=True)
class Render:
    """One pipeline call of taste, regularisation or the trigger check: a batch of images, one per prompt."""

    prompts: Sequence[str]
    negatives: Sequence[str]
    generators: Sequence[Any]  # one CPU torch.Generator per image, seeded with the image's seed
    steps: int
    cfg: float  # classifier-free guidance scale
    width: int
    height: int
    clip_skip: int
    device: str
    prediction: Any  # what `use_sampler` returned


@dataclass
class Base:
    """A loaded base model: its pipeline, the family that knows it, where it came from, what it predicts."""

    pipe: Any
    family: BaseFamily
    source: str  # what was loaded (a folder, a file, a hub id)
    files: BaseFiles = field(default_factory=BaseFiles)  # what was loaded with it (taste loads the same)
    prediction: P.Prediction = field(default_factory=P.Prediction)  # set by `use_prediction`

    @property
    def architecture(self) -> str:  # a name in bases/load.py's FAMILIES
        return self.family.name
