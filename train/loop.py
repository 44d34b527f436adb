"""The pretraining run: build, (resume), loop over data epochs, checkpoint, export.

    result = run(cfg, "segloc", "shards/", "out/segloc", resume=False)

Outputs under out/: checkpoint.pt (resume), backbone.pt + backbone.json (eval), metrics.json
(the headline figures and library versions), stats.json (every figure of the run),
plots/train.tsv and plots/monitor.tsv (DVC), config.json (the resolved config of a run made
outside DVC). On CPU a resumed run ends with exactly the weights and monitor rows of an
uninterrupted one: batch s and every random draw of step s depend only on (seed, rank, s), the
monitor reads held-out samples with its own fixed generators, and the checkpoint holds all other
state (monitor rows included).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from segloc import dist
from segloc.atomic import write_json, write_text
from segloc.backbone_card import build_card
from segloc.dense import start_small
from segloc.errors import UserError
from segloc.params import to_dict
from segloc.provenance import versions
from segloc.schedule import scaled_lr
from train.augment import MEAN, STD
from train.checkpoint import RunState, identity, load_checkpoint, save_checkpoint
from train.config import Preset, PretrainConfig, resolve_preset, run_label, total_steps
from train.data import Needs, ShardSet, StreamSpec, make_loader, open_shards
from train.export import export
from train.moco import ClassQueueMoCo, SupervisedSeg
from train.model import Encoder, init_weights
from train.monitor import Monitor, load_holdout
from train.monitor import summary as monitor_summary
from train.ranks import Beacon, is_peer_loss
from train.step import StepContext, train_step

log = logging.getLogger(__name__)


@dataclass
class Session:
    """One run's moving parts, passed to the loop's phases."""

    cfg: PretrainConfig
    method: str
    shards: ShardSet
    out: Path
    ctx: StepContext
    model: nn.Module  # the bare model: checkpoints, export, queue metrics
    train_model: nn.Module  # the same, DDP-wrapped under torchrun
    opt: torch.optim.Optimizer
    state: RunState
    beacon: Beacon  # step and checkpoint step for the launcher (train.ranks)
    monitor: Monitor | None = None  # None: pretrain.monitor.holdout is 0
    held_out: int = 0  # samples the stream skips (the monitor's)

    @property
    def train_samples(self) -> int:
        return self.shards.num_samples - self.held_out

    @property
    def identity(self) -> dict[str, Any]:
        return identity(self.method, to_dict(self.cfg), self.shards.sha256, dist.world_size())


@dataclass
class RunResult:
    model: nn.Module
    state: RunState
    finished: bool
    metrics: dict[str, Any]


class PeerLost(Exception):
    """Another rank went away mid-collective (killed, out of memory, crashed)."""

    def __init__(self, rank: int, step: int, ckpt: int):
        super().__init__(f"rank {rank}: lost the other ranks at step {step}")
        self.rank, self.step, self.ckpt = rank, step, ckpt


class Interrupted(Exception):
    """SIGINT/SIGTERM: the checkpoint is written; the run continues with --resume."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(
            f"interrupted at step {step}; checkpoint {checkpoint}; continue with --resume"
        )
        self.step, self.checkpoint = step, checkpoint


def run(
    cfg: PretrainConfig,
    method: str,
    shards_dir: str | Path,
    out: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
) -> RunResult:
    """Train `method` on the shards; `stop_at` ends early as an interruption would (tests)."""
    s = setup(cfg, method, shards_dir, Path(out), resume)
    try:
        finished = loop(s, min(s.ctx.total, stop_at) if stop_at is not None else s.ctx.total)
        metrics = summary(s) if finished else {}
    except Exception as err:
        if dist.active() and is_peer_loss(err):
            raise PeerLost(s.ctx.rank, s.state.step, s.beacon.ckpt) from err
        raise
    finally:
        s.beacon.close()
    if finished and s.ctx.rank == 0:
        finish(s, metrics)
    return RunResult(s.model, s.state, finished, metrics)


