"""An S3-compatible server on 127.0.0.1 for the object-storage tests: moto's standalone server,
started in its own process by a session fixture and stopped after the session.

The environment points every S3 client at it the standard way (`AWS_ENDPOINT_URL` and key
variables), inherited by the subprocesses and dask workers the tests start; instance metadata and
the user's own AWS files are turned off, so nothing leaves loopback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "moto.server", reason="the S3 tests need moto[server] (requirements-cluster.lock)"
)
pytest.importorskip("s3fs", reason="s3:// needs s3fs: pip install '.[cluster]'")

ENV = {
    "AWS_ACCESS_KEY_ID": "segloc-test",
    "AWS_SECRET_ACCESS_KEY": "segloc-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_MAX_ATTEMPTS": "2",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on loopback for the block; yields its endpoint URL, the environment
    pointing S3 clients at it (restored after). Used by the fixture and by bench/cluster.py."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL")}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.05)
        os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto server on loopback for the session (`moto_server`)."""
    pytest.importorskip("moto.server", reason="needs moto[server] (requirements-cluster.lock)")
    pytest.importorskip("s3fs", reason="s3:// needs s3fs: pip install '.[cluster]'")
    with moto_server() as endpoint:
        yield endpoint


def s3fs_client():
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True)


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A new, empty bucket on the loopback server: `s3://NAME`."""
    name = f"segloc-{uuid.uuid4().hex[:12]}"
    s3fs_client().mkdir(name)
    return f"s3://{name}"


def objects(url: str) -> dict[str, bytes]:
    """Every object under the prefix `url`, by its path relative to it."""
    fs = s3fs_client()
    root = url.removeprefix("s3://").rstrip("/")
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (lock files aside), by its path relative to it."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".lock")
    }


def upload(folder: Path, url: str) -> None:
    fs = s3fs_client()
    for name, data in files(folder).items():
        fs.pipe_file(f"{url.removeprefix('s3://')}/{name}", data)
