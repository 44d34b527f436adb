"""Compare fine-tuning runs (one per init) in reports/results.md with figures.

    evaluate report --runs 'runs/finetune/*' --pretrain 'runs/pretrain/*' --out reports

Reads each run's metrics.json, config.json and samples.npz (`eval.outputs`) and each pretraining
run's backbone.json and plots/train.tsv (missing ones are skipped). Writes, each file atomically:

    results.md           mIoU tables (mean ± std over repeats, n), differences to random init with
                         their standard error, per-class IoU, and the settings behind them;
                         with instance runs (`evaluate --task instance`) also COCO AP/AR tables
    miou.png             mIoU per init and split with ± std error bars
    per_class_iou.png    heatmap init x class (all test splits pooled)
    pretrain_loss.png    pretraining loss curves
    qualitative.png      scan, ground truth and each init's prediction on the same test images
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.coco_eval import REPORTED
from eval.figures import plot_miou, plot_per_class, plot_pretrain_loss, plot_samples
from eval.outputs import OVERALL
from eval.runs import (
    RANDOM,
    Pretrain,
    Run,
    class_names,
    expand,
    label_runs,
    load_pretrain,
    load_run,
    split_names,
)
from segloc.atomic import atomic_path, write_text
from segloc.errors import UserError

log = logging.getLogger(__name__)


def main(runs: Iterable[str], pretrain: Iterable[str], out: str | Path) -> Path:
    every = [load_run(p) for p in expand(runs, "--runs")]
    loaded = label_runs([r for r in every if r.task != "instance"])
    instance = label_runs([r for r in every if r.task == "instance" and r.metrics["splits"]])
    for r in every:
        if r.task == "instance" and not r.metrics["splits"]:
            log.info("%s: instance run with eval.instance.enabled false, left out", r.path)
    if not loaded and not instance:
        raise UserError("--runs: no run with scores (instance runs were all disabled)")
    pre = [load_pretrain(p) for p in expand(pretrain, "--pretrain", required=False)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"pretrain_loss.png": plot_pretrain_loss(pre)}
    if loaded:
        figures = {
            "miou.png": plot_miou(loaded),
            "per_class_iou.png": plot_per_class(loaded),
            **figures,
            "qualitative.png": plot_samples(loaded),
        }
    for name, fig in figures.items():
        if fig is not None:
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    md = render_markdown(loaded, pre, [n for n, f in figures.items() if f is not None], instance)
    write_text(out / "results.md", md)
    log.info("wrote %s (%d runs, %d pretraining runs)", out / "results.md", len(every), len(pre))
    return out / "results.md"


def _pct(summary: dict[str, Any]) -> str:
    if summary["mean"] is None:
        return "n/a"
    std = f" ± {100 * summary['std']:.1f}" if summary["std"] is not None else ""
    return f"{100 * summary['mean']:.1f}{std}"


def delta(run: Run, base: Run, split: str, key: str = "mIoU") -> str:
    """Difference of means in points, ± its standard error sqrt(s1²/n1 + s2²/n2)."""
    a, b = run.summary(split, key), base.summary(split, key)
    if a["mean"] is None or b["mean"] is None:
        return "n/a"
    diff = f"{100 * (a['mean'] - b['mean']):+.1f}"
    if a["std"] is None or b["std"] is None:
        return diff
    se = math.sqrt(a["std"] ** 2 / len(a["values"]) + b["std"] ** 2 / len(b["values"]))
    return f"{diff} ± {100 * se:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def score_table(runs: list[Run], key: str) -> str:
    splits = split_names(runs)
    rows = [
        [r.label, str(r.metrics["repeats"])] + [_pct(r.summary(s, key)) for s in splits]
        for r in runs
    ]
    return _table(["init", "n", *splits], rows)


def delta_table(runs: list[Run], key: str) -> str | None:
    base = next((r for r in runs if r.kind == RANDOM), None)
    if base is None:
        return None
    splits = split_names(runs)
    rows = [[r.label] + [delta(r, base, s, key) for s in splits] for r in runs if r is not base]
    return _table(["init", *splits], rows) if rows else None


def per_class_table(runs: list[Run], split: str = OVERALL) -> str:
    names = class_names(runs)
    rows = []
    for r in runs:
        ious = r.metrics["splits"][split]["per_class_iou"]
        rows.append(
            [r.label] + [f"{100 * ious[n]:.1f}" if ious.get(n) is not None else "–" for n in names]
        )
    return _table(["init", *names], rows)


def accuracy_table(runs: list[Run]) -> str:
    rows = [
        [r.label, _pct(r.summary(OVERALL, "mAcc")), _pct(r.summary(OVERALL, "aAcc"))] for r in runs
    ]
    return _table(["init", "mAcc", "aAcc"], rows)


def settings_diff(runs: list[Run]) -> list[str]:
    """Eval keys on which runs disagree: such a comparison is not like for like."""
    first = runs[0].config["eval"]
    return sorted({k for r in runs[1:] for k, v in r.config["eval"].items() if first.get(k) != v})


def render_markdown(
    runs: list[Run], pre: list[Pretrain], figures: list[str], instance: list[Run] | None = None
) -> str:
    """Semantic `runs` (mIoU) and/or `instance` runs (COCO AP/AR), each part only if given."""
    parts = ["# Segmentation transfer results\n"]
    if runs:
        parts += _semantic_parts(runs, figures)
    else:
        parts += [f"![{name}]({name})\n" for name in figures]
    if instance:
        parts += instance_parts(instance)
    parts += [_finetune_settings(runs or instance or []), _pretrain_settings(pre)]
    return "\n".join(parts)


def _semantic_parts(runs: list[Run], figures: list[str]) -> list[str]:
    parts = [_reading_guide(runs)]
    differ = settings_diff(runs)
    if differ:
        parts.append(
            f"**Warning:** the runs differ in eval settings {', '.join(differ)}; "
            "their scores are not a like-for-like comparison.\n"
        )
    parts += ["## mIoU (%), background included\n", score_table(runs, "mIoU")]
    deltas = delta_table(runs, "mIoU")
    if deltas:
        parts += ["## Difference to random init (mIoU points ± standard error)\n", deltas]
    parts += ["## Foreground mIoU (%), item classes only\n", score_table(runs, "mIoU_fg")]
    deltas = delta_table(runs, "mIoU_fg")
    if deltas:
        parts += [
            "### Difference to random init (foreground mIoU points ± standard error)\n",
            deltas,
        ]
    parts += [
        "## Accuracy (%), all test splits pooled\n",
        accuracy_table(runs),
        "## Per-class IoU (%), all test splits pooled, mean over repeats\n",
        per_class_table(runs),
    ]
    parts += [f"![{name}]({name})\n" for name in figures]
    return parts


def instance_table(runs: list[Run], iou_type: str) -> str:
    """Rows init x split, columns the COCO summary numbers (%, mean ± std over repeats)."""
    rows = [
        [r.label, split, str(r.metrics["repeats"])]
        + [_pct(r.summary(split, f"{iou_type}_{stat}")) for stat in REPORTED]
        for r in runs
        for split in r.metrics["splits"]
    ]
    return _table(["init", "split", "n", *REPORTED], rows)


def instance_parts(runs: list[Run]) -> list[str]:
    parts = [
        "## Instance segmentation (Mask R-CNN): COCO AP/AR (%)\n",
        "Scored with pycocotools' COCOeval on each test split; AP averages IoU thresholds "
        "0.50:0.95, AR@k allows k detections per image; `n/a` where a split has no instance of "
        "that size. Mean ± sample std over repeats.\n",
    ]
    for iou_type, title in (("segm", "Masks (segm)"), ("bbox", "Boxes (bbox)")):
        parts += [f"### {title}\n", instance_table(runs, iou_type)]
    base = next((r for r in runs if r.kind == RANDOM), None)
    others = [r for r in runs if r is not base]
    if base is not None and others:
        splits = list(base.metrics["splits"])
        rows = [
            [r.label, key] + [delta(r, base, s, key) for s in splits]
            for r in others
            for key in ("segm_AP", "bbox_AP")
            if all(s in r.metrics["splits"] for s in splits)
        ]
        parts += [
            "### Difference to random init (AP points ± standard error)\n",
            _table(["init", "metric", *splits], rows),
        ]
    return parts


def _reading_guide(runs: list[Run]) -> str:
    n = sorted({r.metrics["repeats"] for r in runs})
    return (
        "Each init is fine-tuned with the same recipe and labels, repeated with seeds "
        f"eval.seed + 0..n-1 (n = {', '.join(map(str, n))}); cells are mean ± sample std over "
        "the repeats. mIoU averages IoU over the classes present in the prediction or the ground "
        "truth of a split, background included; `overall` pools all test splits into one "
        "confusion matrix. A difference to random init is worth reading only where it is "
        "clearly larger than its standard error.\n"
    )


def _finetune_settings(runs: list[Run]) -> str:
    cfg, data = runs[0].config["eval"], runs[0].config["data"]
    lines = [
        "## Fine-tuning settings\n",
        f"Labeled train images: {data['labeled_images']} of {data['train_images']}; "
        "test images: " + ", ".join(f"{k} {v['images']}" for k, v in data["test"].items()) + ".\n",
        _table(["key", "value"], [[k, json.dumps(v)] for k, v in sorted(cfg.items())]),
        _table(
            ["init", "weights", "run folder"],
            [[r.label, str(r.config["init"]["path"] or "–"), str(r.path)] for r in runs],
        ),
    ]
    return "\n".join(lines)


def _pretrain_settings(pre: list[Pretrain]) -> str:
    if not pre:
        return "## Pretraining settings\n\nNo pretraining runs given.\n"
    rows = [
        [p.label, str(p.meta.get("arch", "?")), str(p.meta.get("steps", "?")), str(p.path)]
        for p in pre
    ]
    parts = ["## Pretraining settings\n", _table(["method", "arch", "steps", "run folder"], rows)]
    for p in pre:
        config = json.dumps(p.meta.get("config", {}), indent=2, sort_keys=True)
        parts.append(
            f"<details><summary>{p.label} config</summary>\n\n```json\n{config}\n```\n</details>\n"
        )
    return "\n".join(parts)
