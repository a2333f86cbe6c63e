"""What one bake trains with, built once before the first step: the base frozen, the network on it, optimizer,
schedule, data plan and caches (`prepare_training` -> `Training`).

Architecture-free: the base's parts, its noise schedule, text encoding and the network's modules come from
its family (bases/family.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases.family import Base, BaseFiles, NoiseSchedule, TimestepSampling
from bakery.craft.bake.bases.load import load_base, use_prediction
from bakery.craft.bake.data import (
    DataConfig,
    LatentCache,
    Sample,
    full_caption,
    module_id,
    plan_samples,
    steps_per_epoch,
)
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris_net as LN
from bakery.craft.bake.optim import build_optimizer, make_scheduler
from bakery.craft.bake.precision import Precision, choose_precision, for_base
from bakery.manifest import TrainSet


@dataclass
class Training:
    """What every step of one bake works with, built once by `prepare_training`."""

    params: Any  # bakery.recipe.TrainParams
    data: DataConfig
    prec: Precision
    base: Base
    triggers: list[str]
    spec: K.NetworkSpec
    network: list[tuple[str, Any, K.Targets]]  # (kohya prefix, model carrying the adapter, its targets)
    trainable: list[Any]  # the network's weights, in the optimizer's order
    optimizer: Any
    scheduler: Any
    scaler: Any  # fp16's loss scaler, else None
    noise_sched: NoiseSchedule  # the forward process the denoiser learns to undo (the family's)
    samples: list[Sample]
    per_epoch: int
    total: int
    latents: LatentCache
    text: Callable[[list[str]], Any]  # captions -> conditioning (the family's text encoder)
    image_path: Callable[[str], Path]
    validation: list[Sample] = field(default_factory=list)  # the validation loss's pictures (TrainSet.validation)
    validation_latents: dict[str, Any] = field(default_factory=dict)  # sample key -> latent, encoded once
    heads: dict[str, int] = field(default_factory=dict)  # folder -> tags kept at its captions' head (TrainSet.heads)

    def keep_tokens(self, image: Any) -> int:
        """The tags of `image`'s caption that never move: every trigger of its folder (and the prefix tags), as
        export-kohya's keep_tokens per folder; `train.keep_tokens` when it asks for more (rules.md §10)."""
        return max(self.params.keep_tokens, 0 if image.is_reg else self.heads.get(image.folder, 0))


def base_models(base: Base) -> list[Any]:
    """The base's denoiser, text encoders (what the network may train) and the conditioners between them."""
    family = base.family
    return [family.denoiser(base.pipe), *family.text_encoders(base.pipe), *family.conditioners(base.pipe)]


def timestep_sampling(params: Any) -> TimestepSampling:
    """The recipe's rectified-flow timestep sampling (DDPM bases ignore it)."""
    return TimestepSampling(params.timestep_sampling, params.discrete_flow_shift, params.sigmoid_scale)


def check_schedule(params: Any, noise_sched: NoiseSchedule, architecture: str) -> None:
    """One line for the settings a schedule without SNR per timestep (rectified flow) cannot honour: min-SNR
    (sd-scripts' flow trainers never apply it) and Huber's snr schedule (sd-scripts refuses it)."""
    if noise_sched.alphas_cumprod is not None:
        return
    if params.min_snr_gamma:
        raise BakeError(f"train.min_snr_gamma needs an SNR per timestep, which {architecture}'s rectified flow has "
                        "not (sd-scripts trains it without min-SNR): set train.family = \"{architecture}\" (its defaults leave "
                        "min-SNR off) or train.min_snr_gamma = 0")
    if params.loss_type != "l2" and params.huber_schedule == "snr":
        raise BakeError(f"train.huber_schedule 'snr' needs an SNR per timestep, which {architecture}'s rectified "
                        "flow has not: use 'exponential' or 'constant'")


def known_captions(p: Any, samples: list[Sample]) -> list[str]:
    """Every caption the steps and the validation loss will encode for `samples`, when no augmentation changes
    them (no shuffle, tag dropout or warmup; caption dropout adds the empty one); [] when not known ahead."""
    if p.shuffle_caption or p.tag_dropout_rate or p.token_warmup_step:
        return []
    captions = [full_caption(s.image.caption) for s in samples]
    return list(dict.fromkeys(captions + ([""] if p.caption_dropout_rate else [])))


def freeze_base(base: Base, prec: Precision) -> None:
    """The base model frozen on the device, in the weight dtype (the VAE in fp32 unless bf16)."""
    import torch

    for m in base_models(base):
        m.requires_grad_(False)
        m.to(prec.device)
        if prec.weight_dtype != torch.float32:
            m.to(dtype=prec.weight_dtype)
    # The VAE gives NaN in fp16 (SDXL's notably): fp32 unless bf16. It runs once per image with cached latents.
    vae = base.family.vae(base.pipe)
    vae.requires_grad_(False)
    vae.to(prec.device)
    if prec.weight_dtype == torch.bfloat16:
        vae.to(dtype=torch.bfloat16)
    vae.eval()


