"""Report figures (matplotlib's object API: no pyplot state, no display needed)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from eval.outputs import OVERALL
from eval.runs import Pretrain, Run, class_names, split_names


def plot_miou(runs: list[Run], key: str = "mIoU_fg") -> Figure:
    splits = split_names(runs)
    fig = Figure(figsize=(1.6 + 1.3 * len(splits) * max(1, len(runs)) / 3, 3.6))
    ax = fig.subplots()
    width = 0.8 / len(runs)
    x = np.arange(len(splits))
    for i, r in enumerate(runs):
        means = [_nan(r.summary(s, key)["mean"]) for s in splits]
        stds = [_nan(r.summary(s, key)["std"], 0.0) for s in splits]
        ax.bar(
            x + (i - (len(runs) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=f"{r.label} (n={r.metrics['repeats']})",
        )
    ax.set_xticks(x, splits)
    name = "foreground mIoU" if key == "mIoU_fg" else key
    ax.set_ylabel(f"{name} (%)")
    ax.set_title(f"{name} per test split (mean ± std over repeats)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_readouts(semantic: dict[str, list[Run]], key: str = "mIoU_fg") -> Figure:
    """Overall foreground mIoU of every init under every read-out, side by side."""
    labels = list(dict.fromkeys(r.label for runs in semantic.values() for r in runs))
    protocols = list(semantic)
    fig = Figure(figsize=(2.0 + 1.4 * len(protocols) * max(1, len(labels)) / 3, 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(protocols))
    for i, label in enumerate(labels):
        runs = [next((r for r in semantic[p] if r.label == label), None) for p in protocols]
        means = [_nan(r.summary(OVERALL, key)["mean"]) if r else np.nan for r in runs]
        stds = [_nan(r.summary(OVERALL, key)["std"], 0.0) if r else 0.0 for r in runs]
        offset = (i - (len(labels) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, protocols)
    ax.set_ylabel("foreground mIoU (%)")
    ax.set_title("Every read-out, all test splits pooled (mean ± std over repeats)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def _nan(value: float | None, default: float = float("nan")) -> float:
    return 100 * value if value is not None else default


def plot_per_class(runs: list[Run]) -> Figure:
    names = class_names(runs)
    table = np.array(
        [[_nan(r.metrics["splits"][OVERALL]["per_class_iou"].get(n)) for n in names] for r in runs]
    )
    fig = Figure(figsize=(1.5 + 0.65 * len(names), 1.2 + 0.45 * len(runs)))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(table), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(runs)), [r.label for r in runs])
    for (i, j), v in np.ndenumerate(table):
        text = "–" if np.isnan(v) else f"{v:.0f}"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=7,
            color="white" if np.isnan(v) or v < 50 else "black",
        )
    fig.colorbar(im, ax=ax, label="IoU (%)")
    ax.set_title("Per-class IoU, all test splits pooled (mean over repeats)")
    return fig


def plot_pretrain_loss(pre: list[Pretrain]) -> Figure | None:
    return _curves(
        [(p.label, p.curve) for p in pre],
        "loss",
        "Pretraining loss (faint: raw, solid: moving average)",
        smooth=True,
    )


def plot_knn(pre: list[Pretrain]) -> Figure | None:
    """Held-out kNN class accuracy over pretraining steps, one line per method."""
    return _curves(
        [(p.label, p.knn) for p in pre],
        "kNN accuracy (%)",
        "Held-out instance kNN class accuracy (step 0: random init)",
        smooth=False,
    )


def _curves(curves, ylabel: str, title: str, smooth: bool) -> Figure | None:
    """One line per (label, (steps, values)); None when no curve has a point."""
    curves = [(label, c) for label, c in curves if c is not None and len(c[0])]
    if not curves:
        return None
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for label, (steps, values) in curves:
        if smooth:
            (line,) = ax.plot(steps, values, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _smooth(values), color=line.get_color(), label=label)
        else:
            ax.plot(steps, values, marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _smooth(values: np.ndarray) -> np.ndarray:
    """Trailing moving average over ~5% of the curve (window at least 1)."""
    window = max(1, len(values) // 20)
    cum = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cum[1:] - cum[np.arange(len(values)) + 1 - counts]) / counts


def plot_samples(runs: list[Run]) -> Figure | None:
    """Rows: test images; columns: scan, ground truth, one prediction per init (overlays)."""
    shown = [r for r in runs if r.samples is not None and "names" in r.samples]
    if not shown:
        return None
    names = list(shown[0].samples["names"])
    shown = [r for r in shown if list(r.samples["names"]) == names]  # same images only
    classes = class_names(runs)
    colours = _palette(len(classes))
    cols = 2 + len(shown)
    scans = [shown[0].samples[f"scan_{k}"] for k in range(len(names))]
    aspect = float(np.mean([s.shape[0] / s.shape[1] for s in scans]))  # height / width
    fig = Figure(figsize=(2.2 * cols, 2.2 * aspect * len(names) + 0.8), layout="constrained")
    axes = np.asarray(fig.subplots(len(names), cols, squeeze=False))
    for k, name in enumerate(names):
        scan = scans[k]
        panels = [
            ("scan", scan),
            ("ground truth", _overlay(scan, shown[0].samples[f"truth_{k}"], colours)),
        ]
        panels += [(r.label, _overlay(scan, r.samples[f"pred_{k}"], colours)) for r in shown]
        for ax, (title, image) in zip(axes[k], panels, strict=True):
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(title, fontsize=9)
        axes[k][0].set_ylabel(str(name).replace(":", "\n", 1), fontsize=7)
    handles = [Patch(color=colours[c], label=classes[c]) for c in range(1, len(classes))]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8)
    return fig


def _palette(n: int) -> np.ndarray:
    """n RGB colours in [0, 1]; class c uses tab20's strong shades first (class 0 is not drawn)."""
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return np.array([colormaps["tab20"](order[(c - 1) % 20])[:3] for c in range(n)])


def _overlay(scan: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Scan with each labelled pixel tinted by its class colour (ignore=255 left as is)."""
    out = scan.astype(np.float64) / 255
    mask = (labels > 0) & (labels < len(colours))
    out[mask] = 0.35 * out[mask] + 0.65 * colours[labels[mask]]
    return out
