"""Process layout of pretraining and fine-tuning: one process, or DDP when launched by torchrun.

    env = setup()                       # or setup(torch.device("cuda")) to ask for a device
    ...
    teardown()

DDP is switched on by the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK): NCCL on GPU,
gloo on CPU. In one process every helper is an identity, so the same code runs under pytest and on
a cluster. The gathers take tensors of different lengths per rank, because the number of instance
keys per step varies with the batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_world: int = 1  # processes on this machine: they share its cores
    device: torch.device = torch.device("cpu")
    local_rank: int = 0  # this process's GPU on its machine

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device | None = None) -> DistEnv:
    """Join the torchrun process group if there is one; this rank's device is `device` (default:
    CUDA when available), one GPU per local rank when its index is not given."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launched_by_torchrun() and world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    env = DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
        device=device,
        local_rank=local_rank,
    )
    if not env.main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank speaks
    return env


def teardown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def set_threads(threads: int, env: DistEnv) -> int:
    """Use `threads` CPU threads, or (0) a fair share of this process's cores among local ranks."""
    if threads == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cores or 1) // env.local_world)
    torch.set_num_threads(threads)
    return threads


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if active():
        x = x.clone()
        tdist.all_reduce(x)
    return x


def all_gather_varlen(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` (N_r x ...) along dim 0, in rank order; N_r may differ.

    all_gather needs equal shapes, so each rank pads to the largest N_r and the padding is cut off.
    """
    if not active():
        return x
    world = tdist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    tdist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    tdist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def all_gather_objects(obj: list) -> list:
    """Every rank's list, concatenated in rank order (pickled: for small results only)."""
    if not active():
        return obj
    parts: list = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, obj)
    return [x for part in parts for x in part]
