"""Write files and folders so that nothing half-written ever looks complete.

Everything goes to a temporary name in the same folder (same filesystem, so `os.replace` is atomic)
and is renamed into place only once complete; on any error the temporary is removed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segloc.errors import UserError

TMP_PREFIX = ".tmp-"
FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """No space left while writing `path`; what was half-written is gone."""

    exit_code = 28  # ENOSPC, as a shell would want it

    def __init__(self, path: str | os.PathLike, hint: str = "run the same command again"):
        self.path, self.hint = Path(path), hint
        super().__init__(
            f"{path}: no space left on the device while writing it (nothing half-written was "
            f"kept); free space, then {hint}"
        )

    def __reduce__(self):  # crosses from a render helper process intact
        return (DiskFull, (self.path, self.hint))


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in FULL


@contextlib.contextmanager
def names_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT) inside the block becomes `DiskFull(path)`."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(path) from err
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it to `path` when the block succeeds."""
    path = Path(path)
    with names_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    # mkstemp makes the file owner-only; outputs get the permissions a plain open() would give.
    tmp.chmod(0o666 & ~_umask())
    try:
        with names_full_disk(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` (removed first) on success."""
    path = Path(path)
    with names_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        with names_full_disk(path):
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    except DiskFull as err:
        # A file of the folder named its temporary path: name the path it would have had.
        if err.path.is_relative_to(tmp):
            raise DiskFull(path / err.path.relative_to(tmp), err.hint) from err
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a buffer: torch's own writer reports a full disk as a RuntimeError
    without the path; a plain write gives the OSError that `atomic_path` names."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """JSON with sorted keys, so the same object always gives the same bytes."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
