"""Dense features at stride 8: what the supervised baseline predicts from and what probes read.

    maps = trunk(x)                  # C2..C5 of a ResNet (strides 4, 8, 16, 32)
    f = fuse_stride8(maps[1:])       # N x (c3 + c4 + c5) x H/8 x W/8

Items in X-ray scans are often 10-40 px wide and thin; on C5 (stride 32) they are a cell or less,
so neither a segmentation pretraining nor a frozen-backbone probe can resolve them there. C4 and C5
are upsampled bilinearly to C3's grid and concatenated (a hypercolumn without learned layers), so
the fused map keeps C3's spatial detail and C5's context. Both the supervised pretraining head and
the `probe` protocol read this one map, so the positive control is measured on the features it
was trained to produce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 8  # of the fused map (C3's)


def fuse_stride8(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """C3, C4, C5 (N x c_i x h_i x w_i, strides 8/16/32) -> N x sum(c_i) x h3 x w3."""
    if len(maps) != 3:
        raise ValueError(f"expected C3, C4 and C5, got {len(maps)} maps")
    size = maps[0].shape[-2:]
    up = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
    return torch.cat([maps[0], *up], dim=1)


@torch.no_grad()
def start_small(classifier: nn.Conv2d, generator: torch.Generator) -> None:
    """Weights N(0, 0.01), bias 0: every class starts near equal probability, as segmentation
    heads do. He init on a 1x1 conv from the ~900-channel fused map to a dozen outputs gives
    logits of std ~10 and a first loss near 7 instead of ln(classes), which costs hundreds of
    steps (the supervised control lost two thirds of its margin to it)."""
    nn.init.normal_(classifier.weight, std=0.01, generator=generator)
    if classifier.bias is not None:
        nn.init.zeros_(classifier.bias)
