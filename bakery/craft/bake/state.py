"""What a bake leaves behind: the kohya file of each epoch (tensors and `ss_*`/`modelspec.*` metadata) and the
training state a killed bake resumes from (network, optimizer, schedule, loss scaler, files so far).

Architecture-free: the network's kohya names were fixed when it was attached (its `Targets`), the metadata's
architecture entries live in networks/kohya_lora.py.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.data import Sample
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris_net as LN
from bakery.craft.bake.optim import learning_rates
from bakery.craft.bake.training import Training

STATE_FILE = "state.pt"


def dataset_summary(samples: list[Sample]) -> dict[str, Any]:
    """kohya's dataset metadata: tag frequency, folders with repeats and image counts, image totals."""
    dataset_dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    for s in samples:
        dirs = reg_dirs if s.image.is_reg else dataset_dirs
        d = dirs.setdefault(s.image.kohya_dir, {"n_repeats": s.image.repeats, "img_count": 0})
        d["img_count"] += 1
    return {
        "tag_freq": K.tag_frequency((s.image.kohya_dir, s.image.caption) for s in samples if not s.image.is_reg),
        "dataset_dirs": dataset_dirs, "reg_dirs": reg_dirs,
        "n_train": sum(s.image.repeats for s in samples if not s.image.is_reg),
        "n_reg": sum(s.image.repeats for s in samples if s.image.is_reg),
    }


def epoch_metadata(t: Training, *, name: str, epoch: int, step: int, session_id: str) -> dict[str, str]:
    """The `ss_*` and `modelspec.*` metadata of the file saved after `epoch`."""
    p, prec = t.params, t.prec
    base_lr, unet_lr, te_lr = learning_rates(p)
    ds = dataset_summary(t.samples)
    return K.build_metadata(
        spec=t.spec, architecture=t.base.architecture, output_name=name, triggers=t.triggers,
        resolution=t.data.resolution, epoch=epoch, num_epochs=p.epochs, steps=step,
        learning_rate=base_lr, unet_lr=unet_lr if p.train_unet else None,
        text_encoder_lr=te_lr if p.train_text_encoder else None,
        optimizer=type(t.optimizer).__module__ + "." + type(t.optimizer).__name__, seed=p.seed,
        clip_skip=p.clip_skip, base_model=Path(t.base.source).name if t.base.source else "",
        tag_freq=ds["tag_freq"], dataset_dirs=ds["dataset_dirs"], num_train_images=ds["n_train"],
        num_reg_images=ds["n_reg"], batch_size=t.data.batch_size,
        extra={"ss_lr_scheduler": p.effective_lr_scheduler, "ss_min_snr_gamma": str(p.min_snr_gamma),
               "ss_noise_offset": str(p.noise_offset), "ss_ip_noise_gamma": str(p.ip_noise_gamma),
               "ss_loss_type": p.loss_type, "ss_keep_tokens": str(p.keep_tokens),
               "ss_flip_aug": str(p.flip_aug), "ss_cache_latents": str(p.cache_latents),
               "ss_mixed_precision": "no" if prec.autocast is None else str(prec.autocast).split(".")[-1],
               "ss_max_train_steps": str(t.total), "ss_session_id": session_id[:16],
               "ss_reg_dataset_dirs": json.dumps(ds["reg_dirs"]), "ss_prior_loss_weight": str(p.prior_loss_weight),
               **P.metadata(t.base.prediction),
               # a flow schedule's sampling (sd-scripts writes it); DDPM's scheduler has none: SD files unchanged
               **getattr(t.noise_sched, "metadata", dict)()},
    )


def save_epoch(t: Training, path: Path, *, name: str, epoch: int, step: int, session_id: str) -> str:
    """The network as it stands after `epoch`, written as a kohya LoRA file; returns its path."""
    from peft import get_peft_model_state_dict

    tensors: dict[str, Any] = {}
    for prefix, model, targets in t.network:
        if LN.is_lycoris_type(t.spec.network_type):
            tensors.update(LN.file_tensors(model))
        else:
            tensors.update(K.peft_to_kohya(get_peft_model_state_dict(model), prefix, targets, t.spec))
    meta = epoch_metadata(t, name=name, epoch=epoch, step=step, session_id=session_id)
    K.save_kohya(path, tensors, meta, t.params.save_precision)
    return str(path)


def network_state(model: Any) -> dict[str, Any]:
    """The trained weights of one model, on the CPU, as resuming reloads them."""
    from peft import get_peft_model_state_dict

    if LN.is_attached(model):
        return LN.network_state(model)
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def save_state(path: Path, t: Training, *, bake_key: str, epoch: int, step: int, files: dict[int, str]) -> None:
    """What resuming after `epoch` needs: network, optimizer, schedule, loss scaler, the files so far."""
    import torch

    state = {
        "bake_key": bake_key,
        "epoch": epoch,
        "step": step,
        "networks": {prefix: network_state(model) for prefix, model, _t in t.network},
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "files": {str(k): v for k, v in files.items()},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "seed": t.params.seed},
    }
    tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed: a kill leaves the last state
    torch.save(state, tmp)
    os.replace(tmp, path)


def resume_state(path: Path, t: Training, bake_key: str) -> tuple[int, dict[int, str]]:
    """Load this bake's state from `path` when there is one: (epochs done, their files still on disk)."""
    import torch
    from peft import set_peft_model_state_dict

    if not path.exists():
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("bake_key") != bake_key:  # another bake's state: start afresh
        return 0, {}
    for prefix, model, _t in t.network:
        if LN.is_attached(model):
            bad = LN.load_network_state(model, state["networks"][prefix])
        else:
            bad = set_peft_model_state_dict(model, state["networks"][prefix]).unexpected_keys
        if bad:
            raise BakeError(f"training state {path} does not match the network: {bad[:3]}")
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    return state["epoch"], {int(k): v for k, v in state["files"].items() if Path(v).exists()}
