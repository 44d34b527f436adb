"""The one seeded split of the labeled set that synthesis and fine-tuning both read.

Every init must see the same labels (docs/design.md §5.5): the renderer cuts segments only from
the labeled subset that fine-tuning trains on. Subsets are nested — with the same seed, the images
kept at fraction 0.1 are also kept at 0.5 — so a label-fraction sweep changes one thing at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from segloc.errors import UserError


def labeled_subset(image_ids: Iterable[int], fraction: float, seed: int) -> list[int]:
    """Sorted ids of the `fraction` of images kept as labeled (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"params data.label_fraction: expected a number in (0, 1], got {fraction}")
    ids = sorted(set(image_ids))
    if not ids:
        return []
    order = np.random.default_rng([seed, 0x5E6]).permutation(len(ids))
    keep = max(1, math.ceil(fraction * len(ids)))
    return sorted(ids[i] for i in order[:keep])
