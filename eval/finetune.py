"""Fine-tune a segmentation model from one init, score it on every test split, repeat over seeds.

    evaluate --init random --data data/pidray --protocol finetune --out runs/eval/random/finetune
    evaluate --init runs/pretrain/segloc --protocol finetune_10pct --out runs/eval/segloc/ft10
    evaluate --init imagenet:weights/resnet18-f37072fd.pth --protocol finetune \
        --out runs/eval/imagenet/finetune --set eval.finetune.repeats=5
    torchrun --nproc_per_node 4 -m eval.cli --init random --protocol finetune \
        --out runs/eval/random/finetune                                      # DDP

Every init gets the same recipe (eval.finetune), labels and seeds (docs/design.md §5.5): repeat r
trains with seed eval.seed + r on the labeled subset of the train split (all of it for
`finetune`, N % for `finetune_<N>pct`) for a fixed number of steps (no model selection, so
nothing is tuned on the test splits), then scores each test split and all of them pooled
("overall"). Outputs are listed in `eval.outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from eval.config import EvalConfig
from eval.data import (
    LabeledSets,
    RankDraws,
    TrainDraws,
    load_example,
)
from eval.inits import Init
from eval.inputs import data_summary, load_inputs, predict_samples, square_input
from eval.metrics import ConfusionMatrix
from eval.model import build_model, load_init
from eval.outputs import OVERALL, RepeatResult, write_run
from segloc import dist
from segloc.coco import CocoSet
from segloc.dist import DistEnv
from segloc.params import to_dict
from segloc.schedule import poly, warmup

log = logging.getLogger(__name__)


def main(
    init: str,
    out: str | Path,
    data: str | Path | None = None,
    params: str | Path | None = None,
    overrides: Iterable[str] = (),
    protocol: str | None = None,
) -> dict[str, Any] | None:
    """Run a fine-tuning protocol (`finetune`, `finetune_<N>pct`; None: eval.protocol); returns
    the scores document on rank 0 (None on other ranks)."""
    env = dist.setup()
    try:
        cfg, init_spec, sets, protocol = load_inputs(
            init, data, params, overrides, env, protocol, kinds=("finetune",)
        )
        results = [
            fine_tune_once(sets, init_spec, cfg, r, env) for r in range(cfg.finetune.repeats)
        ]
        if not env.main:
            return None
        config = {
            "protocol": protocol.name,
            "eval": to_dict(cfg),
            "init": init_spec.describe(),
            "world_size": env.world,
            "data": data_summary(sets),
        }
        metrics = write_run(out, results, sets.label_names, config)
        _log_summary(metrics)
        return metrics
    finally:
        dist.teardown()


def fine_tune_once(
    sets: LabeledSets, init: Init, cfg: EvalConfig, repeat: int, env: DistEnv
) -> RepeatResult:
    seed = cfg.seed + repeat
    model = build_model(
        cfg.arch,
        cfg.finetune.head,
        len(sets.label_names),
        cfg.finetune.output_stride,
        torch.Generator().manual_seed(seed),
    )
    load_init(model, init, cfg.arch)
    model.to(env.device)
    if env.device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # faster convolutions with bf16 on GPU
    start = time.perf_counter()
    losses = train(model, sets, cfg, seed, env, desc=f"{init.label} seed {seed}")
    trained = time.perf_counter()
    matrices = {name: score_split(model, coco, cfg, env) for name, coco in sets.test.items()}
    matrices[OVERALL] = sum(matrices.values())
    seconds = {"train": trained - start, "test": time.perf_counter() - trained}
    log.info(
        "seed %d: trained in %.1f s, scored in %.1f s", seed, seconds["train"], seconds["test"]
    )
    result = RepeatResult(seed, matrices, losses, seconds)
    if repeat == 0 and env.main:
        result.samples = predict_samples(
            lambda _split, _i, rgb: predict(model, rgb, cfg, env), sets, cfg
        )
        result.state = model.state_dict() if cfg.save_model else None
    return result


def train(
    model: nn.Module,
    sets: LabeledSets,
    cfg: EvalConfig,
    seed: int,
    env: DistEnv,
    desc: str = "fine-tune",
) -> list[float]:
    """SGD (or AdamW) for eval.finetune.steps steps, the lr ramped up over warmup_steps and
    poly-decayed; returns this rank's loss per step."""
    ft = cfg.finetune
    draws = TrainDraws(sets, seed, cfg.base_size, ft.crop_size, ft.scale_range, ft.cat_max_ratio)
    loader = DataLoader(
        draws,
        batch_size=ft.batch_size,
        num_workers=cfg.workers,
        sampler=RankDraws(ft.steps, ft.batch_size, env.rank, env.world),
        pin_memory=env.device.type == "cuda",
    )
    net = DistributedDataParallel(model) if env.world > 1 else model
    if ft.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=ft.lr, weight_decay=ft.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay
        )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup(s, ft.warmup_steps) * poly(s, ft.steps, ft.poly_power)
    )
    losses = []
    model.train()
    # Dropout in the head draws from torch's global generator (it takes none of its own): scope a
    # seeded copy of it to this run, so runs repeat exactly and the caller's state is untouched.
    with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
        torch.manual_seed(seed * 1000 + env.rank)
        for images, labels in tqdm(loader, desc=desc, disable=not env.main, leave=False):
            images, labels = images.to(env.device), labels.to(env.device)
            with autocast(cfg, env):
                logits = net(images)["out"]  # NxCxHxW at the crop size
            loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    return losses


