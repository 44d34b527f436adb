"""A rank killed mid-run (SIGKILL, two CPU ranks): the other stops, the job ends non-zero in one
line (rank, its step, the last checkpoint, the resume command), and that command ends with the
uninterrupted run's weights."""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import python_env

pytestmark = pytest.mark.slow

STEPS = 20
ARGS = [
    "--set", f"pretrain.steps={STEPS}",
    "--set", "pretrain.checkpoint_every=4",
    "--set", "pretrain.batch_size=3",
    "--set", "pretrain.augment.crop=64",
    "--set", "pretrain.workers=0",
    "--set", "pretrain.queue_size=48",
    "--set", "pretrain.monitor.holdout=0",
    "--set", "pretrain.device=cpu",
]  # fmt: skip
LINE = re.compile(
    r"^pretrain: rank 1 died \(signal SIGKILL\) at step (\d+); the other ranks were stopped; "
    r"the last checkpoint is step (\d+) \((.+)\); resume with: (pretrain .+ --resume)$"
)


def _cmd(shards: Path, out: Path) -> list[str]:
    cli = [sys.executable, "-m", "train.cli", "--nproc-per-node", "2", "--method", "segloc"]
    return [*cli, "--shards", str(shards), "--out", str(out), *ARGS]


def _beacon(out: Path) -> tuple[int, int] | None:
    try:
        step, _, pid = (out / ".ranks" / "rank1").read_text().split()[:3]
        return int(step), int(pid)
    except (OSError, ValueError):
        return None


def test_killed_rank_ends_the_job_in_one_line_and_resume_matches(tmp_path, shard_writer):
    shards = shard_writer.write_shards(tmp_path / "shards", num_shards=4, per_shard=8)
    env = python_env(OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    done = subprocess.run(_cmd(shards, ref), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    kill_at = random.Random(time.time_ns()).randint(5, STEPS - 4)  # after checkpoint 4
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(shards, out), env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while (b := _beacon(out)) is None or b[0] < kill_at:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    os.kill(b[1], signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - killed < 30, f"still running 30 s after the kill (step {kill_at})"
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = LINE.match(last)
    assert m, last
    step, ckpt = int(m.group(1)), int(m.group(2))
    assert step >= kill_at and ckpt <= step and ckpt % 4 == 0, last
    assert Path(m.group(3)) == out / "checkpoint.pt"
    assert not (out / ".lock").exists() and not (out / ".ranks").exists()

    resume = shlex.split(m.group(4))
    assert resume[0] == "pretrain"
    cli = [sys.executable, "-m", "train.cli", *resume[1:]]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "backbone.pt").read_bytes() == (ref / "backbone.pt").read_bytes(), kill_at


def test_a_ranks_own_error_is_its_line_and_its_exit_status(tmp_path, shard_writer):
    """A damaged shard stops the rank that draws it with its one-line error (exit 2); the
    launcher stops the others and passes that status on instead of calling it a death."""
    shards = shard_writer.write_shards(tmp_path / "shards", num_shards=2, per_shard=8)
    for name in ("train-000000.tar", "train-000001.tar"):
        data = bytearray((shards / name).read_bytes())
        data[3000:3016] = bytes(16)  # inside the first sample's members, headers intact
        (shards / name).write_bytes(bytes(data))
    env = python_env(OMP_NUM_THREADS="1")
    done = subprocess.run(
        _cmd(shards, tmp_path / "out"), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert any(ln.startswith("Error: pretrain stopped at step 0: shard ") for ln in lines)
    assert re.match(r"pretrain: rank \d stopped with the error above \(exit status 2\)", lines[-1])