def attach_network(base: Base, params: Any, spec: K.NetworkSpec) -> list[tuple[str, Any, K.Targets]]:
    """The trainable network: adapters on the denoiser and/or text encoders, their weights in fp32."""
    import torch

    family = base.family
    network: list[tuple[str, Any, K.Targets]] = []
    # The network's initial weights (lora_down is random) come from the seed alone, whatever loading
    # the base model drew from the global generator before.
    torch.manual_seed(params.seed)
    parts = family.network_parts(family.denoiser(base.pipe) if params.train_unet else None,
                                 family.text_encoders(base.pipe) if params.train_text_encoder else [])
    for prefix, model, kind in parts:
        t = family.targets(model, kind, spec)
        if LN.is_lycoris_type(spec.network_type):  # IA3, DyLoRA, Diag-OFT: LyCORIS's own modules
            t = LN.narrow_targets(t, kind, spec)
            LN.attach(model, prefix, t, spec)
        else:
            model.add_adapter(K.peft_config(t, spec))
        network.append((prefix, model, t))
    if not network:
        raise BakeError("train.train_unet and train.train_text_encoder are both off: nothing to train")
    for _, model, _t in network:  # trainable weights in fp32 (mixed precision only for the frozen base)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return network


def set_train_mode(base: Base, params: Any, prec: Precision) -> None:
    """Train mode for what learns; gradient checkpointing when the precision asks for it."""
    denoiser, te_models = base.family.denoiser(base.pipe), base.family.text_encoders(base.pipe)
    conditioners = base.family.conditioners(base.pipe)
    if prec.grad_checkpointing:
        for m in (denoiser, *conditioners):
            m.enable_gradient_checkpointing()
        for te in te_models:
            if params.train_text_encoder:
                # Non-reentrant: the frozen embeddings give no grad-requiring input, and the reentrant
                # form would then silently drop the LoRA gradients inside checkpointed layers.
                if hasattr(te, "activation_checkpointing_enable"):  # transformers >= 5.2x
                    te.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in (denoiser, *conditioners):
        m.train()
    for te in te_models:
        te.train(params.train_text_encoder)


def prepare_training(trainset: TrainSet, params: Any, *, image_path: Callable[[str], Path], workdir: Path,
                     data: DataConfig, base: Base | None = None) -> Training:
    """Everything before the first step: base model, network, optimizer, schedule, data plan, caches."""
    import torch

    if not trainset.images:
        raise BakeError("the training set is empty")
    prec = choose_precision(params.device, params.mixed_precision, params.gradient_checkpointing)
    torch.manual_seed(params.seed)
    if base is None:
        base = load_base(params.base_model, workdir, architecture=params.architecture, words=trainset.triggers,
                         files=BaseFiles.of(params))
    use_prediction(base, params.v_parameterization, params.zero_terminal_snr)
    family = base.family
    prec = for_base(prec, params.mixed_precision, family.fp16, family.name)
    noise_sched = family.noise_schedule(base, timestep_sampling(params))
    check_schedule(params, noise_sched, family.name)
    freeze_base(base, prec)
    spec = K.NetworkSpec(params.network_type, params.network_dim, params.network_alpha, params.conv_dim,
                         params.conv_alpha)
    network = attach_network(base, params, spec)
    set_train_mode(base, params, prec)
    optimizer, trainable = build_optimizer(params, network, prec.device)
    samples = plan_samples(trainset, image_path, data)
    validation = plan_samples(TrainSet(list(trainset.validation), []), image_path, data)
    per_epoch = steps_per_epoch(samples, data.batch_size)
    total = per_epoch * params.epochs
    scheduler = make_scheduler(optimizer, params.effective_lr_scheduler, warmup=params.lr_warmup_steps,
                               total=total, restarts=params.lr_restarts)
    vae = family.vae(base.pipe)
    latents = LatentCache(Path(workdir) / "cache" / "latents", partial(family.encode, vae, device=prec.device),
                          module_id(vae) if params.cache_latents else "", prec.device, params.cache_latents)
    cache = not params.train_text_encoder
    text = family.text_encoder(base, params.clip_skip, prec.device, cache=cache,
                               captions=known_captions(params, samples + validation) if cache else ())
    return Training(
        params=params, data=data, prec=prec, base=base, triggers=list(trainset.triggers), spec=spec,
        network=network, trainable=trainable, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if prec.scaler else None, noise_sched=noise_sched, samples=samples,
        per_epoch=per_epoch, total=total, latents=latents, text=text, image_path=image_path,
        validation=validation, heads=dict(trainset.heads),
    )
