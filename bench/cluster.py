"""Beyond one machine, measured on one: the render through dask's local cluster, and pretraining's
loader reading a bucket, each against its one-machine baseline in the same run.

    .venv/bin/python bench/cluster.py                      # 64 shards (8,192 samples), 3 rounds
    .venv/bin/python bench/cluster.py --num-shards 16 --rounds 5

Render: `synth render` end to end (interpreter start, input loading, cluster start, render,
manifest) into a fresh local folder, with `--workers 2` (this process and a helper: the baseline),
then `--distributor dask` on a local cluster of 1 and of 2 worker processes, in alternating order
over `--rounds` rounds; medians, and each engine run's ratio of throughput to the baseline (target
for 2 workers: >= 0.9). Every render is checked byte-identical to the baseline's.

Loader: an S3 server (moto) on 127.0.0.1 holds a copy of the baseline's shards; pretraining's
loader (segloc's members, `pretrain.workers=0`, each shard read whole and checked) decodes
`--batches` batches from the bucket and from the local folder, alternating; medians of samples/s
and their ratio. Needs the cluster extra and moto (requirements-cluster.lock, `make setup-cluster`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.s3 import files, moto_server, s3fs_client, upload  # noqa: E402 - the tests' S3 server

SYNTH = (sys.executable, "-c", "from synth.cli import main; main()")


def render(out: Path, num_shards: int, *engine: str) -> float:
    """Seconds for one `synth render` of `num_shards` shards into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*SYNTH, "render", "--out", str(out), "--num-shards", str(num_shards), *engine]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def render_bench(tmp: Path, num_shards: int, rounds: int) -> Path:
    arms = {
        "--workers 2 (baseline)": ("--workers", "2"),
        "dask local cluster, 1 worker": ("--distributor", "dask", "--workers", "1"),
        "dask local cluster, 2 workers": ("--distributor", "dask", "--workers", "2"),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    base = tmp / "base"
    render(base, num_shards, *arms["--workers 2 (baseline)"])  # warm the page cache
    reference = files(base)
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            out = tmp / f"r{r}-{len(times[name])}"
            times[name].append(render(out, num_shards, *arms[name]))
            if files(out) != reference:
                sys.exit(f"{name}: the render differs from the baseline's bytes")
            shutil.rmtree(out)
    samples = json.loads((base / "manifest.json").read_text())["num_samples"]
    t_base = statistics.median(times["--workers 2 (baseline)"])
    print(f"render: {num_shards} shards ({samples} samples), {rounds} rounds, end to end")
    for name, ts in times.items():
        t = statistics.median(ts)
        runs = ", ".join(f"{x:.2f}" for x in ts)
        print(
            f"  {name:32s} {t:6.2f} s  {samples / t:7.0f} samples/s  "
            f"x{t_base / t:.2f} of the baseline  (runs {runs} s)"
        )
    print("  every render byte-identical to the baseline's")
    return base


def loader_rate(shards_location: str, batches: int) -> float:
    from train.config import Preset, PretrainConfig
    from train.data import make_loader, open_shards
    from train.loop import stream_spec

    shards = open_shards(shards_location)
    spec = stream_spec(PretrainConfig(), shards, Preset("mask", "per_class"), 0, 0, 0, batches + 1)
    loader = iter(make_loader(spec, workers=0))
    next(loader)  # the shuffle buffer's fill is start-up, not throughput
    t0 = time.perf_counter()
    n = sum(next(loader)["img0"].shape[0] for _ in range(batches))
    return n / (time.perf_counter() - t0)


def loader_bench(shards: Path, batches: int, rounds: int) -> None:
    with moto_server():
        s3fs_client().mkdir("bench")
        upload(shards, "s3://bench/shards")
        local, bucket = [], []
        for r in range(rounds):
            for remote in (False, True) if r % 2 == 0 else (True, False):
                where = "s3://bench/shards" if remote else str(shards)
                (bucket if remote else local).append(loader_rate(where, batches))
    a, b = statistics.median(bucket), statistics.median(local)
    print(f"loader: {batches} batches of segloc's members, {rounds} rounds, pretrain.workers=0")
    print(f"  local disk        {b:7.1f} samples/s (runs {', '.join(f'{x:.0f}' for x in local)})")
    print(f"  S3 on loopback    {a:7.1f} samples/s (runs {', '.join(f'{x:.0f}' for x in bucket)})")
    print(f"  ratio bucket / local: {a / b:.3f} (medians)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--num-shards",
        type=int,
        default=64,
        help="shards per render (synth.samples_per_shard each)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=120, help="loader batches per pass")
    args = p.parse_args()
    os.chdir(ROOT)  # params.yaml and the demo data (dvc repro demo) are the default's
    if not (ROOT / "data" / "demo").is_dir():
        sys.exit("data/demo: no demo data; run `dvc repro demo` first")
    print(f"machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        base = render_bench(Path(tmp), args.num_shards, args.rounds)
        loader_bench(base, args.batches, args.rounds)


if __name__ == "__main__":
    main()
