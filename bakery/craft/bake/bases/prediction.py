"""What the base model predicts: noise (epsilon) or velocity (v), and whether its schedule has zero terminal SNR.

SD2.x 768 and v-prediction SDXL models (NoobAI-XL V-Pred) are trained to predict the velocity
v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0, most of them on a noise schedule rescaled
so the last timestep is pure noise (zero terminal SNR, Lin et al. 2023). Training such a model
with the noise target, or sampling it with an epsilon scheduler, gives garbage. kohya's flags
are `--v_parameterization` and `--zero_terminal_snr`.

Where it is read from: a single-file checkpoint's marker keys (`v_pred`, `ztsnr`: empty tensors
that NoobAI-style checkpoints carry and ComfyUI/reForge read) or its `modelspec.prediction_type`
metadata; a diffusers folder's scheduler config (`prediction_type`, `rescale_betas_zero_snr`);
a LoRA file's `ss_v_parameterization` / `ss_zero_terminal_snr` metadata. The recipe
(`train.v_parameterization`, `train.zero_terminal_snr`) overrides what is found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
# diffusers recommends CFG rescale with zero terminal SNR (Lin et al. §3.4): it keeps the images from over-exposing.
GUIDANCE_RESCALE = 0.7


class PredictionError(ValueError):
    """A prediction setting that cannot work, with the recipe key to set."""


@dataclass(frozen=True)
class Prediction:
    v_pred: bool = False
    zero_snr: bool = False
    source: str = "default"  # where it was read: "checkpoint keys", "checkpoint metadata", "scheduler config", ...

    @property
    def prediction_type(self) -> str:
        """diffusers' name: `v_prediction` or `epsilon`."""
        return "v_prediction" if self.v_pred else "epsilon"

    def describe(self) -> str:
        kind = "v-prediction" if self.v_pred else "epsilon (noise) prediction"
        return kind + (" with zero terminal SNR" if self.zero_snr else "") + f" (from {self.source})"


def from_checkpoint(keys: Iterable[str], metadata: Mapping[str, str] | None = None) -> Prediction | None:
    """A single file's marker keys (`v_pred`, `ztsnr`) or its modelspec metadata; None when it says nothing."""
    keys = set(keys)
    if V_PRED_KEY in keys or ZTSNR_KEY in keys:
        return Prediction(V_PRED_KEY in keys, ZTSNR_KEY in keys, "checkpoint keys")
    spec = (metadata or {}).get("modelspec.prediction_type", "")
    if spec in ("v", "v_prediction", "epsilon"):
        return Prediction(spec != "epsilon", False, "checkpoint metadata")
    return None


def from_scheduler_config(config: Mapping[str, Any]) -> Prediction:
    """A diffusers scheduler config (a folder's `scheduler/scheduler_config.json`, or a loaded pipeline's)."""
    v = config.get("prediction_type", "epsilon") == "v_prediction"
    z = bool(config.get("rescale_betas_zero_snr", False))
    return Prediction(v, z, "scheduler config" if v or z else "default")


def from_lora_metadata(meta: Mapping[str, str]) -> Prediction | None:
    """How a LoRA file was trained (our files and kohya's): evaluate it with the same. None: it does not say."""
    if not any(k in meta for k in ("ss_v_parameterization", "ss_zero_terminal_snr", "modelspec.prediction_type")):
        return None
    v = meta.get("ss_v_parameterization", "False") == "True" or meta.get("modelspec.prediction_type") == "v"
    return Prediction(v, meta.get("ss_zero_terminal_snr", "False") == "True", "LoRA metadata")


def read_checkpoint(path: Path) -> Prediction | None:
    """The marker keys and metadata of a `.safetensors` file (None for other files, or when it says nothing)."""
    if Path(path).suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return from_checkpoint(f.keys(), f.metadata())


def resolve(found: Prediction, v_parameterization: bool | None, zero_terminal_snr: bool | None) -> Prediction:
    """What the model found says, with the recipe's keys (None = as found) on top."""
    if v_parameterization is None and zero_terminal_snr is None:
        pred = found
    else:
        pred = Prediction(found.v_pred if v_parameterization is None else v_parameterization,
                          found.zero_snr if zero_terminal_snr is None else zero_terminal_snr,
                          "recipe" if found.source == "default" else f"recipe over {found.source}")
    if pred.zero_snr and not pred.v_pred:
        raise PredictionError("zero terminal SNR needs v-prediction (an epsilon model cannot predict pure noise): "
                              "set train.v_parameterization = true, or train.zero_terminal_snr = false")
    return pred


def training_overrides(pred: Prediction) -> dict[str, Any]:
    """What the training noise scheduler (DDPMScheduler.from_config) takes on top of the base's config."""
    return {"prediction_type": pred.prediction_type, "rescale_betas_zero_snr": pred.zero_snr}


def sampling_overrides(pred: Prediction) -> dict[str, Any]:
    """What a sampler takes on top of the base's config: diffusers' recipe for zero terminal SNR is
    rescaled betas + `trailing` timesteps (the first step starts at pure noise) + CFG rescale."""
    out: dict[str, Any] = {"prediction_type": pred.prediction_type, "rescale_betas_zero_snr": pred.zero_snr}
    if pred.zero_snr:
        out["timestep_spacing"] = "trailing"
    return out


def target(noise_sched: Any, latents: Any, noise: Any, timesteps: Any, pred: Prediction) -> Any:
    """The training target: the noise, or the velocity (diffusers' `get_velocity`) for v-prediction."""
    if not pred.v_pred:
        return noise
    return noise_sched.get_velocity(latents, noise, timesteps)


def metadata(pred: Prediction) -> dict[str, str]:
    """kohya's keys: `ss_v_parameterization`, `ss_zero_terminal_snr`; the model spec's `prediction_type` (v | epsilon)."""
    return {"ss_v_parameterization": str(pred.v_pred), "ss_zero_terminal_snr": str(pred.zero_snr),
            "modelspec.prediction_type": "v" if pred.v_pred else "epsilon"}
