"""Distributed helpers that are identities in a single process.

DDP is switched on by the environment `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK): NCCL on GPU,
gloo on CPU. Collectives here take tensors of different lengths per rank, because the number of
instance keys per step varies with the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str) -> DistInfo:
    """Join the process group torchrun describes; a plain single-process run returns rank 0 of 1."""
    if not launched_by_torchrun():
        return DistInfo()
    if not tdist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        tdist.init_process_group(backend=backend)
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


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


def broadcast_object(obj: object) -> object:
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
