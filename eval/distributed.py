"""Process layout: one process on CPU/GPU, or DDP when launched by torchrun (WORLD_SIZE > 1).

In one process every helper is an identity, so the same code runs under pytest and on a cluster.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> DistEnv:
    """Join the torchrun process group if there is one (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    env = DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
        device=device,
    )
    if not env.main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank speaks
    return env


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def set_threads(threads: int, env: DistEnv) -> int:
    """Use `threads` CPU threads, or (0) a fair share of this process's cores among local ranks."""
    if threads == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cores or 1) // env.local_world)
    torch.set_num_threads(threads)
    return threads
