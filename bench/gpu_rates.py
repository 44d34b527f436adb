"""Step rates at the paper's scale: fine-tuning wall times for the README, pretraining throughput.

    python bench/gpu_rates.py                       # CUDA if present: configs/paper.yaml sizes
    python bench/gpu_rates.py --two-view            # the two-view pretraining section only
    python bench/gpu_rates.py --device cpu --small  # a check of the script on a laptop

Figures, all measured in this run on synthetic inputs (a step's cost depends on sizes, not on
content), each printed against its baseline from the same run:
- semantic: DeepLabV3 (or --head) on --arch, --batch crops of --crop px, forward + backward +
  SGD, bf16 autocast against float32 (the baseline); and scoring, per scan at --base px;
- instance: the Mask R-CNN of `evaluate --task instance` (eval.instance.build_maskrcnn) at
  --min-size / --max-size, --inst-batch scans with 3 items each, bf16 against float32;
  and the hours that --steps / --inst-steps steps take at the faster rate;
- two-view pretraining (run alone by --two-view; part of the default run on CUDA unless
  --no-two-view): two-view samples/s of the real segloc step (train.loop.build_model with mask
  pooling and one queue per class, train.step.train_step: host-to-device copy, augmentation,
  both encoders, loss, SGD) on configs/paper.yaml's pretrain settings with --arch at --tv-crop
  px, fed one loader batch decoded from bench/train_step.py's fake shards, in the training
  loop's own layout (channels_last on CUDA); a grid of --tv-batches, plus torch.compile at the
  largest batch (CUDA only). Its baseline, the practical ceiling: a plain torchvision --arch step with the
  same per-sample work at the same batch size (forward + backward + SGD on B images and a
  no-grad forward on B more; bf16 autocast and channels_last on CUDA, not compiled). The best
  segloc rate is set against the issue's target of 2,000 samples/s (resnet50, 224 px, bf16, one
  card), and its step time is split into phases with device-synchronised timers.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train.step as pretrain_step  # noqa: E402
from eval.config import InstanceConfig  # noqa: E402
from eval.instance import build_maskrcnn  # noqa: E402
from eval.model import build_model  # noqa: E402
from segloc.atomic import write_json  # noqa: E402
from segloc.paper import config_overrides  # noqa: E402
from segloc.params import load_params  # noqa: E402
from segloc.schedule import scaled_lr  # noqa: E402
from train import loop as pretrain_loop  # noqa: E402
from train.config import METHODS, PretrainConfig, load_pretrain_config  # noqa: E402
from train.data import open_shards  # noqa: E402

CLASSES = 12  # PIDray's item classes
TARGET = 2000.0  # two-view samples/s: resnet50, 224 px crops, bf16, one card (the goal)
LONG_RUN = 100_000  # the schedule's run length: the timed steps sit early in a long warm-up
PHASES = ("inputs", "forward", "backward", "optimizer", "other")
PHASE_NAMES = {
    "inputs": "host-to-device copy + augmentation",
    "forward": "forward: both encoders, loss, enqueue",
    "backward": "loss sync + zero_grad + backward",
    "optimizer": "optimizer step",
    "other": "rest of train_step",
}


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


# ---------------------------------------------------------------- two-view pretraining throughput


def _bench_train_step() -> ModuleType:
    """bench/train_step.py as a module: its fake-shard writer and loader batches."""
    spec = importlib.util.spec_from_file_location(
        "bench_train_step", ROOT / "bench" / "train_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paper_pretrain_config(args: argparse.Namespace, device: torch.device) -> PretrainConfig:
    """params.yaml's pretrain section under configs/paper.yaml, at --arch and --tv-crop."""
    overrides = config_overrides(ROOT / "configs" / "paper.yaml", ROOT / "params.yaml")
    cfg = load_pretrain_config(load_params(ROOT / "params.yaml", overrides))
    return replace(
        cfg,
        arch=args.arch,
        device=str(device),
        compile=False,
        workers=1,  # load_batches reads one stream
        shuffle_buffer=64,
        augment=replace(cfg.augment, crop=args.tv_crop),
    )


