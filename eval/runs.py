"""Finished runs as the report reads them: fine-tuning outputs (`eval.outputs`, `eval.instance`)
and pretraining runs (backbone.json, plots/train.tsv)."""

from __future__ import annotations

import csv
import glob
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from eval.outputs import OVERALL, SCORES
from segloc.backbone_card import WEIGHTS, card_label, read_card
from segloc.errors import UserError

log = logging.getLogger(__name__)

RANDOM = "random"


@dataclass(frozen=True)
class Run:
    path: Path
    label: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    samples: dict[str, np.ndarray] | None

    @property
    def kind(self) -> str:
        return self.config["init"]["kind"]

    @property
    def task(self) -> str:
        """Either semantic (mIoU, `eval.finetune`) or instance (COCO AP/AR, `eval.instance`)."""
        return str(self.metrics.get("task", "semantic"))

    @property
    def protocol(self) -> str:
        """probe or finetune (runs written before protocols existed were fine-tunes)."""
        return str(self.config.get("protocol", "finetune"))

    @property
    def init_key(self) -> str:
        """The init's name as dvc.yaml gives it: `random`, `imagenet`, or the folder of the
        pretraining run whose backbone.pt it loaded (e.g. `segloc-single`)."""
        path = self.config["init"].get("path")
        return self.kind if self.kind != "backbone" or not path else Path(path).parent.name

    def summary(self, split: str, key: str = "mIoU") -> dict[str, Any]:
        return self.metrics["splits"][split][key]


@dataclass(frozen=True)
class Pretrain:
    path: Path
    label: str
    meta: dict[str, Any]  # backbone.json
    curve: tuple[np.ndarray, np.ndarray] | None  # (step, loss) from plots/train.tsv
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json ({} if missing)
    knn: tuple[np.ndarray, np.ndarray] | None = None  # (step, knn_acc) from plots/monitor.tsv


def expand(patterns: Iterable[str], option: str, required: bool = True) -> list[Path]:
    """Folders named or matched by glob patterns, in the order given (matches sorted), no repeats."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"{option} {pattern}: matches nothing")
        paths += [Path(m) for m in matches if Path(m) not in paths]
    if required and not paths:
        raise UserError(f"{option}: give at least one folder")
    return paths


def load_run(path: Path) -> Run:
    metrics, config = _read_json(path / SCORES), _read_json(path / "config.json")
    try:
        label = str(config["init"]["label"])
        splits = metrics["splits"]
        key = "segm_AP" if metrics.get("task") == "instance" else "mIoU"
        _ = [splits[s][key]["mean"] for s in splits]
    except (KeyError, TypeError) as err:
        raise UserError(
            f"{path}: {SCORES}/config.json lack key {err} (not an evaluate run?)"
        ) from err
    samples_path = path / "samples.npz"
    samples = dict(np.load(samples_path)) if samples_path.is_file() else None
    return Run(path, label, metrics, config, samples)


def load_pretrain(path: Path) -> Pretrain:
    if not path.is_dir():
        raise UserError(f"--pretrain {path}: not a folder")
    meta = read_card(path / WEIGHTS)
    metrics_path = path / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    monitor = path / "plots" / "monitor.tsv"
    return Pretrain(
        path,
        card_label(meta, path),
        meta,
        _read_curve(path / "plots" / "train.tsv"),
        metrics,
        _read_curve(monitor, "knn_acc") if monitor.is_file() else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _read_curve(path: Path, column: str = "loss") -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        log.warning("%s: not found; no %s curve for this run", path, column)
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    try:
        steps = np.array([float(r["step"]) for r in rows])
        values = np.array([float(r[column]) for r in rows])
    except (KeyError, TypeError, ValueError):
        log.warning("%s: expected numeric 'step' and '%s' columns; curve skipped", path, column)
        return None
    return steps, values


def label_runs(runs: list[Run]) -> list[Run]:
    """Unique labels (two runs of one method get their folder names appended), and random init
    first: the baseline every difference is taken to."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    labeled = [
        r if counts[r.label] == 1 else replace(r, label=f"{r.label} ({r.path.name})") for r in runs
    ]
    return sorted(labeled, key=lambda r: r.kind != RANDOM)


def split_names(runs: list[Run]) -> list[str]:
    splits = [s for s in runs[0].metrics["splits"] if s != OVERALL]
    return splits + [OVERALL]


def class_names(runs: list[Run]) -> list[str]:
    return list(runs[0].config["data"]["classes"])
