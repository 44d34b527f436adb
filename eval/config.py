"""The `eval` section of params.yaml: the one fine-tuning recipe every init gets (DESIGN §8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from segloc.errors import UserError
from segloc.params import from_dict

Arch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@dataclass(frozen=True)
class EvalConfig:
    seed: int = 0  # repeat r trains with seed + r
    repeats: int = 3  # fine-tunes per init; results are mean ± std over them
    arch: Arch = "resnet18"  # every init must be this architecture
    head: Literal["fcn", "deeplabv3"] = "fcn"
    output_stride: Literal[8, 16, 32] = 16  # 8/16 dilate layer3+4 / layer4 instead of striding
    steps: int = 40
    batch_size: int = 8  # per process; the global batch is batch_size x world size
    crop_size: int = 96  # square training crops
    base_size: int = 128  # long image side at scale 1; test images are scored at this scale
    scale_range: tuple[float, float] = (0.75, 1.5)  # random training scale of base_size
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9  # lr = base * (1 - step / steps) ** poly_power
    amp: bool = True  # bf16 autocast, on GPU only
    workers: int = 0  # DataLoader worker processes per rank (0: load in the training process)
    threads: int = 0  # torch CPU threads per rank; 0: the cores this process may use / local ranks
    samples_per_split: int = 2  # test images per split whose predictions are kept for the report
    save_model: bool = False  # also write OUT/model.pt (the repeat-0 model's state_dict)


def load_eval_config(params: dict[str, Any]) -> EvalConfig:
    cfg = from_dict(EvalConfig, params.get("eval", {}), "eval")
    _check_positive(
        cfg, "repeats", "steps", "batch_size", "crop_size", "base_size", "samples_per_split", "lr"
    )
    _check_positive(cfg, "workers", "threads", "weight_decay", "momentum", "poly_power", zero=True)
    low, high = cfg.scale_range
    if not 0 < low <= high:
        raise UserError(f"params eval.scale_range: expected 0 < low <= high, got {[low, high]}")
    if cfg.head == "deeplabv3" and cfg.batch_size < 2:
        # ASPP's image-pooling branch runs BatchNorm on 1x1 maps: undefined for one sample.
        raise UserError("params eval.batch_size: deeplabv3 needs at least 2 images per batch")
    return cfg


def _check_positive(cfg: EvalConfig, *names: str, zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 0 or (value == 0 and not zero):
            expected = "zero or more" if zero else "a positive number"
            raise UserError(f"params eval.{name}: expected {expected}, got {value}")
