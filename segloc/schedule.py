"""Learning-rate and momentum schedules of pretraining and fine-tuning: pure functions of the step,
kept out of the models (as in MoCo v3).

    lr = lr_at(step, total, peak, warmup_share=0.05)              # pretraining sets it per step
    LambdaLR(opt, lambda s: warmup(s, 100) * poly(s, steps, 0.9))  # eval: factors of the base lr

`warmup`, `cosine` and `poly` are factors in [0, 1]; the others are values.
"""

from __future__ import annotations

import math


def warmup(step: int, steps: int) -> float:
    """Linear ramp to 1 over the first `steps` steps (1 throughout when 0)."""
    return min(1.0, (step + 1) / steps) if steps else 1.0


def cosine(step: int, total: int) -> float:
    """Half-cosine decay from 1 at step 0 to 0 at `total` (0 after it)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def poly(step: int, total: int, power: float) -> float:
    """Polynomial decay (1 - step / total) ** power, DeepLab's schedule (0 after `total`)."""
    return max(0.0, 1 - step / total) ** power


def lr_at(step: int, total: int, peak: float, warmup_share: float) -> float:
    """Linear warm-up over the first `warmup_share` of the steps, then cosine decay to 0."""
    warm = int(round(warmup_share * total))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * cosine(step - warm, total - warm)


def momentum_at(step: int, total: int, m0: float) -> float:
    """Key-encoder momentum raised from m0 toward 1 on a half cosine (BYOL's schedule)."""
    return 1.0 - (1.0 - m0) * cosine(step, total)


def scaled_lr(base: float, global_batch: int) -> float:
    """Linear scaling rule: params give the lr per 256 samples."""
    return base * global_batch / 256.0
