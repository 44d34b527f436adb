"""The `eval` section of params.yaml: the one fine-tuning recipe every init gets
(docs/design.md §5.5)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segloc.config import DataConfig
from segloc.errors import UserError
from segloc.params import from_dict
from segloc.params import load_run_params as run_params

Arch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@dataclass(frozen=True)
class InstanceConfig:
    """`evaluate --task instance`: Mask R-CNN transfer scored with COCO AP/AR (an opt-in command,
    not a pipeline stage). Seeds, arch, amp, workers and threads come from the `eval` section."""

    repeats: int = 3
    steps: int = 40
    batch_size: int = 4  # per process
    min_size: int = 128  # Mask R-CNN resizes the short side to this (capped by max_size)
    max_size: int = 160
    lr: float = 0.01  # SGD with momentum, poly decay after the warm-up
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
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
    """Protocol `probe`, the linear read-out: the backbone frozen, its fused stride-8 features
    (C3 + upsampled C4, C5) computed once per backbone and kept for every seed, a 1x1 conv
    trained on them. Seeds and base_size come from `eval`."""

    repeats: int = 2  # heads trained per init (seeds eval.seed + 0..repeats-1)
    epochs: int = 40  # passes over the labeled train images
    batch_size: int = 16  # images per step
    lr: float = 0.03  # AdamW, cosine-decayed to 0 (0.01 left SSL features under-trained)
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class MlpProbeConfig:
    """Protocol `probe_mlp`, the non-linear read-out: the same frozen features, a small conv head
    (1x1 to `hidden` channels, two 3x3 conv-BN-ReLU layers, a 1x1 classifier) trained with random
    flips and right-angle turns of the feature map and its labels. A linear head can reward a
    representation that a non-linear one finds no better than random features."""

    repeats: int = 1
    epochs: int = 40
    batch_size: int = 16
    lr: float = 0.003  # AdamW, cosine-decayed to 0
    weight_decay: float = 1e-4
    hidden: int = 64  # channels of the head's conv layers
    augment: bool = True  # the eight flips/turns of the square, drawn per scan and step


@dataclass(frozen=True)
class FinetuneConfig:
    """Protocols `finetune` and `finetune_<N>pct`: the whole network trained from the init, the
    paper's protocol. On a CPU, `fused` with AdamW learns the demo in minutes (docs/design.md
    §5.2); FCN/DeepLabV3 on the dilated ResNet with SGD is the GPU recipe."""

    repeats: int = 1  # fine-tunes per init (seeds eval.seed + 0..repeats-1)
    # fused: a 1x1 conv on the fused stride-8 map (C3 + upsampled C4, C5), no dilation
    head: Literal["fcn", "deeplabv3", "fused"] = "fused"
    # fcn / deeplabv3 only: 8/16 dilate layer3+4 / layer4 instead of striding (fused reads C3..C5)
    output_stride: Literal[8, 16, 32] = 16
    steps: int = 150
    batch_size: int = 16  # per process; the global batch is batch_size x world size
    crop_size: int = 80  # square training crops
    scale_range: tuple[float, float] = (0.75, 1.5)  # random training scale of eval.base_size
    # Re-draw a crop (up to 10 times) while one class holds more than this share of its labeled
    # pixels; 1.0: off. Keeps small items in the batches (the usual 0.75 of segmentation recipes).
    cat_max_ratio: float = 0.75
    optimizer: Literal["sgd", "adamw"] = "adamw"  # adamw ignores momentum
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 0.05
    poly_power: float = 0.9  # lr = base * (1 - step / steps) ** poly_power
    # Linear lr warm-up: the new head's first, large gradients would otherwise reach a
    # pretrained trunk at full lr (0: none).
    warmup_steps: int = 0


@dataclass(frozen=True)
class EvalConfig:
    # What `evaluate` runs when --protocol is not given (docs/design.md §5): probe (linear head
    # on frozen stride-8 features), probe_mlp (small conv head, augmented), finetune (the whole
    # network, the paper's protocol) or finetune_<N>pct (the same on N % of the labeled split).
    protocol: str = "probe"
    # The fine-tuning read-outs `dvc repro` runs beside the two probes: every labeled scan
    # (finetune) and a share of them (finetune_<N>pct).
    finetune_protocols: tuple[str, ...] = ("finetune", "finetune_10pct")
    seed: int = 0  # repeat r trains with seed + r
    arch: Arch = "resnet18"  # every init must be this architecture
    base_size: int = 112  # long image side at scale 1; test images are scored at this scale
    amp: bool = True  # bf16 autocast, on GPU only
    workers: int = 0  # DataLoader worker processes per rank (0: load in the training process)
    threads: int = 0  # torch CPU threads per rank; 0: the cores this process may use / local ranks
    samples_per_split: int = 2  # test images per split whose predictions are kept for the report
    save_model: bool = False  # also write OUT/model.pt (the repeat-0 model's state_dict)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    probe_mlp: MlpProbeConfig = field(default_factory=MlpProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)


@dataclass(frozen=True)
class Protocol:
    """A read-out by the name results.json gives it."""

    name: str  # probe | probe_mlp | finetune | finetune_<N>pct
    kind: Literal["probe", "probe_mlp", "finetune"]
    label_fraction: float | None = None  # finetune_<N>pct: N / 100 of the labeled train split


PROTOCOL_KINDS = ("probe", "probe_mlp", "finetune")
_LOW_LABEL = re.compile(r"finetune_(\d+(?:\.\d+)?)pct")


def parse_protocol(name: str, key: str = "eval.protocol") -> Protocol:
    """`finetune_10pct` is fine-tuning on 10 % of the labeled train split; the rest by kind."""
    if name in PROTOCOL_KINDS:
        return Protocol(name, name)
    low = _LOW_LABEL.fullmatch(name)
    if low and 0.0 < float(low.group(1)) <= 100.0:
        return Protocol(name, "finetune", float(low.group(1)) / 100.0)
    where = key if key.startswith("--") else f"params {key}"
    raise UserError(
        f"{where}: {name!r} is no protocol (expected {', '.join(PROTOCOL_KINDS)} or "
        "finetune_<N>pct, e.g. finetune_10pct)"
    )


def load_eval_config(params: dict[str, Any]) -> EvalConfig:
    cfg = from_dict(EvalConfig, params.get("eval", {}), "eval")
    parse_protocol(cfg.protocol)
    for i, name in enumerate(cfg.finetune_protocols):
        if parse_protocol(name, f"eval.finetune_protocols[{i}]").kind != "finetune":
            raise UserError(
                f"params eval.finetune_protocols[{i}]: {name!r} is not a fine-tuning protocol "
                "(finetune or finetune_<N>pct)"
            )
    _check_positive(cfg, "eval", "base_size", "samples_per_split")
    _check_positive(cfg, "eval", "workers", "threads", zero=True)
    _check_finetune(cfg.finetune)
    _check_instance(cfg.instance)
    _check_probe(cfg.probe, "probe")
    _check_probe(cfg.probe_mlp, "probe_mlp")
    if cfg.probe_mlp.hidden <= 0:
        raise UserError("params eval.probe_mlp.hidden: expected a positive number")
    return cfg


def _check_finetune(ft: FinetuneConfig) -> None:
    _check_positive(ft, "eval.finetune", "repeats", "steps", "batch_size", "crop_size", "lr")
    _check_positive(
        ft, "eval.finetune", "weight_decay", "momentum", "poly_power", "warmup_steps", zero=True
    )
    if not 0 < ft.cat_max_ratio <= 1:
        raise UserError(
            f"params eval.finetune.cat_max_ratio: expected 0 < ratio <= 1, got {ft.cat_max_ratio}"
        )
    low, high = ft.scale_range
    if not 0 < low <= high:
        raise UserError(
            f"params eval.finetune.scale_range: expected 0 < low <= high, got {[low, high]}"
        )
    if ft.head == "deeplabv3" and ft.batch_size < 2:
        # ASPP's image-pooling branch runs BatchNorm on 1x1 maps: undefined for one sample.
        raise UserError(
            "params eval.finetune.batch_size: deeplabv3 needs at least 2 images per batch"
        )


def _check_probe(probe: ProbeConfig | MlpProbeConfig, section: str) -> None:
    for name in ("repeats", "epochs", "batch_size", "lr"):
        if getattr(probe, name) <= 0:
            raise UserError(f"params eval.{section}.{name}: expected a positive number")
    if probe.weight_decay < 0:
        raise UserError(f"params eval.{section}.weight_decay: expected zero or more")


def _check_instance(inst: InstanceConfig) -> None:
    positive = ("repeats", "steps", "batch_size", "min_size", "max_size", "lr", "proposals")
    _check_positive(inst, "eval.instance", "weight_decay", "momentum", "poly_power", zero=True)
    for name in (*positive, "rois_per_image", "detections_per_image"):
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


def _check_positive(cfg: Any, section: str, *names: str, zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 0 or (value == 0 and not zero):
            expected = "zero or more" if zero else "a positive number"
            raise UserError(f"params {section}.{name}: expected {expected}, got {value}")


def load_run_params(path: str | Path | None, overrides: Iterable[str]) -> dict[str, Any]:
    """params.yaml (None: ./params.yaml if present) over the code defaults of `data` and `eval`,
    then --set overrides (`segloc.params.load_run_params`)."""
    return run_params(path, overrides, {"data": DataConfig, "eval": EvalConfig})