def _first_images(batch: dict, n: int) -> dict:
    """The first n samples of a collated two-view batch (its instances are image-major)."""
    if batch["img0"].shape[0] < n:
        raise RuntimeError(f"the loader batch holds {batch['img0'].shape[0]} samples, not {n}")
    keep = batch["inst_img"] < n
    out = dict(batch)
    for key in ("img0", "img1"):
        out[key] = batch[key][:n]
    for key in ("inst_img", "inst_slot", "inst_cls", "masks0", "masks1"):
        out[key] = batch[key][keep]
    return out


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def phase_split(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: Callable[[], None],
    device: torch.device,
    steps: int,
) -> dict[str, float]:
    """ms per phase of `step` (one train_step), from hooks that synchronise the device at each
    boundary: model forward pre-hook (inputs done), forward hook, optimizer pre-/post-hook."""
    marks: list[tuple[str, float]] = []

    def mark(name: str):
        def hook(*_) -> None:
            _sync(device)
            marks.append((name, time.perf_counter()))

        return hook

    handles = [
        model.register_forward_pre_hook(mark("inputs")),
        model.register_forward_hook(mark("forward")),
        opt.register_step_pre_hook(mark("backward")),
        opt.register_step_post_hook(mark("optimizer")),
    ]
    totals = dict.fromkeys(PHASES, 0.0)
    try:
        for _ in range(steps):
            marks.clear()
            _sync(device)
            last = time.perf_counter()
            step()
            _sync(device)
            for name, when in [*marks, ("other", time.perf_counter())]:
                totals[name] += when - last
                last = when
    finally:
        for handle in handles:
            handle.remove()
    return {name: 1e3 * t / steps for name, t in totals.items()}


def segloc_rate(
    cfg: PretrainConfig,
    batch: dict,
    classes: tuple[str, ...],
    device: torch.device,
    args: argparse.Namespace,
) -> tuple[float, dict[str, float]]:
    """(two-view samples/s of train_step, ms per phase) at cfg.batch_size and cfg.compile, in the
    training loop's own memory layout (channels_last weights and views on CUDA)."""
    preset = METHODS["segloc"]
    # PIDray's 12 queues (the bank's layout); the fake shards' labels use the first few.
    model = pretrain_loop.build_model(cfg, preset, max(CLASSES, len(classes)), device)
    opt = pretrain_loop.build_optimizer(model, cfg)
    peak = scaled_lr(cfg.lr, cfg.batch_size)
    ctx = pretrain_step.StepContext(cfg, preset, LONG_RUN, peak, device, 0, classes)
    counter = itertools.count()

    def step() -> None:  # ends in a host sync: train_step reads the loss
        pretrain_step.train_step(model, opt, dict(batch), next(counter), ctx)

    seconds = _timed(step, device, args.tv_warmup, args.tv_timed)
    split = phase_split(model, opt, step, device, args.tv_split)
    return cfg.batch_size / seconds, split


