"""Semantic-segmentation scores from one confusion matrix accumulated over a whole split.

Rows are ground truth, columns prediction, and class 0 (background) is a class like the others.
Pixels labelled 255 are not scored. From the matrix M (CxC):

    aAcc    = trace(M) / sum(M)                   share of scored pixels predicted right
    mAcc    = mean_c M[c,c] / sum_j M[c,j]         over classes present in the ground truth
    IoU_c   = M[c,c] / (sum_j M[c,j] + sum_i M[i,c] - M[c,c])
    mIoU    = mean_c IoU_c                        over classes with a non-zero union, background included
    mIoU_fg = the same mean over classes 1..C only (the item classes)

`mIoU` includes background, as PIDray's segmentation results do; `mIoU_fg` answers "how well are the
items segmented" without the easy, dominant background class lifting the mean.

A class absent from both prediction and ground truth has no IoU (None): counting it as 0 (as
torchmetrics does) punishes a model for a class the split lacks, and letting it be NaN (as
torchvision's reference does) poisons the mean (docs/design.md §5.4). A class predicted but absent
from the ground truth has IoU 0 — that prediction is wrong everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from segloc.coco import IGNORE


class ConfusionMatrix:
    """Pixel counts `mat[target, prediction]` (CxC int64), summed over `update` calls and ranks."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add one batch; `target` and `pred` are integer tensors of the same shape (e.g. NxHxW)."""
        n = self.num_classes
        target, pred = target.reshape(-1).long(), pred.reshape(-1).long()
        keep = target != IGNORE
        target, pred = target[keep], pred[keep]
        if target.numel() and int(target.max()) >= n:
            raise ValueError(
                f"target class {int(target.max())} outside 0..{n - 1} (and not {IGNORE})"
            )
        # One bincount over the pair index n*target + pred: a single pass, no python loop.
        self.mat += torch.bincount(n * target + pred.to(target.device), minlength=n * n).reshape(
            n, n
        )

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all ranks (every rank scored a disjoint share of the split)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def numpy(self) -> np.ndarray:
        return self.mat.cpu().numpy()


def scores(mat: np.ndarray) -> dict[str, Any]:
    """aAcc, mAcc, mIoU, mIoU_fg (floats, None when undefined) and per-class `iou`/`acc` lists."""
    mat = np.asarray(mat, dtype=np.float64)
    diag, gt, predicted = np.diag(mat), mat.sum(axis=1), mat.sum(axis=0)
    union = gt + predicted - diag
    iou = [float(d / u) if u > 0 else None for d, u in zip(diag, union, strict=True)]
    acc = [float(d / g) if g > 0 else None for d, g in zip(diag, gt, strict=True)]
    total = mat.sum()
    return {
        "aAcc": float(diag.sum() / total) if total > 0 else None,
        "mAcc": _mean(acc),
        "mIoU": _mean(iou),
        "mIoU_fg": _mean(iou[1:]),
        "iou": iou,
        "acc": acc,
    }


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def summarize(values: list[float | None]) -> dict[str, Any]:
    """{mean, std, values} over repeats; std is the sample std (ddof=1), None with one value."""
    defined = [v for v in values if v is not None]
    if not defined:
        return {"mean": None, "std": None, "values": values}
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else None
    return {"mean": float(np.mean(defined)), "std": std, "values": values}
