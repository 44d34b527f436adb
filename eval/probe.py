"""Frozen-backbone probes: a head on a backbone's stride-8 features, scored on every test split.

    evaluate --init runs/pretrain/segloc --out runs/eval/segloc/probe --protocol probe
    evaluate --init random --out runs/eval/random/probe_mlp --protocol probe_mlp

The backbone never trains (docs/design.md, evaluation protocols). Each scan is resized to long side
eval.base_size and padded with air to a square, as fine-tuning scores it; the fused stride-8 map
(`segloc.dense`: C3 + upsampled C4, C5) of every labeled train scan and every test scan is
computed once, standardised per channel with the train scans' statistics, and kept in memory for
every seed. Repeat r trains a head with seed eval.seed + r: its logits are upsampled to the input
and trained with per-pixel cross-entropy (255 ignored), then scored on the original label pixels
with the same confusion-matrix metrics as fine-tuning (`eval.outputs`). Two heads:
- `probe` (eval.probe): a 1x1 conv, the linear read-out;
- `probe_mlp` (eval.probe_mlp): 1x1 conv to a few channels, two 3x3 conv-BN-ReLU layers and a 1x1
  classifier, trained on randomly flipped and turned feature maps (with their labels). It sees
  context and non-linear combinations, so it can use random features far better than a linear
  head can: a representation that only a linear head prefers to random features is not yet
  useful (docs/design.md §5).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from eval.config import EvalConfig, MlpProbeConfig, ProbeConfig
from eval.data import (
    LabeledSets,
    load_example,
    resize_long,
)
from eval.inits import Init
from eval.inputs import data_summary, load_inputs, predict_samples, square_input
from eval.metrics import ConfusionMatrix
from eval.model import build_trunk, load_resnet_body
from eval.outputs import OVERALL, RepeatResult, write_run
from segloc import dist as distributed
from segloc.coco import IGNORE, CocoSet, ImageInfo
from segloc.dense import fuse_stride8
from segloc.errors import UserError
from segloc.params import to_dict
from segloc.schedule import cosine

log = logging.getLogger(__name__)

EXTRACT_BATCH = 16  # scans per forward pass of the frozen trunk
# The head trains against class maps at half the input scale: a third of the cost of the full
# scale per step on CPU (measured), while items stay several pixels wide; scoring is always on
# the original label pixels.
LABEL_SCALE = 2


@dataclass
class Features:
    """Fused stride-8 features of a list of scans, padded to base_size squares."""

    feats: torch.Tensor  # N x F x g x g float32, g = ceil(base_size / 8)
    sizes: list[tuple[int, int]]  # (h, w) of each scan at the input scale, before padding
    labels: torch.Tensor | None = None  # N x b x b uint8 class maps, b = base / 2, 255 ignored
    truths: list[torch.Tensor] | None = None  # H x W class maps at the original size (test)


def main(
    init: str,
    out: str | Path,
    data: str | Path | None = None,
    params: str | Path | None = None,
    overrides: Iterable[str] = (),
    protocol: str | None = None,
) -> dict[str, Any]:
    """Run a probe protocol (`probe` or `probe_mlp`; None: eval.protocol) for one init; returns
    the scores document."""
    env = distributed.setup()
    try:
        cfg, init_spec, sets, protocol = load_inputs(
            init, data, params, overrides, env, protocol, kinds=("probe", "probe_mlp")
        )
        if env.world > 1:
            raise UserError(
                f"protocol {protocol.name} runs in one process: launch it without torchrun"
            )
        head_cfg = cfg.probe if protocol.kind == "probe" else cfg.probe_mlp
        start = time.perf_counter()
        trunk = frozen_trunk(init_spec, cfg, env.device)
        train = extract(trunk, sets.train, sets.labeled, cfg.base_size, env.device, labels=True)
        tests = {
            name: extract(trunk, coco, coco.images, cfg.base_size, env.device, truths=True)
            for name, coco in sets.test.items()
        }
        check_finite(train, init_spec)
        standardize(train, list(tests.values()))
        seconds = time.perf_counter() - start
        log.info("features: %d channels at stride 8, %.1f s", train.feats.shape[1], seconds)
        results = [
            probe_once(train, tests, sets, cfg, head_cfg, cfg.seed + r, env.device, r == 0)
            for r in range(head_cfg.repeats)
        ]
        config = {
            "protocol": protocol.name,
            "eval": to_dict(cfg),
            "init": init_spec.describe(),
            "world_size": 1,
            "data": data_summary(sets),
            "features": {
                "channels": int(train.feats.shape[1]),
                "stride": 8,
                "grid": int(train.feats.shape[-1]),
                "seconds": seconds,
            },
        }
        return write_run(out, results, sets.label_names, config)
    finally:
        distributed.teardown()


def frozen_trunk(init: Init, cfg: EvalConfig, device: torch.device) -> nn.Module:
    """The init's ResNet (C3..C5 outputs) in eval mode, no gradients; random init from eval.seed,
    so every repeat of a random-init probe reads the same random features."""
    trunk = build_trunk(cfg.arch, torch.Generator().manual_seed(cfg.seed))
    load_resnet_body(trunk, init, cfg.arch)
    trunk.eval().requires_grad_(False)
    return trunk.to(device)


def square_labels(truth: np.ndarray, base: int) -> torch.Tensor:
    """base x base uint8 class map at the input scale, padding ignored."""
    small = resize_long(truth, base, nearest=True)
    square = np.full((base, base), IGNORE, dtype=np.uint8)
    square[: small.shape[0], : small.shape[1]] = small
    return torch.from_numpy(square)


@torch.no_grad()
def features_of(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """N x F x g x g fused stride-8 map of a batch of normalised inputs (on the trunk's device)."""
    maps = trunk(x)
    return fuse_stride8([maps["c3"], maps["c4"], maps["c5"]]).float()


def extract(
    trunk: nn.Module,
    coco: CocoSet,
    images: Sequence[ImageInfo],
    base: int,
    device: torch.device,
    labels: bool = False,
    truths: bool = False,
) -> Features:
    """Features of `images` in order, with their class maps at the input scale (`labels`, to
    train on) or at the original size (`truths`, to score)."""
    feats, sizes, maps, originals = [], [], [], []
    desc = f"features {coco.json_path.stem}"
    for first in tqdm(range(0, len(images), EXTRACT_BATCH), desc=desc, leave=False):
        inputs = []
        for image in images[first : first + EXTRACT_BATCH]:
            rgb, truth = load_example(coco, image)
            x, size = square_input(rgb, base)
            inputs.append(x)
            sizes.append(size)
            if labels:
                maps.append(square_labels(truth, base // LABEL_SCALE))
            if truths:
                originals.append(torch.from_numpy(truth).to(device))
        feats.append(features_of(trunk, torch.stack(inputs).to(device)))
    return Features(
        torch.cat(feats),
        sizes,
        torch.stack(maps).to(device) if labels else None,
        originals if truths else None,
    )


def check_finite(train: Features, init: Init) -> None:
    if not bool(torch.isfinite(train.feats).all()):
        where = init.path if init.path is not None else init.label
        raise UserError(f"{where}: the backbone's features are not finite (NaN or inf weights?)")


def standardize(train: Features, others: Sequence[Features]) -> None:
    """Per-channel zero mean, unit variance with the train scans' statistics, in place: every
    init's head then starts from equally scaled inputs (random trunks' activations are large)."""
    mean = train.feats.mean((0, 2, 3), keepdim=True)
    std = train.feats.std((0, 2, 3), keepdim=True).clamp(min=1e-6)
    for f in (train, *others):
        f.feats.sub_(mean).div_(std)


def make_head(
    channels: int, classes: int, cfg: ProbeConfig | MlpProbeConfig, g: torch.Generator
) -> nn.Module:
    """The linear head (eval.probe) or the small conv head (eval.probe_mlp), initialised from
    `g`: weights uniform in +-1/sqrt(fan_in) (nn.Conv2d's default range), biases zero."""
    if isinstance(cfg, ProbeConfig):
        head = nn.Sequential(nn.Conv2d(channels, classes, 1))
    else:
        h = cfg.hidden
        head = nn.Sequential(
            nn.Conv2d(channels, h, 1, bias=False),
            *_conv_bn_relu(h),
            *_conv_bn_relu(h),
            nn.Conv2d(h, classes, 1),
        )
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                bound = 1.0 / math.sqrt(fan_in)
                m.weight.uniform_(-bound, bound, generator=g)
                if m.bias is not None:
                    m.bias.zero_()
    return head


def _conv_bn_relu(width: int) -> list[nn.Module]:
    return [
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]


def probe_once(
    train: Features,
    tests: dict[str, Features],
    sets: LabeledSets,
    cfg: EvalConfig,
    head_cfg: ProbeConfig | MlpProbeConfig,
    seed: int,
    device: torch.device,
    samples: bool = False,
) -> RepeatResult:
    start = time.perf_counter()
    head, losses = train_head(train, len(sets.label_names), head_cfg, seed, device)
    trained = time.perf_counter()
    matrices = {
        name: score(head, tests[name], len(sets.label_names), cfg.base_size) for name in sets.test
    }
    matrices[OVERALL] = sum(matrices.values())
    seconds = {"train": trained - start, "test": time.perf_counter() - trained}
    log.info("seed %d: head trained in %.1f s, scored in %.1f s", seed, *seconds.values())
    result = RepeatResult(seed, matrices, losses, seconds)
    if samples:
        result.samples = predict_samples(
            lambda split, i, rgb: predict(head, tests[split], i, rgb.shape[:2], cfg.base_size),
            sets,
            cfg,
        )
    return result


def train_head(
    train: Features,
    classes: int,
    p: ProbeConfig | MlpProbeConfig,
    seed: int,
    device: torch.device,
) -> tuple[nn.Module, list[float]]:
    """AdamW with cosine-decayed lr for `p.epochs` passes; returns the head and its losses."""
    augment = getattr(p, "augment", False)
    g = torch.Generator().manual_seed(seed)
    head = make_head(train.feats.shape[1], classes, p, g).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    n = train.feats.shape[0]
    per_epoch = math.ceil(n / p.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, p.epochs * per_epoch))
    losses = []
    head.train()
    for _ in tqdm(range(p.epochs), desc=f"probe seed {seed}", leave=False):
        order = torch.randperm(n, generator=g)
        for first in range(0, n, p.batch_size):
            idx = order[first : first + p.batch_size]
            feats, labels = train.feats[idx.to(device)], train.labels[idx.to(device)]
            if augment:
                feats, labels = dihedral(feats, labels, g)
            logits = upsample(head(feats), labels.shape[-1])
            loss = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    head.eval()
    return head, losses


def dihedral(
    feats: torch.Tensor, labels: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each scan's feature map (B x F x g x g) and class map (B x b x b) under one of the square's
    eight symmetries (a turn by k right angles, then a mirror or not), drawn from `g`. Both grids
    are centred on the same padded input square, so they stay aligned."""
    draws = torch.randint(0, 8, (feats.shape[0],), generator=g).tolist()
    out_f, out_l = [], []
    for i, t in enumerate(draws):
        f, lab = feats[i].rot90(t % 4, (-2, -1)), labels[i].rot90(t % 4, (-2, -1))
        if t >= 4:
            f, lab = f.flip(-1), lab.flip(-1)
        out_f.append(f)
        out_l.append(lab)
    return torch.stack(out_f), torch.stack(out_l)


def upsample(logits: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict(head: nn.Module, feats: Features, index: int, shape: tuple[int, int], base: int):
    """H x W class map of scan `index` at its original size `shape`."""
    h, w = feats.sizes[index]
    logits = upsample(head(feats.feats[index : index + 1]), base)[:, :, :h, :w]
    return F.interpolate(logits, size=shape, mode="bilinear", align_corners=False)[0].argmax(0)


def score(head: nn.Module, feats: Features, classes: int, base: int) -> np.ndarray:
    """Pixel confusion matrix of one split, scored on the original label pixels."""
    cm = ConfusionMatrix(classes, feats.feats.device)
    for i, truth in enumerate(feats.truths):
        cm.update(truth, predict(head, feats, i, tuple(truth.shape), base))
    return cm.numpy()
