"""What every evaluation run reads before it trains, and what it keeps for the report.

    cfg, init, sets, protocol = load_inputs(init, data, params, overrides, env, "probe_mlp")

Shared by the probes (`eval.probe`) and fine-tuning (`eval.finetune`), so that neither imports the
other: a change to one read-out's code re-runs only that read-out's pipeline stages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.config import EvalConfig, Protocol, load_eval_config, load_run_params, parse_protocol
from eval.data import (
    PAD_VALUE,
    LabeledSets,
    load_example,
    load_sets,
    normalize,
    resize_long,
    resolve_data,
)
from eval.inits import Init, resolve_init
from eval.outputs import OVERALL
from segloc import dist
from segloc.dist import DistEnv
from segloc.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_SIZE = 256  # long side of the scans kept for the report's qualitative sheet


def load_inputs(
    init: str,
    data: str | Path | None,
    params: str | Path | None,
    overrides: Iterable[str],
    env: DistEnv,
    protocol: str | None,
    kinds: tuple[str, ...] = ("probe", "probe_mlp", "finetune"),
) -> tuple[EvalConfig, Init, LabeledSets, Protocol]:
    """The eval config, the init, the labeled sets and the protocol (None: eval.protocol; its
    kind must be one of `kinds`) of a run, checked before any time is spent; sets this
    process's torch threads. A low-label
    protocol (`finetune_10pct`) trains on that share of the labeled train split, a subset of
    the images data.label_fraction keeps (the subsets are nested)."""
    resolved = load_run_params(params, overrides)
    cfg = load_eval_config(resolved)
    proto = parse_protocol(protocol or cfg.protocol, "--protocol" if protocol else "eval.protocol")
    if proto.kind not in kinds:  # a direct call of one read-out's main with another's name
        raise UserError(f"protocol {proto.name}: run it with `evaluate --protocol {proto.name}`")
    init_spec = resolve_init(init)
    data_spec = resolve_data(resolved, data)
    if proto.label_fraction is not None:
        if proto.label_fraction > data_spec.label_fraction:
            raise UserError(
                f"protocol {proto.name}: needs {proto.label_fraction:g} of the labeled split, "
                f"more than params data.label_fraction {data_spec.label_fraction:g} keeps"
            )
        data_spec = replace(data_spec, label_fraction=proto.label_fraction)
    sets = load_sets(data_spec)
    if OVERALL in sets.test:
        raise UserError(f"params data.test: '{OVERALL}' is reserved for the pooled test splits")
    threads = dist.set_threads(cfg.threads, env)
    log.info(
        "%s %s: %d labeled train images, test splits %s, %d process(es) x %d threads",
        proto.name,
        init_spec.label,
        len(sets.labeled),
        ", ".join(sets.test),
        env.world,
        threads,
    )
    return cfg, init_spec, sets, proto


def data_summary(sets: LabeledSets) -> dict[str, Any]:
    """What a run trained and scored on, for its config.json."""
    return {
        "train": str(sets.train.json_path),
        "labeled_images": len(sets.labeled),
        "train_images": len(sets.train.images),
        "test": {
            name: {"annotations": str(c.json_path), "images": len(c.images)}
            for name, c in sets.test.items()
        },
        "classes": list(sets.label_names),
    }


def square_input(rgb: np.ndarray, base: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised 3 x base x base input (scan at long side `base`, air padding) and its (h, w)."""
    small = resize_long(rgb, base)
    h, w = small.shape[:2]
    square = np.full((base, base, 3), PAD_VALUE, dtype=np.uint8)
    square[:h, :w] = small
    return normalize(square), (h, w)


Predictor = Callable[[str, int, np.ndarray], torch.Tensor]  # (split, index, scan) -> H x W


def predict_samples(
    predictor: Predictor, sets: LabeledSets, cfg: EvalConfig
) -> dict[str, np.ndarray]:
    """Scan, truth and prediction (long side SAMPLE_SIZE) of evenly spaced images of each split;
    the choice depends on the data only, so every init's run (and protocol) shows the same
    images. `predictor(split, i, rgb)` gives image i's class map at its own size."""
    arrays: dict[str, np.ndarray] = {}
    names = []
    for split, coco in sets.test.items():
        picks = np.unique(np.linspace(0, len(coco.images) - 1, cfg.samples_per_split).round())
        for i in picks.astype(int):
            image = coco.images[i]
            rgb, truth = load_example(coco, image)
            pred = predictor(split, int(i), rgb).cpu().numpy().astype(np.uint8)
            k = len(names)
            arrays[f"scan_{k}"] = resize_long(rgb, SAMPLE_SIZE)
            arrays[f"truth_{k}"] = resize_long(truth, SAMPLE_SIZE, nearest=True)
            arrays[f"pred_{k}"] = resize_long(pred, SAMPLE_SIZE, nearest=True)
            names.append(f"{split}:{image.file_name}")
    arrays["names"] = np.array(names)
    return arrays
