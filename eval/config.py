"""The `eval` section of params.yaml: the one fine-tuning recipe every init gets
(docs/design.md §5.5)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segloc.errors import UserError
from segloc.params import apply_override, from_dict, load_params, to_dict

DEFAULT_PARAMS = Path("params.yaml")

Arch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@dataclass(frozen=True)
class InstanceConfig:
    """`evaluate --task instance`: Mask R-CNN transfer scored with COCO AP/AR. Seeds, repeats, arch,
    momentum, weight decay, poly power, amp, workers and threads come from the `eval` section."""

    enabled: bool = False  # off: `--task instance` writes a stub and trains nothing (CPU budget)
    steps: int = 40
    batch_size: int = 4  # per process
    min_size: int = 128  # Mask R-CNN resizes the short side to this (capped by max_size)
    max_size: int = 160
    lr: float = 0.01
    warmup_steps: int = 10  # linear lr warm-up: detection heads diverge at full lr from step 0
    # Backbone BN. batch: trained (SyncBN under DDP on GPU), the protocol of MoCo's detection
    # transfer and He et al. 2019, fair to random init, whose BN has no statistics to freeze;
    # frozen: torchvision's detection default, the init's statistics kept as they are.
    norm: Literal["frozen", "batch"] = "batch"
    trainable_layers: int = 5  # ResNet stages fine-tuned, counted from layer4 (5: all of them)
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level, P2..P6
    proposals: int = 300  # RPN boxes kept after NMS per image (torchvision: 2000/1000)
    rois_per_image: int = 64  # RoIs sampled per image for the box/mask losses (torchvision: 512)
    detections_per_image: int = 100  # the AR@100 budget


@dataclass(frozen=True)
class ProbeConfig:
    """`eval.protocol: probe`: the backbone frozen, its fused stride-8 features (C3 + upsampled
    C4, C5) computed once per backbone and kept for every seed, a 1x1-conv head trained on them.
    Batch, lr and weight decay are the head's own; seeds, repeats and base_size come from `eval`."""

    epochs: int = 40  # passes over the labeled train images
    batch_size: int = 16  # images per step
    lr: float = 0.03  # AdamW, cosine-decayed to 0 (0.01 left SSL features under-trained)
    weight_decay: float = 1e-4
    hidden: int = 0  # 0: a linear (1x1 conv) head; > 0: 1x1 conv, BN, ReLU, 1x1 conv


@dataclass(frozen=True)
class EvalConfig:
    # probe: frozen backbone, a light head on its stride-8 features (CPU default,
    # docs/design.md §5.1); finetune: the whole network trained (the paper's protocol, for GPUs).
    protocol: Literal["probe", "finetune"] = "probe"
    seed: int = 0  # repeat r trains with seed + r
    repeats: int = 3  # fine-tunes per init; results are mean ± std over them
    arch: Arch = "resnet18"  # every init must be this architecture
    # fused: a 1x1 conv on the fused stride-8 map (C3 + upsampled C4, C5), no dilation
    head: Literal["fcn", "deeplabv3", "fused"] = "fcn"
    # fcn / deeplabv3 only: 8/16 dilate layer3+4 / layer4 instead of striding (fused reads C3..C5)
    output_stride: Literal[8, 16, 32] = 16
    steps: int = 40
    batch_size: int = 8  # per process; the global batch is batch_size x world size
    crop_size: int = 96  # square training crops
    base_size: int = 128  # long image side at scale 1; test images are scored at this scale
    scale_range: tuple[float, float] = (0.75, 1.5)  # random training scale of base_size
    # Re-draw a crop (up to 10 times) while one class holds more than this share of its labeled
    # pixels; 1.0: off. Keeps small items in the batches (the usual 0.75 of segmentation recipes).
    cat_max_ratio: float = 0.75
    # protocol finetune only (the probe's head has its own AdamW; instance training uses SGD)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw ignores momentum
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9  # lr = base * (1 - step / steps) ** poly_power
    amp: bool = True  # bf16 autocast, on GPU only
    workers: int = 0  # DataLoader worker processes per rank (0: load in the training process)
    threads: int = 0  # torch CPU threads per rank; 0: the cores this process may use / local ranks
    samples_per_split: int = 2  # test images per split whose predictions are kept for the report
    save_model: bool = False  # also write OUT/model.pt (the repeat-0 model's state_dict)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)


