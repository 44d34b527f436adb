"""The `data` section of params.yaml: where the labeled and unlabeled sets live, and the labeled split.

Both synthesis (which cuts segments) and fine-tuning (which trains on labels) read this section, so
they agree on the labeled subset (docs/design.md §5.5).

Both sets may be named by the root of their published layout: `data.foreground.images` a PIDray
root (its train split, and its test splits unless `data.test` names others) when
`data.foreground.annotations` is omitted, `data.background.images` a SIXray root (`JPEGImage/`,
and a label CSV under `ImageSet/` unless `data.background.labels` names one).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from segloc.errors import UserError
from segloc.params import from_dict

PIDRAY_TESTS = ("easy", "hard", "hidden")  # PIDray's test splits, in its own order
SIXRAY_SCANS = "JPEGImage"
SIXRAY_LABELS = ("ImageSet/10/train.csv", "ImageSet/train.csv")  # preferred, in this order


@dataclass(frozen=True)
class DemoConfig:
    scale: Literal["tiny", "small", "default", "full"] = "default"
    seed: int = 0


@dataclass(frozen=True)
class CocoSplit:
    images: str  # folder the JSON's file_name entries are relative to (or a PIDray root, above)
    annotations: str | None = None  # COCO instance-segmentation JSON; required but for the above


@dataclass(frozen=True)
class BackgroundConfig:
    images: str  # folder of unlabeled scans, or a SIXray root holding JPEGImage/
    labels: str | None = None  # label CSV marking positives; None: the root's, else by name only
    include_positives: bool = False  # SIXray positives hold unlabeled threat items: off by default


DEMO = "data/demo"  # where the `demo` stage writes the embedded default's stand-ins


def _demo_split(name: str, annotations: str) -> CocoSplit:
    return CocoSplit(f"{DEMO}/pidray/{name}", f"{DEMO}/pidray/annotations/{annotations}")


@dataclass(frozen=True)
class DataConfig:
    """Defaults: the embedded default's stand-ins, as params.yaml names them."""

    # labeled train split: segments to paste, and fine-tuning labels
    foreground: CocoSplit = _demo_split("train", "xray_train.json")
    background: BackgroundConfig = BackgroundConfig(
        f"{DEMO}/sixray/JPEGImage", f"{DEMO}/sixray/ImageSet/train.csv"
    )
    # never used before final scoring
    test: dict[str, CocoSplit] = field(
        default_factory=lambda: {n: _demo_split(n, f"xray_test_{n}.json") for n in PIDRAY_TESTS}
    )
    demo: DemoConfig = DemoConfig()
    label_fraction: float = 1.0  # share of labeled train images that synthesis and fine-tuning see
    split_seed: int = 0


def load_data_config(params: dict[str, Any]) -> DataConfig:
    section = params.get("data")
    data = from_dict(DataConfig, {} if section is None else section, "data")
    for name, split in data.test.items():
        if split.annotations is None:
            raise UserError(f"params data.test.{name}.annotations: missing (a COCO JSON)")
    if data.foreground.annotations is not None:
        return data
    # A PIDray root stands for its test splits too, unless the params name their own.
    return _pidray_root(data, keep_test=section is not None and "test" in section)


def _pidray_root(data: DataConfig, keep_test: bool) -> DataConfig:
    root = Path(data.foreground.images)
    train, tests = pidray_splits(root)
    if not Path(train.annotations).is_file():
        raise UserError(
            f"params data.foreground.annotations: missing, and data.foreground.images {root} is "
            f"not a PIDray root ({train.annotations} not found)"
        )
    return replace(data, foreground=train, test=data.test if keep_test else tests)


def pidray_splits(root: str | Path) -> tuple[CocoSplit, dict[str, CocoSplit]]:
    """Train and test splits of a folder in PIDray layout: annotations/xray_train.json and
    annotations/xray_test_{easy,hard,hidden}.json, images in train/, easy/, hard/, hidden/."""
    root = Path(root)
    ann = root / "annotations"
    train = CocoSplit(str(root / "train"), str(ann / "xray_train.json"))
    tests = {n: CocoSplit(str(root / n), str(ann / f"xray_test_{n}.json")) for n in PIDRAY_TESTS}
    return train, tests


def background_paths(bg: BackgroundConfig) -> tuple[Path, Path | None]:
    """The folder of scans and the label CSV (None: positives judged by name) of `data.background`;
    a SIXray root gives its JPEGImage/ and, unless `labels` names one, `find_sixray_labels`."""
    images = Path(bg.images)
    labels = Path(bg.labels) if bg.labels else None
    if not (images / SIXRAY_SCANS).is_dir():
        return images, labels
    return images / SIXRAY_SCANS, labels or find_sixray_labels(images)


def find_sixray_labels(root: Path) -> Path | None:
    """The label CSV of a SIXray root: the first of SIXRAY_LABELS there, else the only CSV under
    ImageSet/, else None (none at all); several others are ambiguous, an error that lists them."""
    for rel in SIXRAY_LABELS:
        if (root / rel).is_file():
            return root / rel
    found = sorted((root / "ImageSet").rglob("*.csv")) if (root / "ImageSet").is_dir() else []
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found[:8])
        more = " ..." if len(found) > 8 else ""
        raise UserError(
            f"{root}: {len(found)} label CSVs under ImageSet/ ({names}{more}); "
            "name the one that marks the positives in params data.background.labels"
        )
    return found[0] if found else None
