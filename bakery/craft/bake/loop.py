"""LoRA training (rules.md §12) with diffusers + peft (LyCORIS for IA3/DyLoRA/Diag-OFT): the loop every base shares.

Pure: no Prefect. `bake()` trains one network on a TrainSet and calls back per
step and per epoch; the stage (tasks/bake/bake.py) turns those into a progress bar,
the catalog's loss log and the BakeOutput. Its parts, in order: `prepare_training`
(training.py: base, network, optimizer, data plan), `resume_state` (state.py), then per epoch
`training_step` (step.py) for each batch, `validation_loss` (validation.py), `save_epoch`
(the kohya file) and `save_state` (state.py).

The loop knows no architecture: loading a base, encoding prompts, the noisy input and its target,
predicting and the network's modules are the base's family's (bases/family.py says what a family
provides); data.py and optim.py are the same for every family.

Determinism: every random draw of step `s` comes from generators seeded with
(seed, s) and the epoch order from (seed, epoch), so a run resumed from the
state saved at the end of an epoch takes the same draws as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery.craft.bake.bases.family import Base
from bakery.craft.bake.data import DataConfig, epoch_batches
from bakery.craft.bake.state import STATE_FILE, resume_state, save_epoch, save_state
from bakery.craft.bake.step import training_step
from bakery.craft.bake.training import prepare_training
from bakery.craft.bake.validation import ValidationLoss, validation_loss
from bakery.manifest import TrainSet


@dataclass
class StepInfo:
    step: int  # 1-based optimizer step
    total: int
    epoch: int  # 1-based
    loss: float
    lr: float
    elapsed_s: float


@dataclass
class BakeResult:
    files: dict[int, str]
    losses: list[tuple[int, int, float, float]]  # (step, epoch, loss, lr) of the steps run in this call
    resumed_from_epoch: int
    steps: int
    latent_cache_hits: int = 0
    latent_cache_misses: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    validation: list[ValidationLoss] = field(default_factory=list)  # the epochs run in this call


def bake(
    trainset: TrainSet,
    params: Any,  # bakery.recipe.TrainParams
    *,
    image_path: Callable[[str], Path],
    workdir: Path,
    out_dir: Path,
    state_dir: Path,
    name: str,
    data: DataConfig,
    bake_key: str = "",
    session_id: str = "",
    base: Base | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[int, str | None], None] | None = None,
    on_validation: Callable[[ValidationLoss], None] | None = None,
    validation_steps: int = 4,
) -> BakeResult:
    """Train; resume from `state_dir` when it holds this bake's state (`bake_key`). Returns the epoch files.

    `session_id` goes into the files' metadata (the bake key when empty).

    With validation pictures in the TrainSet, the validation loss after each epoch (at `validation_steps`
    fixed timesteps per picture) goes to `on_validation` and into the result."""
    started = time.monotonic()
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    t = prepare_training(trainset, params, image_path=image_path, workdir=Path(workdir), data=data, base=base)
    state_file = state_dir / STATE_FILE
    start_epoch, files = resume_state(state_file, t, bake_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    losses: list[tuple[int, int, float, float]] = []
    validated: list[ValidationLoss] = []
    step = start_epoch * t.per_epoch
    for epoch in range(start_epoch + 1, params.epochs + 1):
        for batch in epoch_batches(t.samples, data.batch_size, params.seed, epoch):
            step += 1
            loss, lr = training_step(t, batch, step)
            losses.append((step, epoch, loss, lr))
            if on_step:
                on_step(StepInfo(step, t.total, epoch, loss, lr, time.monotonic() - started))
        if t.validation:
            validated.append(validation_loss(t, epoch, trainset.validation_held_out, validation_steps))
            if on_validation:
                on_validation(validated[-1])
        saved = None
        if epoch % params.save_every_n_epochs == 0 or epoch == params.epochs:
            path = out_dir / f"{name}-{epoch:06d}.safetensors"
            files[epoch] = saved = save_epoch(t, path, name=name, epoch=epoch, step=step,
                                               session_id=session_id or bake_key)
        if on_epoch:  # before the state: what the caller records for this epoch is never lost on a kill
            on_epoch(epoch, saved)
        save_state(state_file, t, bake_key=bake_key, epoch=epoch, step=step, files=files)
    return BakeResult(files=dict(sorted(files.items())), losses=losses, resumed_from_epoch=start_epoch, steps=step,
                      latent_cache_hits=t.latents.hits, latent_cache_misses=t.latents.misses,
                      seconds=time.monotonic() - started, validation=validated,
                      extra={"device": t.prec.device, "per_epoch": t.per_epoch, "architecture": t.base.architecture,
                             "base_source": t.base.source, "base_files": t.base.files.set()})
