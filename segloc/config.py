"""The `data` section of params.yaml: where the labeled and unlabeled sets live, and the labeled split.

Both synthesis (which cuts segments) and fine-tuning (which trains on labels) read this section, so
they agree on the labeled subset (DESIGN §8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segloc.params import from_dict

PIDRAY_TESTS = ("easy", "hard", "hidden")  # PIDray's test splits, in its own order


@dataclass(frozen=True)
class DemoConfig:
    scale: Literal["tiny", "small", "default"] = "default"
    seed: int = 0


@dataclass(frozen=True)
class CocoSplit:
    annotations: str  # COCO instance-segmentation JSON
    images: str  # folder the JSON's file_name entries are relative to


@dataclass(frozen=True)
class BackgroundConfig:
    images: str  # folder of unlabeled scans (SIXray: JPEGImage/)
    labels: str | None = None  # SIXray label CSV marking positives; None: judge by file name only
    include_positives: bool = False  # SIXray positives hold unlabeled threat items: off by default


@dataclass(frozen=True)
class DataConfig:
    foreground: CocoSplit  # labeled train split: segments to paste, and fine-tuning labels
    background: BackgroundConfig
    test: dict[str, CocoSplit] = field(default_factory=dict)  # never used before final scoring
    demo: DemoConfig = DemoConfig()
    label_fraction: float = 1.0  # share of labeled train images that synthesis and fine-tuning see
    split_seed: int = 0


def load_data_config(params: dict[str, Any]) -> DataConfig:
    return from_dict(DataConfig, params.get("data"), "data")


def pidray_splits(root: str | Path) -> tuple[CocoSplit, dict[str, CocoSplit]]:
    """Train and test splits of a folder in PIDray layout: annotations/xray_train.json and
    annotations/xray_test_{easy,hard,hidden}.json, images in train/, easy/, hard/, hidden/."""
    root = Path(root)
    ann = root / "annotations"
    train = CocoSplit(str(ann / "xray_train.json"), str(root / "train"))
    tests = {n: CocoSplit(str(ann / f"xray_test_{n}.json"), str(root / n)) for n in PIDRAY_TESTS}
    return train, tests
