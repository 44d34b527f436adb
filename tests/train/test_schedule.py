"""lr and key-momentum schedules, and the step budget from steps/epochs."""

from __future__ import annotations

import math

import pytest

from segloc.errors import UserError
from train.config import PretrainConfig, check_config, total_steps
from train.schedule import lr_at, momentum_at, scaled_lr


def test_lr_warms_up_linearly_then_decays_on_a_cosine():
    total, peak = 200, 0.3
    lrs = [lr_at(s, total, peak, 0.1) for s in range(total)]
    warm = lrs[:20]
    assert all(b > a for a, b in zip(warm, warm[1:], strict=False)) and math.isclose(warm[-1], peak)
    decay = lrs[20:]
    assert all(b <= a for a, b in zip(decay, decay[1:], strict=False))
    assert math.isclose(lr_at(110, total, peak, 0.1), peak / 2, rel_tol=1e-6)  # halfway
    assert decay[-1] < 1e-3 * peak and min(lrs) > 0


def test_no_warmup_starts_at_the_peak():
    assert lr_at(0, 10, 0.5, 0.0) == 0.5


def test_momentum_rises_from_m0_to_one():
    ms = [momentum_at(s, 100, 0.99) for s in range(101)]
    assert ms[0] == pytest.approx(0.99) and ms[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(ms, ms[1:], strict=False))


def test_lr_scales_with_the_global_batch():
    assert scaled_lr(0.03, 512) == pytest.approx(0.06)


def test_budget_in_steps_or_epochs():
    assert total_steps(PretrainConfig(steps=50), 1000, 1) == 50
    cfg = PretrainConfig(steps=None, epochs=2.0, batch_size=32)
    assert total_steps(cfg, 1000, 2) == math.ceil(2 * 1000 / 64)
    with pytest.raises(UserError, match="exactly one"):
        check_config(PretrainConfig(steps=10, epochs=1.0))
