"""Compare evaluation runs (one per init and read-out) in reports/results.md and results.json.

    evaluate report --runs 'runs/eval/*/*' --pretrain 'runs/pretrain/*' --out reports

Reads each run's scores.json, config.json and samples.npz (`eval.outputs`) and each pretraining
run's backbone.json, metrics.json and plots (missing ones are skipped). Runs are grouped by the
read-out their config.json names (probe, probe_mlp, finetune, finetune_<N>pct). Writes, each file
atomically:

    results.md           every read-out side by side (overall foreground mIoU, the margin over
                         random init ± its standard error, and whether an init beats random init
                         beyond 2 SE under every read-out: the only claim it makes); then per
                         read-out: foreground mIoU and mIoU tables (mean ± std over repeats, n),
                         differences to random init, per-class IoU, and the settings; with
                         instance runs (`evaluate --task instance`) also COCO AP/AR tables
    results.json         the same numbers: protocol -> init -> split -> miou / fg_miou ->
                         {mean, std, n}, in percent, and pretrain -> run -> knn_acc (`results_doc`)
    miou.png             overall foreground mIoU of every init under every read-out
    per_class_iou.png    heatmap init x class under fine-tuning (else the first read-out)
    qualitative.png      scan, ground truth and each init's prediction on the same test images
    pretrain_loss.png    pretraining loss curves
    knn.png              the monitor's held-out kNN accuracy over pretraining steps
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.coco_eval import REPORTED
from eval.figures import plot_knn, plot_per_class, plot_pretrain_loss, plot_readouts, plot_samples
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

log = logging.getLogger(__name__)


PROTOCOL_ORDER = ("probe", "probe_mlp", "finetune")


def protocol_title(name: str) -> str:
    """Section title of a read-out (`eval.config.parse_protocol` names)."""
    titles = {
        "probe": "Linear probe: a 1x1 conv on the frozen stride-8 features (probe)",
        "probe_mlp": "Non-linear probe: a small conv head on the frozen features (probe_mlp)",
        "finetune": "Fine-tuning, every labeled scan: the paper's protocol (finetune)",
    }
    if name in titles:
        return titles[name]
    if name.startswith("finetune_") and name.endswith("pct"):
        return f"Fine-tuning on {name[9:-3]} % of the labeled scans ({name})"
    return name


def protocol_key(name: str) -> tuple:
    """Read-outs in a fixed order: the two probes, fine-tuning, then low-label fine-tuning by
    falling label share."""
    if name in PROTOCOL_ORDER:
        return (PROTOCOL_ORDER.index(name), 0.0, name)
    if name.startswith("finetune_") and name.endswith("pct"):
        try:
            return (len(PROTOCOL_ORDER), -float(name[9:-3]), name)
        except ValueError:
            pass
    return (len(PROTOCOL_ORDER) + 1, 0.0, name)


def main(runs: Iterable[str], pretrain: Iterable[str], out: str | Path) -> Path:
    every = [load_run(p) for p in expand(runs, "--runs")]
    semantic = by_protocol([r for r in every if r.task != "instance"])
    instance = label_runs([r for r in every if r.task == "instance"])
    pre = [load_pretrain(p) for p in expand(pretrain, "--pretrain", required=False)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # A fixed set of figures (dvc.yaml lists them): every read-out side by side; per-class IoU and
    # predictions under the paper's protocol (fine-tuning) when it ran, else the first read-out.
    ref = semantic.get("finetune") or next(iter(semantic.values()), [])
    figures = {
        "miou.png": plot_readouts(semantic) if semantic else None,
        "per_class_iou.png": plot_per_class(ref) if ref else None,
        "qualitative.png": plot_samples(ref) if ref else None,
        "pretrain_loss.png": plot_pretrain_loss(pre),
        "knn.png": plot_knn(pre),
    }
    for name, fig in figures.items():
        if fig is not None:
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    shown = [n for n, f in figures.items() if f is not None]
    write_json(out / "results.json", results_doc(semantic, pre))
    md = render_markdown(semantic, pre, instance, shown)
    write_text(out / "results.md", md)
    log.info("wrote %s (%d runs, %d pretraining runs)", out / "results.md", len(every), len(pre))
    return out / "results.md"


def by_protocol(runs: list[Run]) -> dict[str, list[Run]]:
    """Semantic runs grouped by read-out (probes first), each group labeled apart."""
    names = sorted({r.protocol for r in runs}, key=protocol_key)
    return {p: label_runs([r for r in runs if r.protocol == p]) for p in names}


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


def margin(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float | None] | None:
    """(difference of means, its standard error sqrt(s1²/n1 + s2²/n2), or None when either side
    has no spread) of two results.json cells {mean, std, n}; None when a mean is missing."""
    if a["mean"] is None or b["mean"] is None:
        return None
    diff = a["mean"] - b["mean"]
    if a["std"] is None or b["std"] is None:
        return diff, None
    return diff, math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])


def beats(m: tuple[float, float | None] | None) -> bool:
    """A margin counts as a win only beyond two standard errors (never with no spread)."""
    return m is not None and m[1] is not None and m[0] > 2 * m[1]


def _cell(c: dict[str, Any]) -> str:
    if c["mean"] is None:
        return "n/a"
    std = f" ± {c['std']:.1f}" if c["std"] is not None else ""
    return f"{c['mean']:.1f}{std}"


def side_by_side(doc: dict[str, Any], protocols: list[str], base: str = RANDOM) -> str | None:
    """One row per init, one column per read-out of a results.json-shaped `doc` (overall
    foreground mIoU, mean ± std, and the margin over `base` ± its standard error), and whether
    the init beats `base` beyond 2 SE under every read-out: the only claim reports make."""
    inits = list(dict.fromkeys(i for p in protocols for i in doc.get(p, {})))
    if not inits:
        return None
    inits.sort(key=lambda i: i != base)
    rows = []
    for init in inits:
        cells, wins, untested = [], [], []
        for protocol in protocols:
            runs = doc.get(protocol, {})
            if init not in runs:
                cells.append("–")
                wins.append(False)
                continue
            mine = runs[init][OVERALL]["fg_miou"]
            cell = _cell(mine) + f" (n={mine['n']})"
            # A read-out without `base` cannot be won: no margin, no win.
            wins.append(False)
            if init != base and base in runs:
                m = margin(mine, runs[base][OVERALL]["fg_miou"])
                wins[-1] = beats(m)
                if m is not None:
                    cell += f", {m[0]:+.1f}" + (f" ± {m[1]:.1f}" if m[1] is not None else "")
                    if m[1] is None and m[0] > 0:
                        untested.append(protocol)
            cells.append(cell)
        verdict = "–" if init == base else _verdict(wins, untested)
        rows.append([init, *cells, verdict])
    return _table(["init", *protocols, f"beats {base} under every read-out"], rows)


def _verdict(wins: list[bool], untested: list[str]) -> str:
    """yes: beyond 2 SE under every read-out; no: behind, or within 2 SE, under one that has a
    spread; untested: ahead, but a read-out has n=1 on a side (no standard error)."""
    if all(wins):
        return "**yes**"
    if untested and sum(wins) + len(untested) == len(wins):
        return f"untested (n=1 under {', '.join(untested)})"
    return "no"


SIDE_BY_SIDE_GUIDE = (
    "Foreground mIoU (%) of the 12 item classes, all test splits pooled, mean ± sample std over "
    "each read-out's repeats (n), then the difference to random init ± its standard error. "
    "An init beats random init only where the difference exceeds two standard errors under "
    "every read-out: a linear probe alone can favour a representation that is not yet useful.\n"
)


def render_markdown(
    semantic: dict[str, list[Run]],
    pre: list[Pretrain],
    instance: list[Run] | None = None,
    figures: list[str] = (),
) -> str:
    """Every read-out side by side, then each read-out's tables (semantic runs, mIoU), the
    pretraining monitor, instance runs (COCO AP/AR) and the settings; `figures` are the files
    written beside it (`main`)."""
    parts = ["# Segmentation transfer results\n"]
    table = side_by_side(results_doc(semantic), list(semantic)) if semantic else None
    if table:
        parts += ["## Every read-out side by side\n", SIDE_BY_SIDE_GUIDE, table]
    parts += [f"![{name}]({name})\n" for name in figures if name in FIGURES_TOP]
    for protocol, runs in semantic.items():
        parts += [f"## {protocol_title(protocol)}\n", *_semantic_parts(runs)]
    monitor = monitor_table(pre)
    if monitor:
        parts += ["## Pretraining monitor\n", MONITOR_GUIDE, monitor]
    parts += [f"![{name}]({name})\n" for name in figures if name not in FIGURES_TOP]
    if instance:
        parts += instance_parts(instance)
    for protocol, runs in semantic.items():
        parts.append(_eval_settings(runs, protocol_title(protocol)))
    if instance:
        parts.append(_eval_settings(instance, "Instance segmentation"))
    parts.append(_pretrain_settings(pre))
    return "\n".join(parts)


FIGURES_TOP = ("miou.png", "per_class_iou.png", "qualitative.png")

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
    how = {
        "probe": "Each init's backbone is frozen and a 1x1-conv head is trained on its stride-8 "
        "features",
        "probe_mlp": "Each init's backbone is frozen and a small conv head is trained on its "
        "stride-8 features, with flips and turns",
    }.get(runs[0].protocol, "Each init is fine-tuned")
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