def setup(
    cfg: PretrainConfig, method: str, shards_dir: str | Path, out: Path, resume: bool
) -> Session:
    preset = resolve_preset(cfg, method)
    env = _ranks(cfg)
    device = env.device
    shards = open_shards(shards_dir)
    monitor = build_monitor(cfg, shards)
    held_out = len(monitor.holdout.keys) if monitor is not None else 0
    total = total_steps(cfg, shards.num_samples - held_out, env.world)
    model = build_model(cfg, preset, len(shards.classes), device)
    opt = build_optimizer(model, cfg)
    peak_lr = scaled_lr(cfg.lr, cfg.batch_size * env.world)
    ctx = StepContext(cfg, preset, total, peak_lr, device, env.rank, shards.classes)
    wrapped = _wrap(model, device)
    beacon = Beacon(env.rank)
    s = Session(
        cfg, method, shards, out, ctx, model, wrapped, opt, RunState(), beacon, monitor, held_out
    )
    if resume:
        s.state = load_checkpoint(out / "checkpoint.pt", model, opt, s.identity)
        beacon.update(s.state.step, checkpoint=s.state.step)
    if env.main:
        write_json(
            out / "config.json",
            {
                "method": method,
                "pretrain": to_dict(cfg),
                "shards": str(shards.root),
                "total_steps": total,
                "world_size": env.world,
            },
        )
    return s


def build_monitor(cfg: PretrainConfig, shards: ShardSet) -> Monitor | None:
    """Every rank reads the hold-out (its stream must skip it); only rank 0 measures."""
    if cfg.monitor.holdout == 0:
        return None
    holdout = load_holdout(shards, cfg.monitor.holdout)
    if holdout.skipped:
        log.warning("monitor: %d held-out samples could not be decoded", holdout.skipped)
    return Monitor(cfg.monitor, holdout, len(shards.classes))