def plain_rate(
    args: argparse.Namespace, batch: int, device: torch.device, bf16: bool, channels_last: bool
) -> float:
    """Samples/s of the ceiling: a torchvision --arch step (forward + backward + SGD) on `batch`
    images and a no-grad forward of a second copy (the key encoder) on `batch` more."""
    with torch.random.fork_rng(devices=[]):  # torchvision's init draws from the global generator
        torch.manual_seed(0)
        net = torchvision.models.get_model(args.arch, num_classes=128).to(device)
    key = copy.deepcopy(net).requires_grad_(False)  # train mode: batch statistics, as MoCo's
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=layout)
    key.to(memory_format=layout)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(2)
    size = (batch, 3, args.tv_crop, args.tv_crop)
    x_q = torch.randn(size, generator=g).to(device).contiguous(memory_format=layout)
    x_k = torch.randn(size, generator=g).to(device).contiguous(memory_format=layout)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            q = net(x_q)
            with torch.no_grad():
                k = key(x_k)
            loss = -F.cosine_similarity(q.float(), k.float()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _timed(step, device, args.tv_warmup, args.tv_timed)


def two_view_rates(args: argparse.Namespace, device: torch.device) -> dict:
    """The grid's rows (segloc and plain samples/s, their ratio, the phase split), the best row."""
    cuda = device.type == "cuda"
    base = paper_pretrain_config(args, device)
    batches = sorted(set(args.tv_batches))
    helpers = _bench_train_step()
    with tempfile.TemporaryDirectory() as tmp:
        canvas = max(64, args.tv_crop + 32)  # configs/paper.yaml: 256 px canvas, 224 px crops
        shards = open_shards(helpers.fake_shards(Path(tmp) / "shards", canvas=canvas))
        (full,), _ = helpers.load_batches(replace(base, batch_size=batches[-1]), shards, 1)
    grid = [(b, False) for b in batches]
    if cuda:
        grid.append((batches[-1], True))  # compile costs a minute: the largest batch only
    plain: dict[int, float] = {}
    rows = []
    for b, compiled in grid:
        row = {"batch": b, "compile": compiled}
        try:
            if b not in plain:
                plain[b] = plain_rate(args, b, device, bf16=cuda, channels_last=cuda)
            batch = _first_images(full, b)
            if cuda:  # the training loop's loader pins its batches on CUDA
                batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
            cfg = replace(base, batch_size=b, compile=compiled)
            rate, split = segloc_rate(cfg, batch, shards.classes, device, args)
        except Exception as err:  # an OOM, or a compile failure, ends one row only
            if not (compiled or isinstance(err, torch.cuda.OutOfMemoryError)):
                raise
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            print(f"two-view batch {b}: {row['error']}", file=sys.stderr)
        else:
            row |= {
                "segloc_samples_per_s": rate,
                "plain_samples_per_s": plain[b],
                "ratio": rate / plain[b],
                "split_ms": split,
            }
        rows.append(row)
        _free(device)  # the row's models (and a failed row's traceback) are gone by now
    done = [r for r in rows if "error" not in r]
    best = max(done, key=lambda r: r["segloc_samples_per_s"]) if done else None
    return {
        "arch": args.arch,
        "crop": args.tv_crop,
        "canvas": canvas,
        "precision": "bf16" if cuda else "float32",
        "queues": max(CLASSES, len(shards.classes)),
        "queue_size": base.queue_size,
        "shuffle_bn_groups": base.shuffle_bn_groups,
        "optimizer": base.optimizer,
        "instances_per_sample": len(full["inst_img"]) / len(full["img0"]),
        "warmup": args.tv_warmup,
        "timed": args.tv_timed,
        "split_steps": args.tv_split,
        "rows": rows,
        "best": best,
        "target_samples_per_s": TARGET,
        "best_vs_target": best["segloc_samples_per_s"] / TARGET if best else None,
    }


def report_two_view(r: dict, name: str, cuda: bool) -> None:
    print(
        f"\ntwo-view pretraining on {name}: segloc ({r['queues']} class queues, {r['queue_size']} "
        f"keys in all) against a plain {r['arch']} step, {r['crop']} px crops, {r['precision']}; "
        f"{'channels_last' if cuda else 'contiguous'}; mean of {r['timed']} timed steps after "
        f"{r['warmup']} untimed\n"
    )
    print("| batch | compile | segloc samples/s | plain samples/s | segloc / plain |")
    print("|---:|---|---:|---:|---:|")
    for row in r["rows"]:
        head = f"| {row['batch']} | {'yes' if row['compile'] else 'no'} |"
        if "error" in row:
            print(f"{head} failed: {row['error']} | | |")
        else:
            print(
                f"{head} {row['segloc_samples_per_s']:,.1f} | {row['plain_samples_per_s']:,.1f} | "
                f"{row['ratio']:.2f} |"
            )
    best = r["best"]
    if best is None:
        print("\nno configuration ran")
        return
    split = best["split_ms"]
    total = sum(split.values())
    print(
        f"\nstep of the best (batch {best['batch']}, "
        f"{'compiled' if best['compile'] else 'eager'}): {total:.1f} ms, mean of "
        f"{r['split_steps']} synchronised steps\n"
    )
    print("| phase | ms | share |")
    print("|---|---:|---:|")
    for phase in PHASES:
        print(f"| {PHASE_NAMES[phase]} | {split[phase]:.1f} | {100 * split[phase] / total:.0f} % |")
    verdict = "meets it" if best["segloc_samples_per_s"] >= r["target_samples_per_s"] else "below"
    print(
        f"\nbest: {best['segloc_samples_per_s']:,.0f} two-view samples/s, "
        f"{100 * best['ratio']:.0f} % of the practical ceiling; target "
        f"{r['target_samples_per_s']:,.0f} (resnet50, 224 px, bf16, one card): "
        f"{100 * r['best_vs_target']:.0f} % of it, {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--head", default="deeplabv3", choices=["fcn", "deeplabv3"])
    parser.add_argument(
        "--batch", type=int, default=16, help="eval.finetune.batch_size (paper: 16)"
    )
    parser.add_argument(
        "--crop", type=int, default=512, help="eval.finetune.crop_size (paper: 512)"
    )
    parser.add_argument("--steps", type=int, default=4000, help="eval.finetune.steps (paper: 4000)")
    parser.add_argument("--base", type=int, default=640, help="eval.base_size (paper: 640)")
    parser.add_argument("--test-scans", type=int, default=18000, help="PIDray: ≈ 18k test scans")
    parser.add_argument("--inst-batch", type=int, default=16)
    parser.add_argument("--min-size", type=int, default=512)
    parser.add_argument("--max-size", type=int, default=800)
    parser.add_argument("--scan", type=int, nargs=2, default=(600, 800), metavar=("H", "W"))
    parser.add_argument("--inst-steps", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--tv-batches", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--tv-crop", type=int, default=224, help="pretraining crop (paper: 224)")
    parser.add_argument("--tv-warmup", type=int, default=3, help="two-view: untimed steps")
    parser.add_argument("--tv-timed", type=int, default=8, help="two-view: timed steps")
    parser.add_argument("--tv-split", type=int, default=3, help="two-view: phase-split steps")
    section = parser.add_mutually_exclusive_group()
    section.add_argument(
        "--two-view", action="store_true", help="only the two-view pretraining throughput"
    )
    section.add_argument(
        "--no-two-view", action="store_true", help="leave it out of the default run on CUDA"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.small:
        args.arch, args.batch, args.crop, args.base, args.inst_batch = "resnet18", 2, 64, 96, 1
        args.min_size, args.max_size, args.scan = 64, 96, (64, 96)
        args.warmup, args.timed = 1, 2
        args.tv_batches, args.tv_crop = [4], 64
        args.tv_warmup, args.tv_timed, args.tv_split = 1, 2, 1
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    out: dict = {"device": name, "arch": args.arch}
    if not args.two_view:
        fine_tuning_rates(args, device, name, out)
    if args.two_view or (cuda and not args.no_two_view):
        out["two_view"] = two_view_rates(args, device)
        report_two_view(out["two_view"], name, cuda)
    if args.json:
        write_json(args.json, out)


def fine_tuning_rates(args: argparse.Namespace, device: torch.device, name: str, out: dict) -> None:
    """The semantic, scoring and instance figures, printed and added to `out`."""
    bf16_ok = device.type == "cuda"  # CPU bf16 autocast is slower than float32: not worth timing
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


if __name__ == "__main__":
    main()