def autocast(cfg: EvalConfig, env: DistEnv):
    """bf16 autocast on CUDA when eval.amp is set; a no-op context on CPU."""
    enabled = cfg.amp and env.device.type == "cuda"
    return torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict(model: nn.Module, rgb: np.ndarray, cfg: EvalConfig, env: DistEnv) -> torch.Tensor:
    """HxW class map of one HxWx3 scan (see `predict_batch`)."""
    return predict_batch(model, [rgb], cfg, env)[0]


@torch.no_grad()
def predict_batch(
    model: nn.Module, rgbs: list[np.ndarray], cfg: EvalConfig, env: DistEnv
) -> list[torch.Tensor]:
    """HxW class maps of HxWx3 scans. Each is inferred at long side base_size, padded with air to
    a base_size square (so its prediction does not depend on the other scans of the batch), and
    its logits are cropped and upsampled back, so scores are taken on the original label pixels."""
    model.eval()
    inputs, sizes = zip(*(square_input(rgb, cfg.base_size) for rgb in rgbs), strict=True)
    with autocast(cfg, env):
        logits = model(torch.stack(inputs).to(env.device))["out"]
    out = []
    for i, (rgb, (h, w)) in enumerate(zip(rgbs, sizes, strict=True)):
        one = logits[i : i + 1, :, :h, :w].float()
        one = F.interpolate(one, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        out.append(one[0].argmax(0))
    return out


def score_split(model: nn.Module, coco: CocoSet, cfg: EvalConfig, env: DistEnv) -> np.ndarray:
    """Pixel confusion matrix of one split; each rank scores every world-th image in batches of
    eval.finetune.batch_size, then all-reduce."""
    cm = ConfusionMatrix(len(coco.class_names) + 1, env.device)
    images = coco.images[env.rank :: env.world]
    batch = cfg.finetune.batch_size
    with tqdm(
        total=len(images), desc=f"score {coco.json_path.stem}", disable=not env.main, leave=False
    ) as bar:
        for first in range(0, len(images), batch):
            examples = [load_example(coco, im) for im in images[first : first + batch]]
            preds = predict_batch(model, [rgb for rgb, _ in examples], cfg, env)
            for (_, truth), pred in zip(examples, preds, strict=True):
                cm.update(torch.from_numpy(truth).to(env.device), pred)
            bar.update(len(examples))
    cm.reduce_from_all_processes()
    return cm.numpy()


def _log_summary(metrics: dict[str, Any]) -> None:
    for split, entry in metrics["splits"].items():
        m = entry["mIoU"]
        mean = f"{100 * m['mean']:.1f}" if m["mean"] is not None else "n/a (no pixel scored)"
        std = f" ± {100 * m['std']:.1f}" if m["std"] is not None else ""
        log.info("%s: mIoU %s%s over %d repeat(s)", split, mean, std, metrics["repeats"])
