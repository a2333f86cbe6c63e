"""The recipe's bake sections: [train] with its profiles and network defaults, and [regularisation]."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from bakery.recipe.base import NAME_PATTERN, _Section

# Named profiles (rules.md §12): the fields they set, unless the recipe sets them itself.
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "none": {},
    # SD1.5 on an 8 GB card: batch 2, fp16/bf16, gradient checkpointing (needed for DoRA), cached latents.
    "sd15_8gb": {"batch_size": 2, "mixed_precision": "auto", "gradient_checkpointing": True, "cache_latents": True},
    # SDXL/Pony on 12 GB at 1024: gradient checkpointing, UNet only with Prodigy (it overtrains the SDXL TE).
    "sdxl_12gb": {"batch_size": 1, "mixed_precision": "auto", "gradient_checkpointing": True, "cache_latents": True,
                  "optimizer": "prodigy", "train_text_encoder": False},
    # A large GPU (24 GB+): bigger batches, no checkpointing.
    "large_gpu": {"batch_size": 4, "mixed_precision": "auto", "gradient_checkpointing": False, "cache_latents": True},
}


# rules.md §12: the dim/alpha of these networks when the recipe leaves them out (DyLoRA 64/32, Diag-OFT dim 2).
NETWORK_DEFAULTS: dict[str, dict[str, Any]] = {"dylora": {"network_dim": 64, "network_alpha": 32.0},
                                               "diag-oft": {"network_dim": 2}}
IA3_LR = (5e-3, 1e-2)  # rules.md §12: IA3's learning rate with AdamW (Prodigy: 1)
LOKR_LR = (5e-5, 8e-5)  # rules.md §12: LoKr's learning rate (AdamW/CAME; the default is the low end)
LR_PER_DOUBLING = 1.2  # rules.md §12: lr x1.2 per doubling of the batch size
DYLORA_UNIT = 4  # rules.md §12 (bakery/craft/bake/networks/lycoris_net.py trains in units of this many ranks)


def _check_lycoris_network(t: Any) -> None:
    """rules.md §12's numbers for IA3, DyLoRA and Diag-OFT."""
    if t.network_type == "dylora" and t.network_dim % DYLORA_UNIT:
        raise ValueError(f"network_dim must be a multiple of {DYLORA_UNIT} (the DyLoRA unit) for dylora, "
                         f"got {t.network_dim}")
    if t.network_type == "diag-oft" and t.network_dim != 2:
        raise ValueError(f"network_dim must be 2 for diag-oft (rules.md §12: 1-2; LyCORIS's dim is the block size "
                         f"and 1x1 blocks cannot rotate), got {t.network_dim}")
    lr = t.learning_rate
    if t.network_type == "ia3" and t.optimizer != "prodigy" and lr is not None and not IA3_LR[0] <= lr <= IA3_LR[1]:
        raise ValueError(f"learning_rate must be between {IA3_LR[0]} and {IA3_LR[1]} for ia3 with {t.optimizer} "
                         f"(rules.md §12), got {lr}")


