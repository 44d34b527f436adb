"""Fine-tuning step rates at the paper's scale, for the wall-time figures in the README.

    python bench/gpu_rates.py                       # CUDA if present: configs/paper.yaml sizes
    python bench/gpu_rates.py --device cpu --small  # a check of the script on a laptop

Figures, all measured in this run on synthetic inputs (a step's cost depends on sizes, not on
content), each printed against its baseline from the same run:
- semantic: DeepLabV3 (or --head) on --arch, --batch crops of --crop px, forward + backward +
  SGD, bf16 autocast against float32 (the baseline); and scoring, per scan at --base px;
- instance: the Mask R-CNN of `evaluate --task instance` (eval.instance.build_maskrcnn) at
  --min-size / --max-size, --inst-batch scans with 3 items each, bf16 against float32;
and the hours that --steps / --inst-steps steps take at the faster rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.config import InstanceConfig  # noqa: E402
from eval.instance import build_maskrcnn  # noqa: E402
from eval.model import build_model  # noqa: E402
from segloc.atomic import write_json  # noqa: E402

CLASSES = 12  # PIDray's item classes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of `step`, after `warmup` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def semantic_seconds(
    args: argparse.Namespace, device: torch.device, bf16: bool
) -> tuple[float, float]:
    """(seconds per training step, seconds per scored scan at --base px)."""
    g = torch.Generator().manual_seed(0)
    model = build_model(args.arch, args.head, CLASSES + 1, 16, g).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, args.crop, args.crop, generator=g).to(device)
    y = torch.randint(0, CLASSES + 1, (args.batch, args.crop, args.crop), generator=g).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x)["out"].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = _timed(step, device, args.warmup, args.timed)
    model.eval()
    scans = torch.randn(args.batch, 3, args.base, args.base, generator=g).to(device)

    @torch.no_grad()
    def score() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(scans)["out"].argmax(1)

    return seconds, _timed(score, device, 1, max(1, args.timed // 2)) / args.batch


def instance_step_seconds(args: argparse.Namespace, device: torch.device, bf16: bool) -> float:
    inst = replace(
        InstanceConfig(), min_size=args.min_size, max_size=args.max_size, batch_size=args.inst_batch
    )
    with torch.random.fork_rng(devices=[]):  # torchvision's init draws from the global generator
        torch.manual_seed(0)
        model = build_maskrcnn(args.arch, CLASSES, inst).to(device)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    h, w = args.scan
    images, targets = [], []
    for _ in range(args.inst_batch):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        boxes, masks = [], torch.zeros(3, h, w, dtype=torch.uint8)
        for j in range(3):
            x0, y0 = (
                int(torch.randint(0, w // 2, (1,), generator=g)),
                int(torch.randint(0, h // 2, (1,), generator=g)),
            )
            x1, y1 = x0 + w // 4, y0 + h // 4
            boxes.append([x0, y0, x1, y1])
            masks[j, y0:y1, x0:x1] = 1
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
                "labels": torch.randint(1, CLASSES + 1, (3,), generator=g).to(device),
                "masks": masks.to(device),
            }
        )

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _timed(step, device, args.warmup, args.timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--head", default="deeplabv3", choices=["fcn", "deeplabv3"])
    parser.add_argument("--batch", type=int, default=16, help="eval.batch_size (paper: 16)")
    parser.add_argument("--crop", type=int, default=512, help="eval.crop_size (paper: 512)")
    parser.add_argument("--steps", type=int, default=4000, help="eval.steps (paper: 4000)")
    parser.add_argument("--base", type=int, default=640, help="eval.base_size (paper: 640)")
    parser.add_argument("--test-scans", type=int, default=18000, help="PIDray: ≈ 18k test scans")
    parser.add_argument("--inst-batch", type=int, default=16)
    parser.add_argument("--min-size", type=int, default=512)
    parser.add_argument("--max-size", type=int, default=800)
    parser.add_argument("--scan", type=int, nargs=2, default=(600, 800), metavar=("H", "W"))
    parser.add_argument("--inst-steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.small:
        args.arch, args.batch, args.crop, args.base, args.inst_batch = "resnet18", 2, 64, 96, 1
        args.min_size, args.max_size, args.scan = 64, 96, (64, 96)
        args.warmup, args.timed = 1, 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    bf16_ok = device.type == "cuda"  # CPU bf16 autocast is slower than float32: not worth timing
    out: dict = {"device": name, "arch": args.arch}

    fp32, score32 = semantic_seconds(args, device, bf16=False)
    bf16, score16 = semantic_seconds(args, device, bf16=True) if bf16_ok else (fp32, score32)
    best, score = min(fp32, bf16), min(score32, score16)
    print(
        f"semantic {args.head}-{args.arch}, batch {args.batch} x {args.crop}^2 on {name}: "
        f"float32 {fp32:.3f} s/step, bf16 {bf16:.3f} s/step ({fp32 / bf16:.2f}x); "
        f"{args.steps} steps: {args.steps * best / 60:.1f} min"
    )
    print(
        f"scoring at {args.base}^2: float32 {score32 * 1e3:.1f} ms/scan, bf16 "
        f"{score16 * 1e3:.1f} ms/scan ({score32 / score16:.2f}x); {args.test_scans} scans: "
        f"{args.test_scans * score / 60:.1f} min"
    )
    out["scoring"] = {
        "base": args.base,
        "fp32_s_per_scan": score32,
        "bf16_s_per_scan": score16,
        "scans": args.test_scans,
        "minutes": args.test_scans * score / 60,
    }
    out["semantic"] = {
        "batch": args.batch,
        "crop": args.crop,
        "fp32_s": fp32,
        "bf16_s": bf16,
        "steps": args.steps,
        "minutes": args.steps * best / 60,
    }

    fp32 = instance_step_seconds(args, device, bf16=False)
    bf16 = instance_step_seconds(args, device, bf16=True) if bf16_ok else fp32
    best = min(fp32, bf16)
    print(
        f"instance mask-rcnn-{args.arch}-fpn, batch {args.inst_batch}, {args.scan[0]}x"
        f"{args.scan[1]} scans at {args.min_size}-{args.max_size}: float32 {fp32:.3f} s/step, "
        f"bf16 {bf16:.3f} s/step ({fp32 / bf16:.2f}x); {args.inst_steps} steps: "
        f"{args.inst_steps * best / 60:.1f} min"
    )
    out["instance"] = {
        "batch": args.inst_batch,
        "min_size": args.min_size,
        "max_size": args.max_size,
        "fp32_s": fp32,
        "bf16_s": bf16,
        "steps": args.inst_steps,
        "minutes": args.inst_steps * best / 60,
    }
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
