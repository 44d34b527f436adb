"""Cost of checking each shard's sha256 against the manifest while the loader streams it.

    .venv/bin/python bench/shard_check.py                       # data/shards (dvc repro render)
    .venv/bin/python bench/shard_check.py --shards /data/shards --batches 120

The pretraining loader (segloc's members: two views and instance masks, in this process, as
`pretrain.workers=0` reads them) decodes `--batches` batches of the default batch size, once
with the check and once without, alternating, over `--rounds` rounds; each pass starts a fresh
loader (each shard read, hashed and checked as it is drawn). Prints the median samples/s of each
and their ratio (target: the check costs <= 2 %, i.e. ratio >= 0.98).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.config import Preset, PretrainConfig  # noqa: E402
from train.data import make_loader, open_shards  # noqa: E402
from train.loop import stream_spec  # noqa: E402


def rate(spec, batches: int) -> float:
    loader = iter(make_loader(spec, workers=0))
    next(loader)  # the shuffle buffer's fill is start-up, not throughput
    t0 = time.perf_counter()
    n = sum(next(loader)["img0"].shape[0] for _ in range(batches))
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", type=Path, default=ROOT / "data" / "shards")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not (args.shards / "manifest.json").is_file():
        sys.exit(f"{args.shards}: no manifest.json; render the shards first (dvc repro render)")
    shards = open_shards(args.shards)
    cfg = PretrainConfig()
    spec = stream_spec(cfg, shards, Preset("mask", "per_class"), 0, 0, 0, args.batches + 1)
    unchecked = replace(spec, digests=None)
    on, off = [], []
    for _ in range(args.rounds):
        off.append(rate(unchecked, args.batches))
        on.append(rate(spec, args.batches))
    a, b = statistics.median(on), statistics.median(off)
    print(f"shards: {args.shards} ({len(shards.urls)} x {shards.num_samples // len(shards.urls)})")
    print(f"loader without the check: {b:.1f} samples/s (median of {args.rounds})")
    print(f"loader with the check:    {a:.1f} samples/s")
    print(f"ratio checked / unchecked: {a / b:.3f} (cost {100 * (1 - a / b):+.1f} %)")


if __name__ == "__main__":
    main()
