"""Fine-tuning costs: step time per output stride, and batched against one-at-a-time scoring.

    .venv/bin/python bench/finetune.py                      # resnet18 FCN, batch 8, 128 px crops
    .venv/bin/python bench/finetune.py --crop 96 --steps 10

Figures, all measured in this run on synthetic inputs (the costs depend on sizes, not content):
- seconds per training step (forward, backward, SGD) at output stride 32, 16 and 8, and each
  against stride 16, the default;
- scoring N scans of demo-like sizes at long side --base: `eval.finetune.predict` one scan at a
  time (the baseline) against `predict_batch` in batches of --batch, and the share of pixels on
  which the two agree (padding makes batching change no prediction beyond float rounding).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.config import EvalConfig, FinetuneConfig  # noqa: E402
from eval.finetune import predict, predict_batch  # noqa: E402
from eval.model import build_model  # noqa: E402
from segloc.dist import DistEnv  # noqa: E402


def step_seconds(stride: int, args: argparse.Namespace) -> float:
    model = build_model(args.arch, "fcn", 13, stride, torch.Generator().manual_seed(0))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.crop, args.crop, generator=g)
    y = torch.randint(0, 13, (args.batch, args.crop, args.crop), generator=g)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x)["out"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / args.steps


def scoring(args: argparse.Namespace) -> tuple[float, float, float]:
    model = build_model(args.arch, "fcn", 13, 16, torch.Generator().manual_seed(0))
    cfg = EvalConfig(
        arch=args.arch,
        base_size=args.base,
        amp=False,
        finetune=FinetuneConfig(batch_size=args.batch),
    )
    env = DistEnv(rank=0, world=1, local_world=1, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    sizes = rng.integers(220, 330, size=(args.scans, 2))  # the demo's scans are 256-320 px
    scans = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    start = time.perf_counter()
    alone = [predict(model, s, cfg, env) for s in scans]
    one = time.perf_counter() - start
    start = time.perf_counter()
    batched = []
    for first in range(0, len(scans), args.batch):
        batched += predict_batch(model, scans[first : first + args.batch], cfg, env)
    many = time.perf_counter() - start
    same = sum(int((a == b).sum()) for a, b in zip(alone, batched, strict=True))
    return one, many, same / sum(a.numel() for a in alone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--base", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--scans", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{args.arch} FCN, batch {args.batch}, {args.crop} px crops, "
        f"{torch.get_num_threads()} threads"
    )
    times = {s: step_seconds(s, args) for s in (32, 16, 8)}
    for stride, sec in times.items():
        print(f"  output stride {stride:2d}: {sec:.3f} s/step  ({sec / times[16]:.2f}x stride 16)")
    one, many, agree = scoring(args)
    print(
        f"scoring {args.scans} scans at long side {args.base}: one at a time {one:.2f} s, "
        f"batches of {args.batch} {many:.2f} s ({one / many:.2f}x faster), "
        f"same prediction on {100 * agree:.3f} % of pixels"
    )


if __name__ == "__main__":
    main()
