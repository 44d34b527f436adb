"""The `pretrain` section of params.yaml, shared by every method (segloc, insloc, moco, supervised).

    cfg = load_pretrain_config(load_params("params.yaml", ["pretrain.steps=200"]))

Methods are presets of two switches (docs/design.md §2.7); `pooling` / `queue` left null take the
preset, set them for an ablation (e.g. `segloc` with `queue: single` is InsLoc pairing with mask
pooling).
A third switch, `positives: class`, makes the filled keys of a query's own class queue positives
too (multi-positive InfoNCE); it needs per-class queues and instance labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from segloc.errors import UserError
from segloc.params import from_dict

Pooling = Literal["mask", "box", "image"]
QueueKind = Literal["per_class", "single"]
Positives = Literal["instance", "class"]


@dataclass(frozen=True)
class Preset:
    pooling: Pooling | None  # None: no contrastive head (supervised)
    queue: QueueKind | None


METHODS: dict[str, Preset] = {
    "segloc": Preset("mask", "per_class"),
    "insloc": Preset("box", "single"),
    "moco": Preset("image", "single"),
    "supervised": Preset(None, None),
}


@dataclass(frozen=True)
class AugmentConfig:
    crop: int = 64  # side of the square crops fed to the backbone (px)
    scale: tuple[float, float] = (0.6, 1.0)  # random-resized-crop area range, share of the canvas
    ratio: tuple[float, float] = (0.75, 1.3333)
    hflip: float = 0.5
    vflip: float = 0.5  # bags lie in any orientation on the belt, so vertical flips are fair
    jitter_p: float = 0.0  # pseudo-colour encodes material: jitter cost the control a point
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2  # mild: colour encodes material in dual-energy pseudo-colour
    hue: float = 0.0  # off: a hue shift turns metal-blue into organic-orange
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # at 224 px; scaled with the crop size
    min_instance_px: int = 16  # an instance with fewer visible pixels in a crop is dropped
    box_jitter: float = 0.1  # InsLoc: query-side box shift/scale, share of the box size


@dataclass(frozen=True)
class MonitorConfig:
    """The pretraining monitor (docs/design.md §2.8): held-out kNN accuracy and the fresh-bank
    probe."""

    # One pass costs about 4-5 training steps at the CPU defaults (64 samples, ~125 instances;
    # resnet18, 160-px canvas, 112-px crops): every 100 steps keeps it near 5 % of a long run.
    every: int = 100  # steps between passes, besides the first and last step; 0: those two only
    holdout: int = 128  # samples at the end of the last shard(s), never trained on; 0: no monitor
    k: int = 20  # neighbours in the similarity-weighted kNN vote


@dataclass(frozen=True)
class PretrainConfig:
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet18"
    pool_from: Literal["c5", "stride8"] = "stride8"  # map instances are pooled from
    pooling: Pooling | None = None  # null: the method's preset
    queue: QueueKind | None = None  # null: the method's preset
    positives: Positives = "instance"  # class: own-class queue keys are positives too
    pixel_norm: bool = False  # L2-normalise each cell's features before pooling (CP2)
    predictor: bool = False  # an MLP on the query branch only (BYOL, MoCo v3, DetCon-B)
    # Over the first curriculum_steps steps, a falling share (1 -> 0) of the pairs are two crops
    # of the same composite (same scan, same paste) instead of its two views: an easy-to-hard
    # curriculum ending on SegLoc's pairs (InfoMin; progressive augmentation). 0: off.
    curriculum_steps: int = 0
    # A variant beside the paper's loss, under its own arm name: a dense term after CP2 that
    # contrasts each cell of an instance with the key's background cells, at this weight. 0: off
    # (SegLoc as published); needs mask pooling from the stride-8 map.
    dense_weight: float = 0.0
    dim: int = 128
    queue_size: int = 4096  # entries in the whole bank; per-class queues get queue_size // C each
    temperature: float = 0.2
    momentum: float = 0.98  # key-encoder momentum at step 0, cosine-raised to 1
    shuffle_bn_groups: int = 2  # key encoder: BN over shuffled sub-batches (one-process shuffle-BN)
    batch_size: int = 16  # per process
    steps: int | None = 1500  # 6-7 min per method on a 2-core CPU (64-px crops)
    epochs: float | None = None  # passes over manifest num_samples; set steps to null to use it
    lr: float = 0.032  # per 256 samples (scaled by global batch / 256)
    warmup: float = 0.05  # share of the steps with linear lr warm-up
    # sgd: MoCo-v2's recipe (lr ~0.03 per 256 over hundreds of epochs); adamw: Adam with decoupled
    # weight decay (MoCo v3's choice), far faster over the few hundred steps a CPU run affords.
    optimizer: Literal["sgd", "adamw"] = "adamw"
    weight_decay: float = 0.05
    decay_norm_bias: bool = True  # false: BatchNorm scales and biases get no weight decay
    sgd_momentum: float = 0.9  # sgd only
    nesterov: bool = False
    clip_grad: float | None = None  # max global grad norm; null: no clipping
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # Sample streams per process: batch b comes from stream b % streams, each seeded on its own,
    # so the data order depends on this number and never on how many workers read the streams.
    streams: int = 4
    workers: int = 1  # DataLoader workers per process (a divisor of streams; 0: in-process)
    shuffle_buffer: int = 512  # samples held (encoded) in each stream's shuffle buffer
    # A shard whose sha256 is not the manifest's, or a sample that does not decode: fail stops the
    # run naming it (the result would silently differ from a run on intact data), skip trains on
    # without it and counts it in metrics.json.
    bad_data: str = "fail"
    checkpoint_every: int = 250
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the query backbone (GPU)
    threads: int = 0  # torch intra-op threads; 0: torch's default (all cores)
    seed: int = 0


def load_pretrain_config(params: dict[str, Any]) -> PretrainConfig:
    section = params.get("pretrain", {})
    cfg = from_dict(PretrainConfig, section if section is not None else {}, "pretrain")
    check_config(cfg)
    return cfg


def resolve_preset(cfg: PretrainConfig, method: str) -> Preset:
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    preset = METHODS[method]
    if preset.pooling is None:
        resolved = preset
    else:
        resolved = Preset(cfg.pooling or preset.pooling, cfg.queue or preset.queue)
    _check_positives(cfg.positives, method, resolved)
    if cfg.dense_weight > 0 and (resolved.pooling != "mask" or cfg.pool_from != "stride8"):
        raise UserError(
            "params pretrain.dense_weight: the dense term needs mask pooling from the stride-8 "
            f"map (method segloc, pool_from stride8); set it to 0 for {method!r}"
        )
    return resolved


def _check_positives(positives: str, method: str, preset: Preset) -> None:
    """Class positives need instance labels and one queue per class.

    A single queue holds every class, so "its own queue" would make every key a positive and
    pull all embeddings together; moco (image level) and supervised have no instance labels.
    """
    if positives != "class":
        return
    if preset.pooling in (None, "image"):
        raise UserError(
            f"params pretrain.positives: 'class' needs instance class labels, which method "
            f"{method!r} does not use; set it to 'instance'"
        )
    if preset.queue != "per_class":
        raise UserError(
            "params pretrain.positives: 'class' needs one queue per class (a single queue mixes "
            "the classes); set pretrain.queue to per_class or positives to 'instance'"
        )


def run_label(
    method: str, preset: Preset, positives: str = "instance", dense_weight: float = 0.0
) -> str:
    """Name of a run in reports: the method, plus its switches where they differ from its preset
    (an ablation such as segloc with one queue reads "segloc (mask, single queue)", class
    positives add ", class positives", a dense term ", dense term 0.2")."""
    extra = ", class positives" if positives == "class" else ""
    extra += f", dense term {dense_weight:g}" if dense_weight > 0 else ""
    if preset == METHODS[method] and not extra:
        return method
    return f"{method} ({preset.pooling}, {preset.queue.replace('_', '-')} queue{extra})"


def total_steps(cfg: PretrainConfig, num_samples: int, world_size: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * num_samples / (cfg.batch_size * world_size)))


def check_config(cfg: PretrainConfig) -> None:
    """Reject values that type-check but cannot work, naming the key."""
    if (cfg.steps is None) == (cfg.epochs is None):
        raise UserError("params pretrain.steps / pretrain.epochs: set exactly one, the other null")
    positive = {
        "steps": cfg.steps if cfg.steps is not None else 1,
        "epochs": cfg.epochs if cfg.epochs is not None else 1,
        "batch_size": cfg.batch_size,
        "dim": cfg.dim,
        "queue_size": cfg.queue_size,
        "temperature": cfg.temperature,
        "checkpoint_every": cfg.checkpoint_every,
        "shuffle_bn_groups": cfg.shuffle_bn_groups,
        "shuffle_buffer": cfg.shuffle_buffer,
        "augment.crop": cfg.augment.crop,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"params pretrain.{key}: expected a positive number, got {value}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise UserError(
            f"params pretrain.momentum: expected a number in [0, 1), got {cfg.momentum}"
        )
    if cfg.dense_weight < 0 or cfg.curriculum_steps < 0:
        raise UserError("params pretrain.dense_weight / curriculum_steps: expected 0 or more")
    if not 0.0 <= cfg.warmup < 1.0:
        raise UserError(f"params pretrain.warmup: expected a number in [0, 1), got {cfg.warmup}")
    if cfg.workers < 0 or cfg.threads < 0:
        raise UserError("params pretrain.workers / pretrain.threads: expected 0 or more")
    if cfg.streams < 1 or (cfg.workers and cfg.streams % cfg.workers):
        raise UserError(
            f"params pretrain.workers: {cfg.workers} workers cannot share pretrain.streams "
            f"{cfg.streams} evenly; use a divisor of it (or 0, reading in-process)"
        )
    if cfg.bad_data not in ("fail", "skip"):
        raise UserError(f"params pretrain.bad_data: expected fail or skip, got {cfg.bad_data!r}")
    _check_augment(cfg.augment)
    _check_monitor(cfg.monitor)


def _check_monitor(mon: MonitorConfig) -> None:
    for key in ("every", "holdout"):
        if getattr(mon, key) < 0:
            raise UserError(
                f"params pretrain.monitor.{key}: expected 0 or more, got {getattr(mon, key)}"
            )
    if mon.k < 1:
        raise UserError(f"params pretrain.monitor.k: expected a positive integer, got {mon.k}")


def _check_augment(aug: AugmentConfig) -> None:
    lo, hi = aug.scale
    if not 0.0 < lo <= hi <= 1.0:
        raise UserError(
            f"params pretrain.augment.scale: expected 0 < min <= max <= 1, got {aug.scale}"
        )
    if not 0.0 < aug.ratio[0] <= aug.ratio[1]:
        raise UserError(f"params pretrain.augment.ratio: expected 0 < min <= max, got {aug.ratio}")
    for key in ("hflip", "vflip", "jitter_p", "blur_p"):
        if not 0.0 <= getattr(aug, key) <= 1.0:
            raise UserError(f"params pretrain.augment.{key}: expected a probability in [0, 1]")
    if not 0.0 <= aug.hue <= 0.5:
        raise UserError(
            f"params pretrain.augment.hue: expected a number in [0, 0.5], got {aug.hue}"
        )
