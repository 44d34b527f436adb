"""The step budget from pretrain.steps / pretrain.epochs."""

from __future__ import annotations

import math

import pytest

from segloc.errors import UserError
from train.config import PretrainConfig, check_config, total_steps


def test_budget_in_steps_or_epochs():
    assert total_steps(PretrainConfig(steps=50), 1000, 1) == 50
    cfg = PretrainConfig(steps=None, epochs=2.0, batch_size=32)
    assert total_steps(cfg, 1000, 2) == math.ceil(2 * 1000 / 64)
    with pytest.raises(UserError, match="exactly one"):
        check_config(PretrainConfig(steps=10, epochs=1.0))
