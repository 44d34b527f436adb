"""lr and momentum schedules: pretraining's values and fine-tuning's LambdaLR factors."""

from __future__ import annotations

import math

import pytest

from segloc.schedule import cosine, lr_at, momentum_at, poly, scaled_lr, warmup


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


def test_warmup_times_poly_ramps_then_decays():
    lrs = [warmup(s, 4) * poly(s, 10, 1.0) for s in range(10)]
    assert lrs[:4] == pytest.approx([0.25, 0.5 * 0.9, 0.75 * 0.8, 0.7])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False)) and lrs[-1] > 0
    assert warmup(0, 0) == 1.0


def test_factors_run_from_one_to_zero_and_stay_there():
    for factor in (lambda s: cosine(s, 50), lambda s: poly(s, 50, 0.9)):
        values = [factor(s) for s in range(60)]
        assert values[0] == 1.0 and values[50] == 0.0 and values[-1] == 0.0
        assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert cosine(25, 50) == pytest.approx(0.5)
