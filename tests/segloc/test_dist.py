"""Outside torchrun every distributed helper is an identity (DDP itself: tests/*/test_ddp.py)."""

from __future__ import annotations

import torch

from segloc import dist


def test_one_process_is_rank_zero_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    env = dist.setup(torch.device("cpu"))
    assert env == dist.DistEnv() and env.main and not dist.active()
    x = torch.arange(6.0).view(3, 2)
    assert dist.all_reduce_sum(x) is x and dist.all_gather_varlen(x) is x
    assert dist.all_gather_objects([1, 2]) == [1, 2] and dist.world_size() == 1
    before = torch.get_num_threads()
    assert dist.set_threads(1, env) == 1 == torch.get_num_threads()
    torch.set_num_threads(before)
    dist.teardown()  # no group: nothing to do
