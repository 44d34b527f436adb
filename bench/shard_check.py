"""Cost of checking each shard's sha256 against the manifest while the loader streams it.

    .venv/bin/python bench/shard_check.py                       # data/shards (dvc repro render)
    .venv/bin/python bench/shard_check.py --shards /data/shards --batches 120

The pretraining loader (segloc's members: two views and instance masks, in this process, as
`pretrain.workers=0` reads them) decodes `--batches` batches of the default batch size, once
with the check (each drawn shard read whole, hashed and compared with the manifest) and once
without it (each shard streamed from its file as the loader read it before the check existed),
alternating, over `--rounds` rounds; each pass starts a fresh loader. Prints the median
samples/s of each and their ratio (target: the check costs <= 2 %, i.e. ratio >= 0.98), and,
as the A/B ratio carries the machine's noise (several % on a shared 2-core box), the check's own
time: reading a shard whole and hashing it, timed alone per shard, as a share of the unchecked
loader's time per sample.
"""

from __future__ import annotations

import argparse
import hashlib
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


def check_seconds(urls: tuple[str, ...], repeats: int = 20) -> float:
    """Median seconds to read one shard whole and hash it (what the check adds per shard)."""
    times = []
    for _ in range(repeats):
        for url in urls:
            t0 = time.perf_counter()
            with open(url, "rb") as f:
                hashlib.sha256(f.read()).hexdigest()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", type=Path, default=ROOT / "data" / "shards")
    p.add_argument("--batches", type=int, default=240)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if not (args.shards / "manifest.json").is_file():
        sys.exit(f"{args.shards}: no manifest.json; render the shards first (dvc repro render)")
    shards = open_shards(args.shards)
    cfg = PretrainConfig()
    spec = stream_spec(cfg, shards, Preset("mask", "per_class"), 0, 0, 0, args.batches + 1)
    unchecked = replace(spec, digests=None)
    on, off = [], []
    for r in range(args.rounds):  # alternating order: drift hits both alike
        for checked in (False, True) if r % 2 == 0 else (True, False):
            (on if checked else off).append(rate(spec if checked else unchecked, args.batches))
    per_sample = check_seconds(shards.urls) / (shards.num_samples / len(shards.urls))
    a, b = statistics.median(on), statistics.median(off)
    print(f"shards: {args.shards} ({len(shards.urls)} x {shards.num_samples // len(shards.urls)})")
    print(
        f"loader without the check: {b:.1f} samples/s (median of {args.rounds}; "
        f"range {min(off):.0f}-{max(off):.0f})"
    )
    print(f"loader with the check:    {a:.1f} samples/s (range {min(on):.0f}-{max(on):.0f})")
    print(f"ratio checked / unchecked: {a / b:.3f} (medians), {max(on) / max(off):.3f} (best runs)")
    print(
        f"the check's own time: {1e6 * per_sample:.1f} us per sample (read whole + sha256), "
        f"{100 * per_sample * b:.1f} % of the unchecked loader's time per sample"
    )


if __name__ == "__main__":
    main()
