"""Helpers for the fault tests: a small disk that fills up, and a lock held by another process.

`SmallDisk` is a real size-limited tmpfs where the test may mount one (root, Linux); elsewhere
the same budget is enforced by raising ENOSPC from the write calls the pipeline makes (plain
file writes and the shard writer), so the tests run everywhere and mean the same thing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.launch import python_env


class SmallDisk:
    def __init__(self, root: Path, size: int):
        self.root, self.size, self.mounted = root, size, False
        self.written = 0
        self._undo: list = []

    def __enter__(self) -> SmallDisk:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.environ.get("SEGLOC_TEST_NO_TMPFS") != "1" and shutil.which("mount"):
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.root)],
                capture_output=True,
            )
            self.mounted = done.returncode == 0
        if not self.mounted:
            self._inject()
        return self

    def free(self, size: int = 1 << 30) -> None:
        """Make room, as a user would after deleting something."""
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.root)], check=True)
        else:
            self.size, self.written = size, 0

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._undo):
            undo()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)

    # ------------------------------------------------------------ injected ENOSPC
    def _charge(self, path: object, n: int) -> None:
        if str(path).startswith(str(self.root)):
            if self.written + n > self.size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            self.written += n

    def _inject(self) -> None:
        from synth.shards import TarWriter

        disk = self
        plain = pathlib.Path.write_bytes
        tar_write = TarWriter._write

        def write_bytes(path, data):
            disk._charge(path, len(data))
            return plain(path, data)

        def _write(writer, data):
            disk._charge(getattr(writer.f, "name", ""), len(data))
            return tar_write(writer, data)

        pathlib.Path.write_bytes = write_bytes
        TarWriter._write = _write
        self._undo += [
            lambda: setattr(pathlib.Path, "write_bytes", plain),
            lambda: setattr(TarWriter, "_write", tar_write),
        ]


@contextlib.contextmanager
def held_by_another_process(folder: Path, command: str, beside: bool = False) -> Iterator:
    """A live process holding `folder`'s run lock; yields its Popen (kill it to leave it stale)."""
    code = (
        "import sys, time\n"
        "from segloc.runlock import hold\n"
        "h = hold(sys.argv[1], sys.argv[2], beside=sys.argv[3] == '1')\n"
        "h.__enter__()\n"
        "print('held', flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), command, "1" if beside else "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def tiny_pretrain(*keys: str) -> list[str]:
    """`pretrain --set` arguments for a few-second run on the train tests' tiny shards."""
    base = (
        "pretrain.batch_size=3",
        "pretrain.augment.crop=64",
        "pretrain.workers=0",
        "pretrain.queue_size=48",
        "pretrain.monitor.holdout=0",
    )
    return [x for key in (*base, *keys) for x in ("--set", key)]
