"""Run by test_ddp.py under torchrun: a few gloo steps, then each rank saves its class queues.

torchrun --standalone --nproc_per_node 2 tests/train/ddp_worker.py SHARDS OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from segloc import dist
from train.config import AugmentConfig, MonitorConfig, PretrainConfig
from train.loop import run


def main(shards: str, out: str) -> None:
    cfg = PretrainConfig(
        steps=3,
        batch_size=3,
        augment=AugmentConfig(crop=64),
        workers=1,
        queue_size=48,
        shuffle_buffer=8,
        device="cpu",
        monitor=MonitorConfig(holdout=4),
    )
    result = run(cfg, "segloc", shards, out)
    rank = torch.distributed.get_rank()
    torch.save(
        {
            "queue": result.model.queue,
            "ptr": result.model.queue_ptr,
            "count": result.model.queue_count,
            "metrics": result.metrics,
        },
        Path(out) / f"queue_rank{rank}.pt",
    )
    dist.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
