"""When a rank dies: every other rank stops, and the job ends in one line saying what to do.

    pretrain --nproc-per-node 2 --method segloc --shards data/shards --out runs/segloc

starts the ranks on this machine with torch's elastic launcher (what `torchrun --standalone`
runs). Each rank writes its step, and rank 0 the step of its last checkpoint, into a beacon file
`OUT/.ranks/rankR` (an 8-byte-aligned pwrite per step, no fsync). When a rank dies (SIGKILL, out of
memory, a crash), the survivors' next collective fails; they exit with `PEER_LOST` and no
traceback, the launcher stops any that remain (its monitor polls every 0.5 s), and reads the
beacons to print

    pretrain: rank 1 died (signal SIGKILL) at step 212; the other ranks were stopped; the last
    checkpoint is step 200 (runs/segloc/checkpoint.pt); resume with: pretrain ... --resume

Under a plain `torchrun` (several machines) each surviving rank prints the same line from its
own view instead, and torchrun adds its own report.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

BEACONS = ".ranks"
PEER_LOST = 75  # a survivor's exit status: another rank stopped first
ERRORS = (1, 2, 28)  # a rank's own one-line error (click's, a UserError, a full disk)
_ENV = "SEGLOC_RANK_BEACONS"


class Beacon:
    """This rank's step and last checkpoint step in `dir/rankR`, for the launcher to read."""

    def __init__(self, rank: int):
        self.fd: int | None = None
        self.rank = rank
        self.step_done = 0
        self.ckpt = -1
        folder = os.environ.get(_ENV)
        self.parent = os.getppid() if folder else None  # the launcher: if it goes, so does this
        if folder:
            try:
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"rank{rank}")
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:  # progress notes only: a full disk must not stop a run
                log.warning("rank %d: no progress beacon (%s)", rank, err.strerror)

    def update(self, step: int | None = None, checkpoint: int | None = None) -> None:
        if step is not None:
            self.step_done = step
        if checkpoint is not None:
            self.ckpt = checkpoint
        if self.parent is not None and os.getppid() != self.parent:
            # The launcher was killed: it held the folder's lock, so nothing may write here now.
            print(
                f"pretrain rank {self.rank}: the launcher is gone; stopping at step "
                f"{self.step_done}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(PEER_LOST)
        if self.fd is not None:
            line = f"{self.step_done} {self.ckpt} {os.getpid()}".ljust(63) + "\n"
            try:
                os.pwrite(self.fd, line.encode(), 0)
            except OSError:  # a full disk must not stop training for a progress note
                pass

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def under_launcher() -> bool:
    return bool(os.environ.get(_ENV))


def read_beacon(folder: Path, rank: int) -> tuple[int, int, int] | None:
    """(step, checkpoint step, pid) of `rank`, or None."""
    try:
        step, ckpt, pid = (folder / f"rank{rank}").read_text().split()[:3]
        return int(step), int(ckpt), int(pid)
    except (OSError, ValueError):
        return None


def lost_peer_line(rank: int, step: int, ckpt: int, out: Path) -> str:
    """A survivor's own line (plain torchrun): it cannot tell which rank went first."""
    return (
        f"pretrain: rank {rank} lost contact with the other ranks at step {step} (one of them "
        f"stopped or died); {_resume_hint(ckpt, out, None)}"
    )


def _resume_hint(ckpt: int, out: Path, argv: list[str] | None) -> str:
    """What to run next; `argv` None: the ranks came from a torchrun command we cannot see."""
    path = out / "checkpoint.pt"
    if argv is None:
        again, resume = "the same torchrun command", "the same torchrun command plus --resume"
    else:
        args = ["pretrain", *(a for a in argv if a != "--resume")]
        again, resume = shlex.join(args), shlex.join([*args, "--resume"])
    if ckpt < 0 and not path.is_file():
        return f"no checkpoint yet: run it again with: {again}"
    step = f"step {ckpt} " if ckpt >= 0 else ""
    return f"the last checkpoint is {step}({path}); resume with: {resume}"


def is_peer_loss(err: BaseException) -> bool:
    """A collective failed because another rank went away (gloo/NCCL report it differently)."""
    import torch.distributed as tdist

    if isinstance(err, getattr(tdist, "DistError", ())):
        return True
    text = str(err).lower()
    lost = ("connection closed by peer", "connection reset by peer", "broken pipe")
    return isinstance(err, RuntimeError) and any(s in text for s in lost)


def launch(nproc: int, argv: list[str], out: Path) -> int:
    """Run `pretrain ARGV` as `nproc` ranks on this machine; one line if a rank dies."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the line below says it all
    beacons = out / BEACONS
    shutil.rmtree(beacons, ignore_errors=True)
    os.environ[_ENV] = str(beacons)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        logs_specs=DefaultLogsSpecs(log_dir=tempfile.mkdtemp(prefix="pretrain-ranks-")),
    )
    try:
        elastic_launch(config, sys.executable)("-m", "train.cli", *argv)
    except ChildFailedError as err:
        line, status = died_line(err.failures, beacons, out, argv)
        print(line, file=sys.stderr)
        return status
    except SignalException as err:  # Ctrl-C or SIGTERM reached the launcher
        zero = read_beacon(beacons, 0)
        hint = _resume_hint(zero[1] if zero else -1, out, argv)
        print(f"pretrain: interrupted ({err.sigval.name}); {hint}", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(config.logs_specs.root_log_dir, ignore_errors=True)
        shutil.rmtree(beacons, ignore_errors=True)
        os.environ.pop(_ENV, None)
    return 0


def died_line(failures: dict, beacons: Path, out: Path, argv: list[str]) -> tuple[str, int]:
    """Name the rank that went first (not a survivor), and the job's exit status."""
    # Survivors exit with PEER_LOST, or by the signal the launcher stops them with.
    stopped = (PEER_LOST, -signal.SIGTERM, -signal.SIGABRT)
    culprits = [f for f in failures.values() if f.exitcode not in stopped] or list(
        failures.values()
    )
    first = min(culprits, key=lambda f: (f.timestamp, f.local_rank))
    rank = first.local_rank
    if first.exitcode in ERRORS:  # it printed its own one-line error, which says what to do
        return (
            f"pretrain: rank {rank} stopped with the error above (exit status "
            f"{first.exitcode}); the other ranks were stopped",
            first.exitcode,
        )
    if first.exitcode < 0:
        try:
            how = f"signal {signal.Signals(-first.exitcode).name}"
        except ValueError:
            how = f"signal {-first.exitcode}"
    else:
        how = f"exit status {first.exitcode}"
    mine = read_beacon(beacons, rank)
    zero = read_beacon(beacons, 0)
    step = f"at step {mine[0]}" if mine else "before its first step"
    ckpt = zero[1] if zero else -1
    line = (
        f"pretrain: rank {rank} died ({how}) {step}; the other ranks were stopped; "
        f"{_resume_hint(ckpt, out, argv)}"
    )
    return line, 1
