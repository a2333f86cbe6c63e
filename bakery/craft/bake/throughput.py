"""Where a bake's time goes: steps per second, and a warning when they fall far below the first steps'.

The trouble it catches is the most reported one of LoRA trainers: a bake that outgrows the GPU's memory and
spills into shared (system) memory runs on, 10-100x slower, without an error (the Windows driver's "sysmem
fallback"; kohya_ss #1730, #1524, #3296). The step time is compared as a median, so that an epoch's save or
validation pass (one long gap) is not taken for a slowdown.
"""

from __future__ import annotations

from statistics import median

WARMUP = 2  # the first steps build kernels and caches
WINDOW = 8  # steps per median
SLOWER = 3.0  # the latest median this many times the first one: warn


class Throughput:
    def __init__(self, warmup: int = WARMUP, window: int = WINDOW, slower: float = SLOWER):
        self.warmup, self.window, self.slower = warmup, window, slower
        self.durations: list[float] = []
        self.baseline: float | None = None
        self.warned = False
        self._last: float | None = None

    def tick(self, now: float) -> str | None:
        """Call once per optimizer step with a monotonic clock; returns the warning, once, when it applies."""
        if self._last is not None:
            self.durations.append(now - self._last)
        self._last = now
        steady = self.durations[self.warmup:]
        if self.baseline is None:
            if len(steady) >= self.window:
                self.baseline = median(steady[: self.window])
            return None
        latest = median(self.durations[-self.window:])
        if self.warned or latest <= self.slower * self.baseline:
            return None
        self.warned = True
        return (f"the bake slowed from {1 / self.baseline:.2f} to {1 / latest:.2f} steps/s "
                f"(x{latest / self.baseline:.0f} slower than its first steps): it has likely run out of VRAM and "
                "spilled into shared memory. Lower train.batch_size or train.network_dim, set "
                "train.gradient_checkpointing = true or a train.profile (bakery doctor RECIPE estimates what fits); "
                "on Windows, set the NVIDIA driver's 'CUDA - Sysmem Fallback Policy' to 'Prefer No Sysmem Fallback' "
                "to get an out-of-memory error instead")

    @property
    def steps_per_s(self) -> float | None:
        steady = self.durations[self.warmup:] or self.durations
        return 1 / median(steady) if steady and median(steady) > 0 else None


def peak_memory() -> str:
    """The GPU memory the bake's tensors peaked at (torch's allocator), or why there is no figure."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return "no GPU memory (CPU bake)"
    return f"peak GPU memory {torch.cuda.max_memory_allocated() / 1024**3:.2f} GB"
