"""What an evaluation run writes, all at once into OUT (`segloc.atomic.atomic_dir`):

OUT/metrics.json                 the headline for `dvc metrics show`: fg_miou per split and
                                 overall, miou overall (percent, mean over repeats), and the
                                 library versions that made it (`segloc.provenance`)
OUT/scores.json                  per split (and "overall"): mIoU, mIoU_fg, mAcc, aAcc as
                                 {mean, std, values} over repeats; per_class_iou means; what the
                                 report reads
OUT/config.json                  resolved eval config, data paths, init
OUT/confusion.json               pixel confusion matrices per split, summed over repeats
OUT/plots/per_class_iou.json     records {split, class, iou} (means over repeats)
OUT/plots/confusion_{split}.json records {actual, predicted}: 100 per ground-truth class, in
                                 proportion to its row of the matrix (DVC's confusion template
                                 counts records, so it shows row percentages)
OUT/plots/finetune_loss.json     records {step, loss, repeat}
OUT/samples.npz                  scan, ground truth and repeat-0 prediction of a few test images
OUT/model.pt                     repeat-0 model state_dict (only with eval.save_model)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.metrics import scores, summarize
from segloc.atomic import atomic_dir, torch_save, write_json
from segloc.provenance import versions

OVERALL = "overall"  # all test splits pooled into one confusion matrix
METRICS = "metrics.json"
SCORES = "scores.json"
SUMMARY_KEYS = ("mIoU", "mIoU_fg", "mAcc", "aAcc")
RECORDS_PER_CLASS = 100


@dataclass
class RepeatResult:
    seed: int
    matrices: dict[str, np.ndarray]  # split (and OVERALL) -> CxC pixel counts
    losses: list[float]
    seconds: dict[str, float]  # "train", "test"
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # repeat 0 only
    state: dict[str, torch.Tensor] | None = None  # repeat 0 with save_model only


def metrics_doc(results: list[RepeatResult], names: tuple[str, ...], init: dict) -> dict[str, Any]:
    splits = {}
    for split in results[0].matrices:
        per_repeat = [scores(r.matrices[split]) for r in results]
        entry = {key: summarize([s[key] for s in per_repeat]) for key in SUMMARY_KEYS}
        entry["per_class_iou"] = {
            name: summarize([s["iou"][c] for s in per_repeat])["mean"]
            for c, name in enumerate(names)
        }
        splits[split] = entry
    return {
        "init": init["label"],
        "repeats": len(results),
        "seeds": [r.seed for r in results],
        "splits": splits,
        "seconds_per_repeat": [r.seconds for r in results],
    }


def headline(doc: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: the few numbers worth a column in `dvc metrics show` (percent, 2 decimals)."""

    def pct(split: str, key: str) -> float | None:
        mean = doc["splits"][split][key]["mean"]
        return None if mean is None else round(100 * mean, 2)

    return {
        "fg_miou": {split: pct(split, "mIoU_fg") for split in doc["splits"]},
        "miou": {OVERALL: pct(OVERALL, "mIoU")} if OVERALL in doc["splits"] else {},
        "versions": versions(),
    }


def per_class_records(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"split": split, "class": name, "iou": iou}
        for split, entry in metrics["splits"].items()
        for name, iou in entry["per_class_iou"].items()
        if iou is not None
    ]


def confusion_records(mat: np.ndarray, names: tuple[str, ...]) -> list[dict[str, str]]:
    records = []
    for actual, row in enumerate(np.asarray(mat, dtype=np.float64)):
        if row.sum() == 0:
            continue
        for pred, count in enumerate(_largest_remainder(row / row.sum() * RECORDS_PER_CLASS)):
            records += [{"actual": names[actual], "predicted": names[pred]}] * int(count)
    return records


def _largest_remainder(quotas: np.ndarray) -> np.ndarray:
    """Integers summing to round(sum(quotas)), each floor or ceil of its quota (Hamilton's method)."""
    counts = np.floor(quotas).astype(np.int64)
    short = int(round(quotas.sum())) - int(counts.sum())
    counts[np.argsort(-(quotas - counts), kind="stable")[:short]] += 1
    return counts


def write_run(
    out: str | Path, results: list[RepeatResult], names: tuple[str, ...], config: dict[str, Any]
) -> dict[str, Any]:
    metrics = metrics_doc(results, names, config["init"])
    summed = {s: sum(r.matrices[s] for r in results) for s in results[0].matrices}
    with atomic_dir(out) as tmp:
        write_json(tmp / SCORES, metrics)
        write_json(tmp / METRICS, headline(metrics))
        write_json(tmp / "config.json", config)
        write_json(
            tmp / "confusion.json",
            {"classes": list(names), "matrices": {s: m.tolist() for s, m in summed.items()}},
        )
        write_json(tmp / "plots" / "per_class_iou.json", per_class_records(metrics))
        for split, mat in summed.items():
            write_json(tmp / "plots" / f"confusion_{split}.json", confusion_records(mat, names))
        losses = [
            {"step": i, "loss": loss, "repeat": k}
            for k, r in enumerate(results)
            for i, loss in enumerate(r.losses)
        ]
        write_json(tmp / "plots" / "finetune_loss.json", losses)
        np.savez_compressed(tmp / "samples.npz", **results[0].samples)
        if results[0].state is not None:
            torch_save(results[0].state, tmp / "model.pt")
    return metrics
