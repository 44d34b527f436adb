"""Compare evaluation runs (one per init and protocol) in reports/results.md and results.json.

    evaluate report --runs 'runs/eval/*' --pretrain 'runs/pretrain/*' --out reports

Reads each run's metrics.json, config.json and samples.npz (`eval.outputs`) and each pretraining
run's backbone.json and plots/train.tsv (missing ones are skipped). Runs are grouped by the
protocol their config.json names (probe, finetune); each group gets its own tables. Writes, each
file atomically:

    results.md           per protocol: foreground mIoU and mIoU tables (mean ± std over repeats,
                         n), differences to random init with their standard error, per-class IoU,
                         and the settings behind them; with instance runs (`evaluate --task
                         instance`) also COCO AP/AR tables
    results.json         the same numbers: protocol -> init -> split -> miou / fg_miou ->
                         {mean, std, n}, in percent (`results_doc`)
    miou.png             foreground mIoU per init and split with ± std error bars
    per_class_iou.png    heatmap init x class (all test splits pooled)
    pretrain_loss.png    pretraining loss curves
    qualitative.png      scan, ground truth and each init's prediction on the same test images
    (a second protocol's figures carry its name: miou_finetune.png, ...)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.coco_eval import REPORTED
from eval.figures import plot_knn, plot_miou, plot_per_class, plot_pretrain_loss, plot_samples
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
from segloc.atomic import atomic_path, write_json, write_text
from segloc.errors import UserError

log = logging.getLogger(__name__)


PROTOCOL_TITLES = {
    "probe": "Frozen-backbone probe (eval.protocol probe)",
    "finetune": "Full fine-tuning (eval.protocol finetune)",
}


def main(runs: Iterable[str], pretrain: Iterable[str], out: str | Path) -> Path:
    every = [load_run(p) for p in expand(runs, "--runs")]
    semantic = by_protocol([r for r in every if r.task != "instance"])
    instance = label_runs([r for r in every if r.task == "instance" and r.metrics["splits"]])
    for r in every:
        if r.task == "instance" and not r.metrics["splits"]:
            log.info("%s: instance run with eval.instance.enabled false, left out", r.path)
    if not semantic and not instance:
        raise UserError("--runs: no run with scores (instance runs were all disabled)")
    pre = [load_pretrain(p) for p in expand(pretrain, "--pretrain", required=False)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"pretrain_loss.png": plot_pretrain_loss(pre), "knn.png": plot_knn(pre)}
    per_protocol = {}
    for i, (protocol, group) in enumerate(semantic.items()):
        suffix = "" if i == 0 else f"_{protocol}"  # the first protocol's figures keep plain names
        mine = {
            f"miou{suffix}.png": plot_miou(group),
            f"per_class_iou{suffix}.png": plot_per_class(group),
            f"qualitative{suffix}.png": plot_samples(group),
        }
        per_protocol[protocol] = [n for n, f in mine.items() if f is not None]
        figures |= mine
    for name, fig in figures.items():
        if fig is not None:
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    shown = [n for n in ("pretrain_loss.png", "knn.png") if figures[n] is not None]
    write_json(out / "results.json", results_doc(semantic, pre))
    md = render_markdown(semantic, pre, per_protocol, instance, shown)
    write_text(out / "results.md", md)
    log.info("wrote %s (%d runs, %d pretraining runs)", out / "results.md", len(every), len(pre))
    return out / "results.md"


def by_protocol(runs: list[Run]) -> dict[str, list[Run]]:
    """Semantic runs grouped by evaluation protocol, probe first, each group labeled apart."""
    groups = {p: label_runs([r for r in runs if r.protocol == p]) for p in PROTOCOL_TITLES}
    return {p: g for p, g in groups.items() if g}


def results_doc(semantic: dict[str, list[Run]], pre: list[Pretrain] = ()) -> dict[str, Any]:
    """results.json: protocol -> init -> split -> {miou, fg_miou} -> {mean, std, n}, percent;
    and "pretrain" -> method -> {knn_acc} (the monitor's final held-out kNN accuracy, percent),
    with "random" the first run's step-0 figure. Inits and methods are named as dvc.yaml names
    them (the pretraining run's folder, or `random`)."""

    def pct(summary: dict[str, Any]) -> dict[str, Any]:
        scale = lambda v: None if v is None else round(100 * v, 4)  # noqa: E731
        return {
            "mean": scale(summary["mean"]),
            "std": scale(summary["std"]),
            "n": len(summary["values"]),
        }

    doc: dict[str, Any] = {
        protocol: {
            r.init_key: {
                split: {"miou": pct(r.summary(split)), "fg_miou": pct(r.summary(split, "mIoU_fg"))}
                for split in r.metrics["splits"]
            }
            for r in group
        }
        for protocol, group in semantic.items()
    }
    monitored = [p for p in pre if p.metrics.get("knn_acc") is not None]
    if monitored:
        doc["pretrain"] = {p.path.name: {"knn_acc": p.metrics["knn_acc"]} for p in monitored}
        init = next(
            (p.metrics["knn_acc_init"] for p in monitored if "knn_acc_init" in p.metrics), None
        )
        if init is not None:
            doc["pretrain"]["random"] = {"knn_acc": init}
    return doc


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
    semantic: dict[str, list[Run]],
    pre: list[Pretrain],
    figures: dict[str, list[str]],
    instance: list[Run] | None = None,
    other_figures: list[str] = (),
) -> str:
    """Semantic runs (mIoU) per protocol, with that protocol's `figures`, and/or `instance`
    runs (COCO AP/AR); `other_figures` (the pretraining curves) after them."""
    parts = ["# Segmentation transfer results\n"]
    for protocol, runs in semantic.items():
        parts += [f"## {PROTOCOL_TITLES[protocol]}\n", *_semantic_parts(runs)]
        parts += [f"![{name}]({name})\n" for name in figures.get(protocol, [])]
    monitor = monitor_table(pre)
    if monitor:
        parts += ["## Pretraining monitor\n", MONITOR_GUIDE, monitor]
    parts += [f"![{name}]({name})\n" for name in other_figures]
    if instance:
        parts += instance_parts(instance)
    for protocol, runs in semantic.items():
        parts.append(_eval_settings(runs, PROTOCOL_TITLES[protocol]))
    if instance:
        parts.append(_eval_settings(instance, "Instance segmentation"))
    parts.append(_pretrain_settings(pre))
    return "\n".join(parts)


MONITOR_GUIDE = (
    "Held-out instances (shard samples never trained on), embedded by the mask average of the "
    "trunk's stride-8 map: leave-one-out kNN class accuracy at step 0 (random init) and at the "
    "end, and for contrastive methods the fresh-bank probe's loss against keys of the current "
    "momentum encoder beside its chance level (below chance: the embedding tells instances "
    "apart by content).\n"
)


def monitor_table(pre: list[Pretrain]) -> str | None:
    rows = []
    for p in pre:
        m = p.metrics
        if m.get("knn_acc") is None:
            continue
        fresh = m.get("fresh_bank_loss")
        rows.append(
            [
                p.label,
                f"{m['knn_acc_init']:.1f}" if m.get("knn_acc_init") is not None else "–",
                f"{m['knn_acc']:.1f}",
                f"{fresh:.3f}" if fresh is not None else "–",
                f"{m['chance_loss']:.3f}" if m.get("chance_loss") is not None else "–",
            ]
        )
    header = ["method", "kNN at step 0 (%)", "kNN at the end (%)", "fresh-bank loss", "chance"]
    return _table(header, rows) if rows else None


def _semantic_parts(runs: list[Run]) -> list[str]:
    parts = [_reading_guide(runs)]
    differ = settings_diff(runs)
    if differ:
        parts.append(
            f"**Warning:** the runs differ in eval settings {', '.join(differ)}; "
            "their scores are not a like-for-like comparison.\n"
        )
    parts += ["### Foreground mIoU (%), item classes only\n", score_table(runs, "mIoU_fg")]
    deltas = delta_table(runs, "mIoU_fg")
    if deltas:
        parts += [
            "### Difference to random init (foreground mIoU points ± standard error)\n",
            deltas,
        ]
    parts += ["### mIoU (%), background included\n", score_table(runs, "mIoU")]
    deltas = delta_table(runs, "mIoU")
    if deltas:
        parts += ["### Difference to random init (mIoU points ± standard error)\n", deltas]
    parts += [
        "### Accuracy (%), all test splits pooled\n",
        accuracy_table(runs),
        "### Per-class IoU (%), all test splits pooled, mean over repeats\n",
        per_class_table(runs),
    ]
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
    how = (
        "Each init's backbone is frozen and a 1x1-conv head is trained on its stride-8 features"
        if runs[0].protocol == "probe"
        else "Each init is fine-tuned"
    )
    return (
        f"{how} with the same recipe and labels, repeated with seeds "
        f"eval.seed + 0..n-1 (n = {', '.join(map(str, n))}); cells are mean ± sample std over "
        "the repeats. mIoU averages IoU over the classes present in the prediction or the ground "
        "truth of a split, background included; `overall` pools all test splits into one "
        "confusion matrix. A difference to random init is worth reading only where it is "
        "clearly larger than its standard error.\n"
    )


def _eval_settings(runs: list[Run], title: str) -> str:
    cfg, data = runs[0].config["eval"], runs[0].config["data"]
    lines = [
        f"## Settings: {title}\n",
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