def _ranks(cfg: PretrainConfig) -> dist.DistEnv:
    env = dist.setup(resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return env


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(
            f"params pretrain.device: {name!r} is not a device (auto, cpu, cuda)"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"params pretrain.device: {name!r} asked for, but no CUDA device is visible"
        )
    return device


def build_model(
    cfg: PretrainConfig, preset: Preset, num_classes: int, device: torch.device
) -> nn.Module:
    """The same seed gives the same initial weights and queues on every rank and device."""
    g = torch.Generator().manual_seed(cfg.seed)
    if preset.pooling is None:
        model = SupervisedSeg(cfg.arch, num_classes)
        init_weights(model, g)
        start_small(model.classifier, g)
    else:
        dense_dim = cfg.dim if cfg.dense_weight > 0 else 0
        encoder = Encoder(
            cfg.arch, preset.pooling, cfg.dim, cfg.pool_from, cfg.pixel_norm, dense_dim
        )
        init_weights(encoder, g)
        queues = num_classes if preset.queue == "per_class" else 1
        model = ClassQueueMoCo(
            encoder,
            queues,
            cfg.queue_size,
            cfg.temperature,
            cfg.shuffle_bn_groups,
            g,
            class_positives=cfg.positives == "class",
            predictor=cfg.predictor,
            dense_weight=cfg.dense_weight,
        )
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        trunk = model.encoder_q.trunk if preset.pooling is not None else model.trunk
        trunk.compile()  # in place: state_dict keys keep their names
    return model


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.decay_norm_bias:
        # BatchNorm scales and every bias (1-d tensors) outside weight decay, as MoCo v3 and BYOL
        # keep them: decayed, BN scales shrink and damp whole residual branches.
        plain = [p for p in params if p.ndim > 1]
        params = [
            {"params": plain},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=0.0, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=0.0,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )


def _wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if not dist.active():
        return model
    # Queues stay equal because every rank enqueues the all-gathered keys; syncing buffers each
    # forward would ship the whole bank for nothing (the sync at init is harmless: all equal).
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def needs_of(preset: Preset) -> Needs:
    if preset.pooling is None:
        return Needs(views=2, masks=False, seg=True)
    if preset.pooling == "image":
        return Needs(views=1, masks=False, seg=False)
    return Needs(views=2, masks=True, seg=False)


def stream_spec(
    cfg: PretrainConfig,
    shards: ShardSet,
    preset: Preset,
    rank: int,
    epoch: int,
    start: int,
    epoch_steps: int,
    exclude: frozenset[tuple[str, str]] = frozenset(),
) -> StreamSpec:
    return StreamSpec(
        shards.urls,
        shards.canvas,
        len(shards.classes),
        needs_of(preset),
        cfg.batch_size,
        cfg.shuffle_buffer,
        cfg.seed,
        rank,
        epoch,
        epoch_steps,
        start,
        cfg.streams,
        exclude,
        shards.digests or None,
        cfg.bad_data,
    )


# ---------------------------------------------------------------- the loop


def loop(s: Session, stop: int) -> bool:
    """Steps until `stop`, then a checkpoint; True when the whole schedule is done.

    A data epoch is one pass over the manifest's samples (per process); every rank takes the
    same number of steps in it, and a resumed run re-enters it at its offset.
    """
    world = dist.world_size()
    epoch_steps = max(1, s.train_samples // (s.cfg.batch_size * world))
    exclude = s.monitor.holdout.keys if s.monitor is not None else frozenset()
    bar = tqdm(
        total=stop, initial=s.state.step, disable=s.ctx.rank != 0, unit="step", dynamic_ncols=True
    )
    interrupted = False
    try:
        monitor_pass(s)  # step 0: the random-init reference
        with _stop_signals() as stop_flag:
            while s.state.step < stop and not interrupted:
                epoch, offset = divmod(s.state.step, epoch_steps)
                spec = stream_spec(
                    s.cfg, s.shards, s.ctx.preset, s.ctx.rank, epoch, offset, epoch_steps, exclude
                )
                loader = make_loader(spec, s.cfg.workers, pin_memory=s.ctx.device.type == "cuda")
                for batch in loader:
                    one_step(s, batch)
                    s.beacon.update(step=s.state.step)
                    monitor_pass(s)
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{s.state.rows[-1]['loss']:.3f}",
                        img_s=f"{2 * _rate(s.state, world):.1f}",
                        refresh=False,
                    )
                    if s.state.step % s.cfg.checkpoint_every == 0 and s.state.step < stop:
                        checkpoint(s)
                    interrupted = _agreed(stop_flag.is_set())
                    if s.state.step >= stop or interrupted:
                        break
                del loader  # shuts its workers down before the next epoch's start
    finally:
        bar.close()  # a stop by error prints its line below the bar, not after it
    checkpoint(s)
    if interrupted and s.state.step < stop:
        raise Interrupted(s.state.step, s.out / "checkpoint.pt")
    return s.state.step >= s.ctx.total


def one_step(s: Session, batch: dict[str, Any]) -> None:
    if "fatal" in batch:  # bad_data=fail met a damaged shard or sample
        raise UserError(f"pretrain stopped at step {s.state.step}: {batch['fatal']}")
    s.state.skipped.update(batch.pop("skipped", {}))
    s.state.bad_shards.update(batch.pop("bad_shards", {}))
    t0 = time.perf_counter()
    try:
        scalars = train_step(s.train_model, s.opt, batch, s.state.step, s.ctx)
    except FloatingPointError as err:
        ckpt = s.out / "checkpoint.pt"
        kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint yet"
        raise UserError(
            f"pretrain stopped: {err}; {kept}. Lower pretrain.lr or set "
            "pretrain.clip_grad, then --resume"
        ) from err
    s.state.train_seconds += time.perf_counter() - t0
    s.state.samples += int(batch["img0"].shape[0])
    s.state.step += 1
    s.state.rows.append(metrics_row(s, scalars))


def monitor_pass(s: Session) -> None:
    """A monitor row when one is due and not already held (a resumed run has its rows)."""
    if s.monitor is None or s.ctx.rank != 0 or not s.monitor.due(s.state.step, s.ctx.total):
        return
    if s.state.monitor and s.state.monitor[-1]["step"] == s.state.step:
        return
    t0 = time.perf_counter()
    s.state.monitor.append(s.monitor.measure(s.model, s.ctx, s.state.step))
    s.state.monitor_seconds += time.perf_counter() - t0
    log.debug("monitor: %s", s.state.monitor[-1])


def metrics_row(s: Session, scalars: dict[str, float]) -> dict[str, float]:
    """One line of plots/train.tsv; queue fill per class shows when the bank is warm."""
    row = {"step": s.state.step, "loss": scalars["loss"], "lr": scalars["lr"]}
    if isinstance(s.model, SupervisedSeg):
        return row | {"pixel_acc": scalars.get("pixel_acc", float("nan"))}
    row |= {k: scalars.get(k, float("nan")) for k in ("momentum", "pos_sim", "neg_sim", "pairs")}
    if "dense_loss" in scalars:  # the dense variant's own term (pretrain.dense_weight)
        row["dense_loss"] = scalars["dense_loss"]
    fill = s.model.queue_fill().tolist()
    names = s.shards.classes if len(fill) == len(s.shards.classes) else ("all",)
    return row | {f"fill_{_column(n)}": f for n, f in zip(names, fill, strict=True)}


def checkpoint(s: Session) -> None:
    if s.ctx.rank != 0:
        return
    save_checkpoint(s.out / "checkpoint.pt", s.model, s.opt, s.state, s.identity)
    s.beacon.update(checkpoint=s.state.step)
    write_tsv(s.out / "plots" / "train.tsv", s.state.rows)
    write_tsv(s.out / "plots" / "monitor.tsv", s.state.monitor)


def _column(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _rate(state: RunState, world: int) -> float:
    return world * state.samples / state.train_seconds if state.train_seconds > 0 else 0.0


def _agreed(flag: bool) -> bool:
    """Every rank stops at the same step if any rank got the signal (else collectives hang)."""
    if not dist.active():
        return flag
    return bool(dist.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


@contextmanager
def _stop_signals():
    """SIGINT/SIGTERM set a flag that the loop checks between steps."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: flag.set())
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- outputs


def write_tsv(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    lines = ["\t".join(cols)]
    lines += ["\t".join(_fmt(r.get(c, float("nan"))) for c in cols) for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def _fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"


def summary(s: Session) -> dict[str, Any]:
    """Every figure of the run (stats.json; `headline` picks metrics.json's); computed on every
    rank (the queue check is a collective)."""
    world, rows = dist.world_size(), s.state.rows
    tail = [r["loss"] for r in rows[-10:]]
    metrics = {
        "steps": s.state.step,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),  # mean of the last 10
        "samples_per_s": _rate(s.state, world),
        "img_per_s": 2 * _rate(s.state, world),  # two views (or two crops) per sample
        "skipped_samples": int(sum(s.state.skipped.values())),
        "skipped_reasons": dict(s.state.skipped),
        "skipped_shards": len(s.state.bad_shards),
        "skipped_shard_reasons": dict(s.state.bad_shards),
        "world_size": world,
    }
    if s.monitor is not None:
        metrics |= monitor_summary(s.state.monitor)
        metrics["monitor_seconds"] = s.state.monitor_seconds
    if isinstance(s.model, ClassQueueMoCo):
        metrics["queue_fill_min"] = float(s.model.queue_fill().min())
        metrics["pairs_per_step"] = sum(r["pairs"] for r in rows) / max(1, len(rows))
        if world > 1:
            metrics["queues_identical_across_ranks"] = queues_identical(s.model)
    return metrics


HEADLINE = (
    "knn_acc",
    "knn_acc_init",
    "fresh_bank_loss",
    "chance_loss",
    "final_loss",
    "samples_per_s",
    "skipped_samples",
    "skipped_shards",
)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: the few figures worth a column in `dvc metrics show`, and the library
    versions that made the run (a list, which `dvc metrics show` leaves out)."""
    return {k: metrics[k] for k in HEADLINE if k in metrics} | {"versions": versions()}


def queues_identical(model: ClassQueueMoCo) -> bool:
    """Compare a float64 digest of the bank across ranks (exact: same keys, same writes)."""
    q = model.queue.double()
    weights = torch.arange(q.numel(), device=q.device, dtype=torch.float64).view_as(q) % 9973 + 1
    digest = torch.stack([q.sum(), (q * weights).sum(), model.queue_ptr.double().sum()])
    gathered = dist.all_gather_varlen(digest[None])
    return bool((gathered == gathered[0]).all())


def finish(s: Session, metrics: dict[str, Any]) -> None:
    card = build_card(
        s.cfg.arch,
        s.method,
        s.state.step,
        to_dict(s.cfg),
        s.shards.manifest,
        s.shards.sha256,
        s.shards.classes,
        s.cfg.augment.crop,
        MEAN,
        STD,
        run_label(s.method, s.ctx.preset, s.cfg.positives, s.cfg.dense_weight),
    )
    export(s.out, s.model, card)
    write_tsv(s.out / "plots" / "train.tsv", s.state.rows)
    write_tsv(s.out / "plots" / "monitor.tsv", s.state.monitor)
    write_json(s.out / "stats.json", metrics)
    write_json(s.out / "metrics.json", headline(metrics))
    log.info(
        "done: %d steps, %.1f samples/s, final loss %.4f, %d samples and %d shards skipped; "
        "backbone %s",
        s.state.step,
        metrics["samples_per_s"],
        metrics["final_loss"],
        metrics["skipped_samples"],
        metrics["skipped_shards"],
        s.out / "backbone.pt",
    )
    if "knn_acc" in metrics:
        log.info(
            "monitor: held-out kNN accuracy %.1f %% (random init %.1f %%)",
            metrics["knn_acc"],
            metrics.get("knn_acc_init", float("nan")),
        )
