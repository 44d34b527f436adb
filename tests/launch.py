"""Run a test worker under `torchrun` (2 gloo processes on CPU) and fail with its stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_env(**extra: str) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, for a test's subprocess."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def torchrun(target: list[str], cwd: Path, nproc: int = 2, timeout: int = 300) -> None:
    """`target`: a script path or `-m module`, then its arguments."""
    env = python_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *target]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def dvc(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`dvc ARGS` in `cwd` with this install's console scripts first on PATH (stage commands)."""
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
