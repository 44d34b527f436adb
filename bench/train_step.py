"""Pretraining step rate: class queues (segloc) against one queue, and the loader against the steps.

    python bench/train_step.py                                   # tiny fake shards, CPU defaults
    python bench/train_step.py --shards data/shards --steps 20
    python bench/train_step.py --arch resnet50 --crop 224 --batch 64 --device cuda --json out.json

Three variants run on the SAME batches from the SAME initial weights, interleaved step by step so
load drift on a shared machine hits them alike:
  segloc       mask pooling, one queue per class (the method)
  mask+single  mask pooling, one queue of the same total size (isolates the class-queue cost)
  insloc       box RoIAlign, one queue (the baseline)
The class-queue overhead is segloc / mask+single - 1 (target <= 5 %). The loader rate is decoded
two-view samples per second of one worker, against the samples per second the steps consume.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segloc.atomic import write_json  # noqa: E402
from segloc.schedule import scaled_lr  # noqa: E402
from train.config import AugmentConfig, Preset, PretrainConfig  # noqa: E402
from train.data import make_loader, open_shards  # noqa: E402
from train.loop import build_model, build_optimizer, resolve_device, stream_spec  # noqa: E402
from train.step import StepContext, train_step  # noqa: E402

VARIANTS = {
    "segloc": Preset("mask", "per_class"),
    "mask+single": Preset("mask", "single"),
    "insloc": Preset("box", "single"),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shards", type=Path, help="synth render output; default: tiny fake shards")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def fake_shards(root: Path, canvas: int) -> Path:
    """The schema-v1 writer of the train tests (kept there, imported by path)."""
    spec = importlib.util.spec_from_file_location(
        "train_shard_fixture", ROOT / "tests" / "train" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_shards(root, num_shards=4, per_shard=32, canvas=canvas, num_classes=3)


def load_batches(cfg: PretrainConfig, shards, n: int) -> tuple[list[dict], float]:
    """n batches from one worker, and that worker's rate in decoded two-view samples/s."""
    spec = stream_spec(cfg, shards, Preset("mask", "per_class"), 0, 0, 0, n + 1)
    loader = iter(make_loader(spec, workers=1))
    first = next(loader)  # startup and shuffle-buffer fill are not throughput
    t0 = time.perf_counter()
    batches = [first] + [next(loader) for _ in range(n - 1)]
    rate = sum(b["img0"].shape[0] for b in batches[1:]) / (time.perf_counter() - t0)
    return batches, rate


def time_variants(cfg: PretrainConfig, batches: list[dict], classes, device, warmup: int) -> dict:
    runs = {}
    for name, preset in VARIANTS.items():
        model = build_model(cfg, preset, len(classes), device)
        ctx = StepContext(
            cfg, preset, len(batches), scaled_lr(cfg.lr, cfg.batch_size), device, 0, classes
        )
        runs[name] = (model, build_optimizer(model, cfg), ctx, [])
    for step, batch in enumerate(batches):
        for model, opt, ctx, times in runs.values():  # interleaved: drift hits all alike
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(model, opt, dict(batch), step, ctx)  # ends in a host sync (loss value)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
    return {name: statistics.median(r[3]) for name, r in runs.items()}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = PretrainConfig(
        arch=args.arch,
        batch_size=args.batch,
        queue_size=args.queue_size,
        augment=AugmentConfig(crop=args.crop),
        device=str(device),
        workers=1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.shards or fake_shards(Path(tmp) / "shards", canvas=max(64, args.crop + 32))
        shards = open_shards(root)
        batches, loader_rate = load_batches(
            replace(cfg, shuffle_buffer=64), shards, args.warmup + args.steps
        )
    step_s = time_variants(cfg, batches, shards.classes, device, args.warmup)
    need = args.batch / step_s["segloc"]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "crop": args.crop,
        "batch": args.batch,
        "queue_size": args.queue_size,
        "classes": len(shards.classes),
        "steps_timed": args.steps,
        "steps_per_s": {k: 1.0 / v for k, v in step_s.items()},
        "class_queue_overhead": step_s["segloc"] / step_s["mask+single"] - 1.0,
        "insloc_vs_segloc": step_s["insloc"] / step_s["segloc"],
        "loader_samples_per_s_per_worker": loader_rate,
        "samples_per_s_needed": need,
        "workers_needed": need / loader_rate,
    }
    report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)


def report(r: dict) -> None:
    print(
        f"{r['arch']} {r['crop']}px batch {r['batch']} on {r['device']} ({r['threads']} threads), "
        f"{r['classes']} classes, median of {r['steps_timed']} steps"
    )
    for name, rate in r["steps_per_s"].items():
        print(f"  {name:12s} {rate:8.3f} steps/s  {rate * r['batch']:8.1f} samples/s")
    verdict = "ok" if r["class_queue_overhead"] <= 0.05 else "ABOVE the 5 % target"
    print(
        f"  class-queue overhead (segloc / mask+single - 1): {100 * r['class_queue_overhead']:+.1f} % "
        f"({verdict})"
    )
    print(
        f"  loader: {r['loader_samples_per_s_per_worker']:.1f} two-view samples/s per worker; "
        f"steps consume {r['samples_per_s_needed']:.1f}/s -> {r['workers_needed']:.2f} workers needed"
    )


if __name__ == "__main__":
    main()
