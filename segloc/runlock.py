"""One writer per output folder: a run holds a lock file there for as long as it lives.

    with hold(out, "pretrain"):          # refused at once if a live run holds `out`
        ...

The lock is an advisory `flock` on `OUT/.lock` (or `OUT/.lock-A-B` for `synth render
--shard-range A:B`): the kernel drops it when the holding process dies, however it dies (forked
loader workers share it until they notice, within seconds), so a lock left by a killed run never
blocks the next one; the file keeps the holder's pid and command for the message, and any exit
of a live holder removes it. Disjoint shard ranges may render into one folder at once (that is
the fan-out); overlapping ones are refused, and a whole render clears dead range locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from segloc.atomic import TMP_PREFIX, names_full_disk
from segloc.errors import UserError

log = logging.getLogger(__name__)

LOCK = ".lock"
_RANGE = re.compile(r"^\.lock-(\d+)-(\d+)$")


def lock_name(shard_range: tuple[int, int] | None = None) -> str:
    return LOCK if shard_range is None else f"{LOCK}-{shard_range[0]}-{shard_range[1]}"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _describe(path: Path, info: dict) -> str:
    pid = info.get("pid", "?")
    what = info.get("command", "another run")
    return (
        f"{path.parent} is in use by a running {what} (pid {pid}, lock {path}); wait for it to "
        "end or stop it, then run again"
    )


def _held_by_other(path: Path) -> bool:
    """True if a live process holds `path`'s lock (we can't take it, even shared)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _overlaps(name: str, shard_range: tuple[int, int] | None) -> bool:
    if name == LOCK or shard_range is None:
        return True
    m = _RANGE.match(name)
    if m is None:
        return False
    a, b = int(m.group(1)), int(m.group(2))
    return a < shard_range[1] and shard_range[0] < b


@contextlib.contextmanager
def hold(
    folder: str | os.PathLike,
    command: str,
    shard_range: tuple[int, int] | None = None,
    ranged: bool = False,
    beside: bool = False,
) -> Iterator[Path]:
    """Hold `folder` for this process; a live holder makes this a UserError naming its pid.

    `ranged`: the folder is shared by range locks (`synth render`); a lock with `shard_range`
    None then covers every range. `beside`: the lock is `.NAME.lock` next to the folder, for an
    output that is replaced whole when complete (`evaluate`).
    """
    folder = Path(folder)
    where = folder.parent if beside else folder  # the folder the lock file lies in
    try:
        with names_full_disk(where):
            where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{where}: cannot create the output folder ({err.strerror})") from err
    path = where / (f".{folder.name}{LOCK}" if beside else lock_name(shard_range))
    fd = _take(path)
    try:
        try:
            previous = _holder(path)
            if previous.get("pid") not in (None, os.getpid()):
                log.info(
                    "%s: lock of pid %s (%s) was left by a run that is gone; taking it over",
                    path,
                    previous.get("pid"),
                    previous.get("command", "?"),
                )
            if ranged:
                _check_ranges(folder, path, shard_range)
            if shard_range is None:  # no other writer now: a killed run's temporaries go
                _clear_temporaries(folder, beside)
            info = {"pid": os.getpid(), "command": command, "started": time.time()}
            info["argv"] = sys.argv
            with names_full_disk(path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            yield path
        finally:
            # Whatever ends this holder, it leaves nothing behind (outputs are DVC-tracked
            # folders); only a killed run leaves the file, whose pid the next run names.
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _take(path: Path) -> int:
    """An fd holding the exclusive lock on the file now at `path` (another holder: refused)."""
    while True:
        try:
            with names_full_disk(path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"{path}: cannot create the run lock ({err.strerror})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(_describe(path, _holder(path))) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed it as we opened it: lock the file now there


def _clear_temporaries(folder: Path, beside: bool) -> None:
    """Temporaries (`segloc.atomic`) a killed run left: under `folder`, or of it beside it."""
    if beside:
        found = folder.parent.glob(f"{TMP_PREFIX}{folder.name}.*")
    else:
        found = folder.rglob(f"{TMP_PREFIX}*")
    for tmp in list(found):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        log.info("removed %s, left by a killed run", tmp)


def _check_ranges(folder: Path, path: Path, shard_range: tuple[int, int] | None) -> None:
    """Refuse an overlapping live range lock; a whole render clears dead ones."""
    for other in sorted(folder.glob(f"{LOCK}*")):
        if other.name == path.name or not _overlaps(other.name, shard_range):
            continue
        if _held_by_other(other):
            raise UserError(_describe(other, _holder(other)))
        if shard_range is None:
            other.unlink(missing_ok=True)  # left by a killed range render
