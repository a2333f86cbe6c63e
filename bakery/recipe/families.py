"""Base-model families (`train.family`): the settings a family of checkpoints wants, as recipe defaults.

A family fills the keys the recipe leaves out, in every section it touches (a key the recipe
writes always wins). The SDXL families share the guide's SDXL advice (rules.md §8, §12):
1024 px buckets and evaluation, x1/2 steps (`repeats.sdxl`), and the UNet alone when the
optimizer is Prodigy (it overtrains the SDXL text encoder). On top:

- pony: Pony Diffusion V6 XL and its merges. Its model card asks for clip skip 2 and its score
  tags at the head of every prompt; they go at the head of every caption too (kept in place
  through shuffling by `train.keep_tokens`, raised to cover them) and of every evaluation prompt.
- illustrious, noobai: Illustrious-XL and NoobAI-XL (epsilon) checkpoints, clip skip 2.
- noobai_vpred: NoobAI-XL V-Pred: v-prediction with zero terminal SNR (also detected from the
  checkpoint's `v_pred`/`ztsnr` keys; the family makes it explicit).

SDXL conditions on the penultimate text-encoder layer whatever the clip skip (kohya's SDXL
training does the same), so for SDXL `train.clip_skip` is what the metadata tells users to
generate with.

`train.architecture = "sdxl"` with no family gets the same SDXL advice as the `sdxl` family: the guide's
SDXL rules follow the architecture, not the name the recipe gives it. So does `train.architecture = "anima"`
(the `anima` family: sd-scripts' Anima guide where rules.md is silent, each key with its source below).
"""

from __future__ import annotations

import copy
from typing import Any

PONY_SCORE_TAGS = ["score_9", "score_8_up", "score_7_up", "score_6_up", "score_5_up", "score_4_up"]

_SDXL: dict[str, dict[str, Any]] = {
    "train": {"architecture": "sdxl", "clip_skip": 2},
    "buckets": {"resolution": 1024, "max_side": 2048},
    "repeats": {"sdxl": True},
    "evaluate": {"width": 1024, "height": 1024},
}


# Anima (circlestone-labs): a DiT at 1024 trained with rectified flow. Where the guide (rules.md) is silent, sd-scripts'
# Anima guide (docs/anima_train_network.md, its example command) and trainer (anima_train_network.py) decide.
# The guide's network, optimizer, learning rates, repeats and epochs stay (rules.md §8, §12); its SDXL x1/2 steps rule
# names SDXL only, so Anima keeps the full steps.
_ANIMA: dict[str, dict[str, Any]] = {
    "train": {
        "architecture": "anima",
        # sd-scripts' guide: --timestep_sampling="sigmoid" --discrete_flow_shift=1.0 (sigmoid_scale default 1.0)
        "timestep_sampling": "sigmoid", "discrete_flow_shift": 1.0, "sigmoid_scale": 1.0,
        # sd-scripts' Anima trainer never applies min-SNR (post_process_loss returns the loss unchanged)
        "min_snr_gamma": 0.0,
        # sd-scripts' guide caches Qwen3's outputs (--cache_text_encoder_outputs), which its trainer refuses with a
        # text-encoder network: Qwen3 stays frozen
        "train_text_encoder": False,
        # sd-scripts' guide: --gradient_checkpointing --cache_latents (bf16: `auto`, fp16 is refused for Anima)
        "gradient_checkpointing": True, "cache_latents": True,
    },
    "buckets": {"resolution": 1024, "max_side": 2048},  # sd-scripts' guide: 1024 px
    # Renders: the model card (circlestone-labs/Anima) asks for ~1 MP, 30-50 steps, CFG 4-5, and names euler_a
    # among its samplers (the recipe's default); the trigger check keeps its few steps (it renders many).
    "evaluate": {"width": 1024, "height": 1024, "steps": 30, "cfg_scale": 4.0},
    "regularisation": {"steps": 30, "cfg_scale": 4.0},
    "trigger_check": {"cfg_scale": 4.0},
}
# What a rectified-flow base samples with (bases/anima/rendering.py maps them onto flow-match Euler).
FLOW_ARCHITECTURES, FLOW_SAMPLERS = ("anima",), ("euler_a", "euler")


def _with(base: dict[str, dict[str, Any]], **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


FAMILIES: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "sdxl": _SDXL,
    "pony": _with(_SDXL, captions={"prefix_tags": PONY_SCORE_TAGS},
                  evaluate={"prompt_prefix": ", ".join(PONY_SCORE_TAGS)},
                  train={"keep_tokens": 1 + len(PONY_SCORE_TAGS)}),
    "illustrious": _SDXL,
    "noobai": _SDXL,
    "noobai_vpred": _with(_SDXL, train={"v_parameterization": True, "zero_terminal_snr": True}),
    "anima": _ANIMA,
}


def apply_family(data: Any, profiles: dict[str, dict[str, Any]]) -> Any:
    """The raw recipe with its family's defaults under the keys it leaves out. `profiles`: the train
    profiles (a profile's optimizer counts when deciding UNet-only)."""
    if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
        return data
    family = data["train"].get("family", "none")
    if family == "none" and data["train"].get("architecture") in ("sdxl", "anima"):
        family = data["train"]["architecture"]  # a base named by architecture alone: the same advice
    if family not in FAMILIES or family == "none":
        return data
    out = dict(data)
    for section, defaults in FAMILIES[family].items():
        given = out.get(section) if isinstance(out.get(section), dict) else {}
        out[section] = {**copy.deepcopy(defaults), **given}
    train = out["train"]
    optimizer = train.get("optimizer") or profiles.get(train.get("profile", "none"), {}).get("optimizer", "prodigy")
    if optimizer == "prodigy" and "train_text_encoder" not in train:
        train["train_text_encoder"] = False  # rules.md §12: Prodigy overtrains the SDXL text encoder
    return out
