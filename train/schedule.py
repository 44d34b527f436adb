"""Learning-rate and key-momentum schedules: pure functions of the step, kept out of the model."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` share of the steps, then cosine decay to 0."""
    warm = int(round(warmup * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def momentum_at(step: int, total: int, m0: float) -> float:
    """Key-encoder momentum raised from m0 toward 1 on a half cosine (BYOL's schedule)."""
    return 1.0 - (1.0 - m0) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def scaled_lr(base: float, global_batch: int) -> float:
    """Linear scaling rule: params give the lr per 256 samples."""
    return base * global_batch / 256.0