def load_eval_config(params: dict[str, Any]) -> EvalConfig:
    cfg = from_dict(EvalConfig, params.get("eval", {}), "eval")
    _check_positive(
        cfg, "repeats", "steps", "batch_size", "crop_size", "base_size", "samples_per_split", "lr"
    )
    _check_positive(cfg, "workers", "threads", "weight_decay", "momentum", "poly_power", zero=True)
    if not 0 < cfg.cat_max_ratio <= 1:
        raise UserError(
            f"params eval.cat_max_ratio: expected 0 < ratio <= 1, got {cfg.cat_max_ratio}"
        )
    low, high = cfg.scale_range
    if not 0 < low <= high:
        raise UserError(f"params eval.scale_range: expected 0 < low <= high, got {[low, high]}")
    if cfg.head == "deeplabv3" and cfg.batch_size < 2:
        # ASPP's image-pooling branch runs BatchNorm on 1x1 maps: undefined for one sample.
        raise UserError("params eval.batch_size: deeplabv3 needs at least 2 images per batch")
    _check_instance(cfg.instance)
    _check_probe(cfg.probe)
    return cfg


def _check_probe(probe: ProbeConfig) -> None:
    for name in ("epochs", "batch_size", "lr"):
        if getattr(probe, name) <= 0:
            raise UserError(f"params eval.probe.{name}: expected a positive number")
    for name in ("weight_decay", "hidden"):
        if getattr(probe, name) < 0:
            raise UserError(f"params eval.probe.{name}: expected zero or more")


def _check_instance(inst: InstanceConfig) -> None:
    positive = ("steps", "batch_size", "min_size", "max_size", "lr", "proposals", "rois_per_image")
    for name in (*positive, "detections_per_image"):
        if getattr(inst, name) <= 0:
            raise UserError(f"params eval.instance.{name}: expected a positive number")
    if inst.warmup_steps < 0:
        raise UserError("params eval.instance.warmup_steps: expected zero or more")
    if inst.min_size > inst.max_size:
        raise UserError("params eval.instance.min_size: expected at most eval.instance.max_size")
    if not 0 <= inst.trainable_layers <= 5:
        raise UserError("params eval.instance.trainable_layers: expected 0..5")
    if len(inst.anchor_sizes) != 5 or min(inst.anchor_sizes) <= 0:
        raise UserError("params eval.instance.anchor_sizes: expected 5 positive sizes (P2..P6)")


def _check_positive(cfg: EvalConfig, *names: str, zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 0 or (value == 0 and not zero):
            expected = "zero or more" if zero else "a positive number"
            raise UserError(f"params eval.{name}: expected {expected}, got {value}")


def load_run_params(path: str | Path | None, overrides: Iterable[str]) -> dict[str, Any]:
    """params.yaml (if `path` is None: ./params.yaml when present) with eval defaults filled in,
    so `--set eval.KEY=VALUE` works without a params file."""
    if path is None and not DEFAULT_PARAMS.is_file():
        params: dict[str, Any] = {}
    else:
        params = load_params(path or DEFAULT_PARAMS)
    section = params.get("eval", {})
    if isinstance(section, dict):  # anything else is reported by load_eval_config
        params["eval"] = _with_defaults(to_dict(EvalConfig()), section)
    for item in overrides:
        apply_override(params, item)
    return params


def _with_defaults(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `defaults`, sub-sections (eval.instance) merged key by key."""
    merged = {**defaults, **given}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(given.get(key), dict):
            merged[key] = _with_defaults(value, given[key])
    return merged
