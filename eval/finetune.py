"""Fine-tune a segmentation model from one init, score it on every test split, repeat over seeds.

    evaluate --init random --data data/pidray --out runs/finetune/random
    evaluate --init runs/pretrain/segloc --out runs/finetune/segloc      # paths from params.yaml
    evaluate --init imagenet:weights/resnet18-f37072fd.pth --out runs/finetune/imagenet \
        --set eval.repeats=5 --set eval.steps=2000
    torchrun --nproc_per_node 4 -m eval.cli --init random --out runs/finetune/random   # DDP

Every init gets the same recipe, labels and seeds (docs/design.md §5.5): repeat r trains with seed
eval.seed + r on the labeled subset of the train split for a fixed number of steps (no model
selection, so nothing is tuned on the test splits), then scores each test split and all of them
pooled ("overall"). Outputs are listed in `eval.outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from eval.config import EvalConfig, load_eval_config, load_run_params
from eval.data import (
    PAD_VALUE,
    LabeledSets,
    RankDraws,
    TrainDraws,
    load_example,
    load_sets,
    normalize,
    resize_long,
    resolve_data,
)
from eval.inits import Init, resolve_init
from eval.metrics import ConfusionMatrix
from eval.model import build_model, load_init
from eval.outputs import OVERALL, RepeatResult, write_run
from segloc import dist
from segloc.coco import CocoSet
from segloc.dist import DistEnv
from segloc.errors import UserError
from segloc.params import to_dict
from segloc.schedule import poly

log = logging.getLogger(__name__)

SAMPLE_SIZE = 256  # long side of the scans kept for the report's qualitative sheet


def main(
    init: str,
    out: str | Path,
    data: str | Path | None = None,
    params: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any] | None:
    """Run the stage; returns the metrics document on rank 0 (None on other ranks)."""
    env = dist.setup()
    try:
        cfg, init_spec, sets = load_inputs(init, data, params, overrides, env, "fine-tune")
        results = [fine_tune_once(sets, init_spec, cfg, r, env) for r in range(cfg.repeats)]
        if not env.main:
            return None
        config = {
            "protocol": "finetune",
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


def load_inputs(
    init: str,
    data: str | Path | None,
    params: str | Path | None,
    overrides: Iterable[str],
    env: DistEnv,
    what: str,
) -> tuple[EvalConfig, Init, LabeledSets]:
    """The eval config, the init and the labeled sets of a run (fine-tune or probe), checked
    before any time is spent; sets this process's torch threads."""
    resolved = load_run_params(params, overrides)
    cfg = load_eval_config(resolved)
    init_spec = resolve_init(init)
    sets = load_sets(resolve_data(resolved, data))
    if OVERALL in sets.test:
        raise UserError(f"params data.test: '{OVERALL}' is reserved for the pooled test splits")
    threads = dist.set_threads(cfg.threads, env)
    log.info(
        "%s %s: %d labeled train images, test splits %s, %d process(es) x %d threads",
        what,
        init_spec.label,
        len(sets.labeled),
        ", ".join(sets.test),
        env.world,
        threads,
    )
    return cfg, init_spec, sets


def fine_tune_once(
    sets: LabeledSets, init: Init, cfg: EvalConfig, repeat: int, env: DistEnv
) -> RepeatResult:
    seed = cfg.seed + repeat
    model = build_model(
        cfg.arch,
        cfg.head,
        len(sets.label_names),
        cfg.output_stride,
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
    """SGD (or AdamW) with poly lr for cfg.steps steps; returns this rank's loss per step."""
    draws = TrainDraws(sets, seed, cfg.base_size, cfg.crop_size, cfg.scale_range, cfg.cat_max_ratio)
    loader = DataLoader(
        draws,
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        sampler=RankDraws(cfg.steps, cfg.batch_size, env.rank, env.world),
        pin_memory=env.device.type == "cuda",
    )
    net = DistributedDataParallel(model) if env.world > 1 else model
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly(s, cfg.steps, cfg.poly_power))
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


def square_input(rgb: np.ndarray, base: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised 3 x base x base input (scan at long side `base`, air padding) and its (h, w)."""
    small = resize_long(rgb, base)
    h, w = small.shape[:2]
    square = np.full((base, base, 3), PAD_VALUE, dtype=np.uint8)
    square[:h, :w] = small
    return normalize(square), (h, w)


def score_split(model: nn.Module, coco: CocoSet, cfg: EvalConfig, env: DistEnv) -> np.ndarray:
    """Pixel confusion matrix of one split; each rank scores every world-th image in batches of
    eval.batch_size, then all-reduce."""
    cm = ConfusionMatrix(len(coco.class_names) + 1, env.device)
    images = coco.images[env.rank :: env.world]
    with tqdm(
        total=len(images), desc=f"score {coco.json_path.stem}", disable=not env.main, leave=False
    ) as bar:
        for first in range(0, len(images), cfg.batch_size):
            examples = [load_example(coco, im) for im in images[first : first + cfg.batch_size]]
            preds = predict_batch(model, [rgb for rgb, _ in examples], cfg, env)
            for (_, truth), pred in zip(examples, preds, strict=True):
                cm.update(torch.from_numpy(truth).to(env.device), pred)
            bar.update(len(examples))
    cm.reduce_from_all_processes()
    return cm.numpy()


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


def _log_summary(metrics: dict[str, Any]) -> None:
    for split, entry in metrics["splits"].items():
        m = entry["mIoU"]
        mean = f"{100 * m['mean']:.1f}" if m["mean"] is not None else "n/a (no pixel scored)"
        std = f" ± {100 * m['std']:.1f}" if m["std"] is not None else ""
        log.info("%s: mIoU %s%s over %d repeat(s)", split, mean, std, metrics["repeats"])
