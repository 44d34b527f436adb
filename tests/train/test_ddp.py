"""Two gloo processes under torchrun: both ranks end with the same class queues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.launch import torchrun

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.ddp
@pytest.mark.slow
def test_two_ranks_keep_identical_queues(tiny_shards, tmp_path):
    torchrun([str(WORKER), str(tiny_shards), str(tmp_path)], cwd=tmp_path)
    a, b = (torch.load(tmp_path / f"queue_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(a["queue"], b["queue"]) and torch.equal(a["ptr"], b["ptr"])
    # Every rank enqueued the keys of both ranks: pairs/step is the mean over the two ranks.
    assert torch.equal(a["count"], b["count"])
    assert int(a["count"].sum()) == round(a["metrics"]["pairs_per_step"] * 3 * 2) > 0
    assert a["metrics"]["queues_identical_across_ranks"] is True
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["world_size"] == 2 and stats["steps"] == 3
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["knn_acc"] <= 100 and metrics["chance_loss"] > 0  # rank 0's monitor
