"""Fault soak: kill render, pretraining and evaluation at random moments, resume, compare bytes.

    .venv/bin/python bench/fault_soak.py                 # 10 kills per stage (30), ~4 min on 2 cores
    .venv/bin/python bench/fault_soak.py --kills 3 --seed 1

On a tiny pipeline (the project's params.yaml with small sizes, `synth demo-data --scale tiny`),
each stage first runs undisturbed to give the reference bytes and its duration T. Then the same
command runs into a fresh folder and is killed with SIGKILL (its whole process group: render
helpers and loader workers too) at a moment drawn uniformly from [0.05 T, 0.95 T]; it is started
again (pretraining with --resume once a checkpoint exists) and killed again at a new moment,
until a run finishes first; that ends a chain, and the next chain starts from an empty folder,
until `--kills` kills in all. Every chain's output must equal the reference byte for byte in the
files that record no wall time (every shard and the manifest; backbone.pt and the loss/monitor
tables; the evaluation's metrics, confusion, samples and per-class scores) and hold exactly the
reference's file names (no lock, beacon or temporary left). Exit status 1 if any differs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "synth": ["synth.num_shards=8", "synth.samples_per_shard=64", "synth.canvas=64"],
    "pretrain": [
        "pretrain.steps=24",
        "pretrain.batch_size=8",
        "pretrain.checkpoint_every=4",
        "pretrain.monitor.holdout=16",
        "pretrain.monitor.every=8",
        "pretrain.workers=1",
        "pretrain.threads=2",
        "pretrain.augment.crop=48",
    ],
    "eval": ["eval.probe.epochs=3", "eval.probe.repeats=2", "eval.threads=2"],
}


def sets(*sections: str) -> list[str]:
    return [x for s in sections for o in TINY[s] for x in ("--set", o)]


def stages(work: Path, tag: str) -> dict[str, list[str]]:
    shards, run, ev = work / f"shards-{tag}", work / f"pretrain-{tag}", work / f"eval-{tag}"
    return {
        "render": [str(BIN / "synth"), "render", "--out", str(shards), *sets("synth")],
        "pretrain": [
            str(BIN / "pretrain"),
            "--method",
            "segloc",
            "--shards",
            str(work / "shards-ref"),
            "--out",
            str(run),
            *sets("pretrain"),
        ],
        "evaluate": [
            str(BIN / "evaluate"),
            "--init",
            str(work / "pretrain-ref"),
            "--protocol",
            "probe",
            "--out",
            str(ev),
            *sets("eval"),
        ],
    }


def compared(stage: str, out: Path) -> dict[str, bytes]:
    """The files of an output that carry no wall time."""
    if stage == "render":
        files = [*sorted(out.glob("train-*.tar")), out / "manifest.json"]
    elif stage == "pretrain":
        files = [out / "backbone.pt", out / "plots" / "train.tsv", out / "plots" / "monitor.tsv"]
    else:
        files = [out / "metrics.json", out / "confusion.json", out / "samples.npz"]
        files += [out / "plots" / "per_class_iou.json"]
    return {f.name: f.read_bytes() for f in files if f.is_file()}


def out_of(cmd: list[str]) -> Path:
    return Path(cmd[cmd.index("--out") + 1])


def run(cmd: list[str], cwd: Path, kill_after: float | None = None) -> tuple[bool, float]:
    """(killed, seconds); killed is False when the command ended before `kill_after`."""
    log = open(cwd / "soak.log", "a")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=log, start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, time.monotonic() - t0
    finally:
        log.close()
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed (exit {proc.returncode}); see {cwd / 'soak.log'}")
    return False, time.monotonic() - t0


def soak(
    stage: str,
    cmd: list[str],
    took: float,
    kills: int,
    rng: random.Random,
    cwd: Path,
    want: dict[str, bytes],
    names: set[str],
) -> tuple[int, int, bool]:
    """Kill-and-resume chains until `kills` kills: each chain starts from nothing, is killed at
    random moments until a run finishes, and its output is compared. (kills, chains, all equal)"""
    out, done, chains, same = out_of(cmd), 0, 0, True
    while done < kills:
        shutil.rmtree(out, ignore_errors=True)
        while True:
            resume = stage == "pretrain" and (out / "checkpoint.pt").is_file()
            again = cmd + ["--resume"] * resume
            limit = rng.uniform(0.05, 0.95) * took if done < kills else None
            killed, _ = run(again, cwd, kill_after=limit)
            if not killed:
                break
            done += 1
        chains += 1
        same &= compared(stage, out) == want and listing(out) == names
    return done, chains, same


def listing(out: Path) -> set[str]:
    """Every file name under an output: no lock, beacon or temporary may be left behind."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=10, help="kills per stage (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fault-soak-") as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
        demo = [str(BIN / "synth"), "demo-data", "--out", "data/demo", "--scale", "tiny"]
        run(demo, work)
        ref, test = stages(work, "ref"), stages(work, "soak")
        total, bad = 0, []
        print(f"{'stage':<10}{'undisturbed':>13}{'kills':>7}{'chains':>8}{'identical':>11}")
        for stage in ("render", "pretrain", "evaluate"):
            _, took = run(ref[stage], work)
            want, names = compared(stage, out_of(ref[stage])), listing(out_of(ref[stage]))
            n, chains, same = soak(stage, test[stage], took, args.kills, rng, work, want, names)
            total += n
            if not (same and want):
                bad.append(stage)
            print(f"{stage:<10}{took:>11.1f} s{n:>7}{chains:>8}{'yes' if same else 'NO':>11}")
        wall = time.monotonic() - t_start
        print(
            f"{total} kills, seed {args.seed}; every final output byte-identical: "
            f"{'yes' if not bad else 'NO (' + ', '.join(bad) + ')'}; wall {wall / 60:.1f} min"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
