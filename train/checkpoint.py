"""Checkpoints for --resume: model (queues included), optimizer and the loop's own state.

A checkpoint carries an identity (method, resolved config, shards digest, process count); resuming
under another identity would silently train something else, so it is refused with the key named.
Everything in it loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segloc.atomic import torch_save
from segloc.errors import UserError

log = logging.getLogger(__name__)

# Config keys that may change between an interrupted run and its resume without changing results.
# bad_data too: a run stopped by a damaged shard may resume with bad_data=skip.
RESUME_FREE_KEYS = {"checkpoint_every", "device", "compile", "threads", "bad_data"}


@dataclass
class RunState:
    """Everything besides model and optimizer that a resumed run needs."""

    step: int = 0  # steps done
    rows: list[dict[str, float]] = field(default_factory=list)  # one per step: plots/train.tsv
    skipped: Counter = field(default_factory=Counter)  # reason -> samples dropped
    samples: int = 0  # samples trained on by this process
    train_seconds: float = 0.0  # wall time inside steps, for throughput
    monitor: list[dict[str, float]] = field(default_factory=list)  # plots/monitor.tsv rows
    monitor_seconds: float = 0.0  # wall time of the monitor's passes (not in train_seconds)
    bad_shards: dict[str, str] = field(default_factory=dict)  # url -> why it was skipped


def identity(method: str, config: dict[str, Any], shards_sha256: str, world_size: int) -> dict:
    return {
        "method": method,
        "config": config,
        "shards_sha256": shards_sha256,
        "world_size": world_size,
    }


def save_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: RunState, ident: dict[str, Any]
) -> None:
    payload = ident | {
        "step": state.step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rows": state.rows,
        "skipped": dict(state.skipped),
        "bad_shards": dict(state.bad_shards),
        "samples": state.samples,
        "train_seconds": state.train_seconds,
        "monitor": state.monitor,
        "monitor_seconds": state.monitor_seconds,
    }
    torch_save(payload, path)
    log.info("checkpoint at step %d: %s", state.step, path)


def load_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, ident: dict[str, Any]
) -> RunState:
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path} (drop --resume to start afresh)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise UserError(f"{path}: cannot read checkpoint ({err})") from err
    check_identity(path, ckpt, ident)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    log.info("resuming from %s at step %d", path, ckpt["step"])
    return RunState(
        ckpt["step"],
        list(ckpt["rows"]),
        Counter(ckpt["skipped"]),
        ckpt["samples"],
        ckpt["train_seconds"],
        list(ckpt["monitor"]),
        ckpt["monitor_seconds"],
        dict(ckpt.get("bad_shards", {})),
    )


def check_identity(path: Path, ckpt: dict[str, Any], ident: dict[str, Any]) -> None:
    if ckpt.get("method") != ident["method"]:
        raise UserError(
            f"{path}: checkpoint of method {ckpt.get('method')!r}, not {ident['method']!r}"
        )
    if ckpt.get("shards_sha256") != ident["shards_sha256"]:
        raise UserError(f"{path}: checkpoint was trained on other shards (manifest digest differs)")
    if ckpt.get("world_size") != ident["world_size"]:
        raise UserError(
            f"{path}: checkpoint of a {ckpt.get('world_size')}-process run; resume "
            f"with the same number of processes, not {ident['world_size']}"
        )
    now, then = ident["config"], ckpt.get("config", {})
    changed = sorted(
        k for k in set(now) | set(then) if k not in RESUME_FREE_KEYS and now.get(k) != then.get(k)
    )
    if changed:
        more = " and more" if len(changed) > 1 else ""
        raise UserError(
            f"{path}: params changed since the checkpoint (pretrain.{changed[0]}"
            f"{more}); resume needs the same params"
        )