class TrainParams(_Section):
    # A named profile fills the fields the recipe leaves out (see TRAIN_PROFILES).
    profile: Literal["none", "sd15_8gb", "sdxl_12gb", "large_gpu"] = "none"
    # The base model's family fills the keys the recipe leaves out, in every section (bakery/recipe/families.py):
    # sdxl, pony, illustrious, noobai: SDXL at 1024, clip skip 2, x1/2 steps, UNet only with Prodigy;
    # pony adds its score tags to captions and evaluation prompts; noobai_vpred adds v-prediction + zero terminal SNR.
    # anima: the Anima DiT (circlestone-labs) at 1024, where rules.md is silent as sd-scripts' Anima guide
    # (docs/anima_train_network.md) and trainer: timestep_sampling sigmoid, discrete_flow_shift 1, gradient
    # checkpointing and cached latents (its example command), train_text_encoder false (it caches Qwen3's outputs),
    # min_snr_gamma 0 (anima_train_network.py applies no min-SNR); full steps (rules.md's x1/2 is for SDXL); renders
    # (evaluate, regularisation, trigger check) at CFG 4 and 30 steps as its model card asks, sampler euler_a or
    # euler only (flow-match Euler). architecture = "anima" alone gets the same.
    family: Literal["none", "sdxl", "pony", "illustrious", "noobai", "noobai_vpred", "anima"] = "none"
    # A .safetensors checkpoint, a diffusers folder, a hub id, or "tiny" (small random-weight SD1.5 shape, or
    # Anima's with architecture/family anima: proves the pipeline, not image quality).
    base_model: str | None = None
    vae: str | None = None  # optional external VAE (file or diffusers folder); Anima: the Qwen-Image VAE file
    architecture: Literal["auto", "sd15", "sdxl", "anima"] = "auto"
    # A base whose text encoder is a file of its own (Anima: Qwen3-0.6B, a transformers folder or one
    # .safetensors file; sd-scripts' --qwen3). None: the base's folder or hub id has it.
    text_encoder: str | None = None
    # Anima's LLM adapter when it is not inside the DiT file (sd-scripts' --llm_adapter_path); None: inside.
    llm_adapter: str | None = None
    # Anima's T5 tokenizer folder (sd-scripts' --t5_tokenizer_path); None: google/t5-v1_1-xxl's from the hub cache.
    t5_tokenizer: str | None = None
    # Rectified-flow bases (Anima): how training timesteps are drawn, as sd-scripts' --timestep_sampling
    # (sigma, uniform, sigmoid, shift, flux_shift); default sigmoid (sd-scripts' Anima guide). Ignored by SD1.5/SDXL.
    timestep_sampling: Literal["sigma", "uniform", "sigmoid", "shift", "flux_shift"] = "sigmoid"
    discrete_flow_shift: Annotated[float, Field(gt=0)] = 1.0  # sd-scripts' --discrete_flow_shift (Anima guide: 1.0)
    sigmoid_scale: Annotated[float, Field(gt=0)] = 1.0  # sd-scripts' --sigmoid_scale (Anima guide: 1.0)
    output_name: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None  # None: project.name
    clip_skip: Literal[1, 2] = 2
    # v-prediction (kohya --v_parameterization) and zero terminal SNR (--zero_terminal_snr); None: as the base
    # model says (a checkpoint's `v_pred`/`ztsnr` keys or modelspec, a diffusers folder's scheduler config).
    v_parameterization: bool | None = None
    zero_terminal_snr: bool | None = None
    # ia3, dylora, diag-oft: LyCORIS's modules (rules.md §12); left out, dylora's dim/alpha are 64/32, diag-oft's dim 2.
    network_type: Literal["lora", "locon", "dora", "loha", "lokr", "ia3", "dylora", "diag-oft"] = "lora"
    network_dim: Annotated[int, Field(gt=0)] = 32
    network_alpha: Annotated[float, Field(gt=0)] = 16.0
    conv_dim: Annotated[int, Field(gt=0, le=64)] = 16
    conv_alpha: Annotated[float, Field(gt=0)] = 8.0
    train_unet: bool = True
    train_text_encoder: bool = True
    epochs: Annotated[int, Field(gt=0)] = 8
    batch_size: Annotated[int, Field(gt=0)] = 1
    optimizer: Literal["prodigy", "adamw", "adamw8bit", "came"] = "prodigy"
    # None: the guide's default for the optimizer (Prodigy 1.0, AdamW 1e-4; IA3 with AdamW/CAME 5e-3, LoKr 5e-5).
    learning_rate: Annotated[float, Field(gt=0)] | None = None
    # rules.md §12: lr x1.2 per doubling of the batch size. The rates written here (and the defaults) are for batch
    # size 1 and are scaled for AdamW/CAME (batch 4: x1.44); Prodigy's lr multiplies its own estimate and stays as
    # written. false: the rates as written.
    lr_batch_scaling: bool = True
    unet_lr: Annotated[float, Field(gt=0)] | None = None  # None: learning_rate
    text_encoder_lr: Annotated[float, Field(gt=0)] | None = None  # None: learning_rate
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    d_coef: Annotated[float, Field(gt=0)] = 1.0  # Prodigy
    # None: cosine with restarts for AdamW, cosine for Prodigy, REX for CAME (rules.md §12).
    lr_scheduler: Literal["constant", "cosine", "cosine_with_restarts", "rex"] | None = None
    lr_restarts: Annotated[int, Field(ge=0)] = 1
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    loss_type: Literal["l2", "huber", "smooth_l1"] = "l2"
    huber_schedule: Literal["snr", "exponential", "constant"] = "snr"
    huber_c: Annotated[float, Field(gt=0, le=1)] = 0.1
    # Rectified-flow bases (anima) have no SNR per timestep: min_snr_gamma must be 0 and huber_schedule not 'snr'.
    min_snr_gamma: Annotated[float, Field(ge=0, le=10)] = 5.0
    noise_offset: Annotated[float, Field(ge=0)] = 0.0
    multires_noise_iterations: Annotated[int, Field(ge=0)] = 0
    multires_noise_discount: Annotated[float, Field(gt=0, le=1)] = 0.3
    ip_noise_gamma: Annotated[float, Field(ge=0)] = 0.0
    masked_loss: bool = True  # use the masks stage's masks where an image has one
    prior_loss_weight: Annotated[float, Field(ge=0)] = 1.0  # regularisation images
    # Tags at the head of every caption that shuffling never moves. The bake keeps at least every trigger of the
    # picture's folder and the prefix tags there (as export-kohya's keep_tokens per folder); a larger value keeps more.
    keep_tokens: Annotated[int, Field(ge=0)] = 1
    shuffle_caption: bool = True
    caption_dropout_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    tag_dropout_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    token_warmup_min: Annotated[int, Field(ge=1)] = 1
    token_warmup_step: Annotated[int, Field(ge=0)] = 0  # 0: off
    flip_aug: bool = False  # only for symmetric characters
    cache_latents: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 if supported, else fp16 (anima: fp32, fp16 is not shown safe for it and refused); fp32 on CPU
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool | None = None  # None: on with CUDA
    save_precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    seed: int = 42
    save_every_n_epochs: Annotated[int, Field(gt=0)] = 1

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("profile") in TRAIN_PROFILES:
            return {**TRAIN_PROFILES[data["profile"]], **data}
        return data

    @model_validator(mode="before")
    @classmethod
    def _network_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("network_type") in NETWORK_DEFAULTS:
            return {**NETWORK_DEFAULTS[data["network_type"]], **data}
        return data

    @model_validator(mode="after")
    def _combinations(self) -> "TrainParams":
        if self.network_type in ("loha", "lokr") and self.network_dim > 32:
            raise ValueError(f"network_dim must be <= 32 for {self.network_type} (rules.md §12), got {self.network_dim}")
        _check_lycoris_network(self)
        if self.network_type == "dora" and self.optimizer == "adamw8bit":
            raise ValueError("dora with adamw8bit is not supported: use adamw or prodigy")
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("train_unet and train_text_encoder are both false: nothing to train")
        if self.device == "cpu" and self.optimizer == "adamw8bit":
            raise ValueError("optimizer adamw8bit needs CUDA (bitsandbytes), but device is 'cpu': use adamw")
        if self.device == "cpu" and self.mixed_precision in ("fp16", "bf16"):
            raise ValueError(f"mixed_precision {self.mixed_precision} needs CUDA, but device is 'cpu': use 'no' or 'auto'")
        if self.zero_terminal_snr and self.v_parameterization is False:
            raise ValueError("zero_terminal_snr needs v-prediction: set v_parameterization = true (or leave it unset)")
        if self.base_model == "tiny" and self.architecture == "sdxl":
            raise ValueError("base_model 'tiny' is SD1.5-shaped, or Anima-shaped with architecture 'anima': "
                             "architecture must be 'auto', 'sd15' or 'anima'")
        return self

    @property
    def batch_lr_factor(self) -> float:
        """x1.2 per doubling of the batch size (rules.md §12); 1 for Prodigy or with lr_batch_scaling off."""
        if not self.lr_batch_scaling or self.optimizer == "prodigy" or self.batch_size <= 1:
            return 1.0
        return LR_PER_DOUBLING ** math.log2(self.batch_size)

    @property
    def written_learning_rate(self) -> float:
        """The rate for batch size 1: the recipe's, else the guide's default for the optimizer and network."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.optimizer == "prodigy":
            return 1.0
        return {"ia3": IA3_LR[0], "lokr": LOKR_LR[0]}.get(self.network_type, 1e-4)

    @property
    def effective_learning_rate(self) -> float:
        """The rate the bake (and export-kohya) uses: the written one scaled for the batch size."""
        return self.written_learning_rate * self.batch_lr_factor

    @property
    def effective_lr_scheduler(self) -> str:
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        return {"prodigy": "cosine", "came": "rex"}.get(self.optimizer, "cosine_with_restarts")


class RegularisationParams(_Section):
    """rules.md §11: one image per training image by train.base_model, from its caption without the triggers."""

    # Off by default: one render per training image (cached; only new or changed captions are drawn again).
    # Bake trains on them with train.prior_loss_weight; export-kohya writes them to reg/<repeats>_<folder>/.
    enabled: bool = False
    steps: Annotated[int, Field(gt=0)] = 20
    cfg_scale: Annotated[float, Field(gt=0)] = 7.0
    # Renders are sized for this resolution at their training image's bucket (same aspect); None = buckets.resolution.
    size: Annotated[int, Field(ge=64, multiple_of=8)] | None = None
    negative_prompt: str = "lowres, bad anatomy, worst quality"
    sampler: Literal["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim"] = "euler_a"
    device: Literal["auto", "cpu", "cuda"] = "auto"
