"""Precision and device of a bake: where the base runs, in which dtype, with autocast and loss scaling or not."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from bakery.craft.bake import BakeError


@dataclass(frozen=True)
class Precision:
    device: str
    weight_dtype: Any  # torch dtype of the frozen base weights
    autocast: Any  # None on CPU (fp32)
    grad_checkpointing: bool
    scaler: bool  # fp16 needs loss scaling


def choose_precision(device: str, mixed_precision: str, gradient_checkpointing: bool | None) -> Precision:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BakeError("train.device is 'cuda' but no CUDA GPU is visible")
    if device == "cpu":
        if mixed_precision in ("fp16", "bf16"):
            raise BakeError(f"train.mixed_precision {mixed_precision!r} needs CUDA; on CPU use 'no' or 'auto'")
        return Precision("cpu", torch.float32, None, bool(gradient_checkpointing), False)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
    ckpt = True if gradient_checkpointing is None else gradient_checkpointing
    return Precision("cuda", dtype, None if dtype == torch.float32 else dtype, ckpt, dtype == torch.float16)


def autocast(prec: Precision) -> Any:
    """torch's autocast in the precision's dtype on CUDA; nothing on CPU (fp32)."""
    import torch

    return torch.autocast("cuda", dtype=prec.autocast) if prec.autocast is not None else contextlib.nullcontext()


def for_base(prec: Precision, mixed_precision: str, fp16_safe: bool, architecture: str) -> Precision:
    """`prec` for a base whose family may not take fp16: fp16 asked is refused, fp16 picked by `auto` (no bf16 on
    this GPU) becomes fp32."""
    import torch

    if fp16_safe or prec.weight_dtype != torch.float16:
        return prec
    if mixed_precision == "fp16":
        raise BakeError(f"train.mixed_precision 'fp16' is not shown safe for {architecture}: use 'bf16' (or 'auto') "
                        "on a GPU that has it, else 'no'")
    return Precision(prec.device, torch.float32, None, prec.grad_checkpointing, False)
