"""Where shards live: a local folder, or any fsspec URL (`s3://`, `gs://`, `memory://`, ...).

    out = open_store("s3://bucket/shards")      # or "data/shards", or "file:///abs/data/shards"
    out.write_json(".records/train-000000.json", record)
    data = out.read_bytes("manifest.json")

A local path or `file://` URL gives a `Folder`: files are written under a temporary name and renamed
into place (`segloc.atomic`), a full disk is named. Anything else gives a `Bucket`, an fsspec
filesystem: an object appears whole when its upload completes (S3 and GCS PUTs, multipart ones
included, are atomic) and there is no rename, so what is complete is said by records and the
manifest written after the objects they name (docs/design.md §4.6).

Credentials come from the environment the standard way: for S3 `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` or `AWS_PROFILE`, and `AWS_ENDPOINT_URL` for an S3-compatible server (MinIO,
Ceph); for GCS `GOOGLE_APPLICATION_CREDENTIALS` or the machine's default account. Every storage
failure becomes one `UserError` line naming the URL (`storage_errors`). s3fs and gcsfs come with the
`cluster` extra: `pip install 'segloc[cluster]'`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segloc.atomic import write_json
from segloc.errors import UserError

# Protocols whose first path component is a bucket that must exist before anything is written.
BUCKETED = {"s3", "s3a", "gs", "gcs"}
EXTRA = "pip install 'segloc[cluster]'"
# The packages fsspec needs per protocol, for the message when one is missing.
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `location` is a URL to something other than the local filesystem."""
    return _protocol(location) not in (None, "file", "local")


def _protocol(location: str | os.PathLike) -> str | None:
    text = os.fspath(location)
    return text.split("://", 1)[0].lower() if "://" in text else None


def normalize(url: str) -> str:
    """A URL without trailing slashes after its protocol (`s3://b/x/` -> `s3://b/x`)."""
    protocol, _, rest = os.fspath(url).partition("://")
    return f"{protocol}://{rest.rstrip('/')}"


def local_path(location: str | os.PathLike) -> Path:
    """The local path of a plain path or a `file://` URL."""
    text = os.fspath(location)
    if _protocol(text) in ("file", "local"):
        text = text.split("://", 1)[1]
    return Path(text)


def join(location: str | os.PathLike, name: str) -> str:
    """`name` inside the folder or prefix `location`, as a string of the same kind."""
    if is_remote(location):
        return normalize(os.fspath(location)) + "/" + name
    return str(local_path(location) / name)


def open_store(location: str | os.PathLike) -> Folder | Bucket:
    return Bucket(os.fspath(location)) if is_remote(location) else Folder(local_path(location))


def read_bytes(location: str | os.PathLike) -> bytes:
    """The bytes of a file or object; FileNotFoundError if there is none, `UserError` for any other
    storage failure (credentials, bucket, network)."""
    if not is_remote(location):
        return local_path(location).read_bytes()
    url = os.fspath(location)
    fs, path = filesystem(url)
    with storage_errors(url, missing_ok=True):
        return fs.cat_file(path)


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and path of `url`; `UserError` for an unknown protocol, a missing
    package or a URL without a bucket."""
    import fsspec

    protocol = _protocol(url) or "file"
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as err:
        package = PACKAGES.get(protocol, f"the fsspec backend for {protocol}://")
        raise UserError(f"{url}: {protocol}:// needs {package} ({EXTRA})") from err
    except ValueError as err:
        raise UserError(
            f"{url}: unknown storage protocol {protocol!r} ({err}); use a local path, file://, "
            "s3://, gs:// or another fsspec URL"
        ) from err
    if protocol in BUCKETED and not path.strip("/"):
        raise UserError(f"{url}: no bucket in the URL (expected {protocol}://BUCKET/PREFIX)")
    return fs, path.rstrip("/")


@contextlib.contextmanager
def storage_errors(url: str, missing_ok: bool = False) -> Iterator[None]:
    """Any storage failure inside the block becomes one `UserError` line naming `url` and what
    went wrong; with `missing_ok`, FileNotFoundError passes through (the caller decides)."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as err:
        if _no_bucket(err):
            raise UserError(f"{url}: {_bucket_of(url)!r}: no such bucket") from err
        if missing_ok:
            raise
        raise UserError(f"{url}: not found") from err
    except Exception as err:  # noqa: BLE001 - storage libraries raise their own classes
        raise UserError(f"{url}: {describe(err)}") from err


def _no_bucket(err: BaseException) -> bool:
    text = str(err).lower()
    return "bucket does not exist" in text or "nosuchbucket" in text


def describe(err: BaseException) -> str:
    """What a storage library's error means for the user, in words."""
    names = {c.__name__ for c in type(err).__mro__}
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return (
            "no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE)"
        )
    if "DefaultCredentialsError" in names or "RefreshError" in names:
        return "no Google Cloud credentials found (set GOOGLE_APPLICATION_CREDENTIALS)"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}:
        return f"cannot reach the storage endpoint ({_first_line(err)})"
    if isinstance(err, PermissionError) or "AccessDenied" in str(err):
        return f"access denied ({_first_line(err)}); check the credentials' permissions"
    return f"storage error: {type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _bucket_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


class Folder:
    """A local output folder: atomic renames, full disks named (segloc.atomic)."""

    remote = False

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Folder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def join(self, name: str) -> str:
        return str(self.path / name)

    def read_bytes(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def sizes(self, names: list[str]) -> dict[str, int]:
        """The sizes of those of `names` that exist."""
        found = {}
        for name in names:
            with contextlib.suppress(OSError):
                found[name] = (self.path / name).stat().st_size
        return found

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """The contents of those of `names` that exist and can be read."""
        out = {}
        for name in names:
            with contextlib.suppress(OSError):
                out[name] = self.read_bytes(name)
        return out

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A path to write `name` at; it must appear there atomically (`atomic_path`)."""
        yield self.path / name

    def check_writable(self) -> None:
        """Local folders are created as needed; a full or read-only disk is named on writing."""


class Bucket:
    """A prefix in object storage (or any fsspec filesystem): objects appear whole or not at all.

    Picklable, so render tasks carry it to other processes and machines; each one rebuilds its
    filesystem from the URL and its own environment's credentials.
    """

    remote = True

    def __init__(self, url: str) -> None:
        self.url = normalize(url)
        self.fs, self.root = filesystem(self.url)

    def __reduce__(self):
        return (Bucket, (self.url,))

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bucket) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def join(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read_bytes(self, name: str) -> bytes:
        with storage_errors(self.join(name), missing_ok=True):
            return self.fs.cat_file(self._path(name))

    def sizes(self, names: list[str]) -> dict[str, int]:
        """The sizes of those of `names` that exist, from one listing of the prefix (a request
        per 1,000 objects on S3, instead of one per name)."""
        wanted, prefix = set(names), self.root + "/"
        self.fs.invalidate_cache(self.root)
        try:
            with storage_errors(self.url, missing_ok=True):
                found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        sizes = {path.removeprefix(prefix): int(info["size"]) for path, info in found.items()}
        return {name: size for name, size in sizes.items() if name in wanted}

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """The contents of those of `names` that exist, fetched concurrently."""
        if not names:
            return {}
        paths = {name: self._path(name) for name in names}
        with storage_errors(self.url):
            got = self.fs.cat(list(paths.values()), on_error="omit")
        return {name: got[path] for name, path in paths.items() if path in got}

    def write_json(self, name: str, obj: Any) -> None:
        with self.writing(name) as path:  # the same bytes as a local file's
            write_json(path, obj)

    def remove(self, name: str) -> None:
        try:
            with storage_errors(self.join(name), missing_ok=True):
                self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A local temporary path to write `name` at; uploaded when the block succeeds, removed
        either way. The object appears only once its upload completes."""
        with tempfile.TemporaryDirectory(prefix="segloc-upload-") as tmp:
            path = Path(tmp) / name.replace("/", "_")
            yield path
            with storage_errors(self.join(name)):
                self.fs.put_file(str(path), self._path(name))

    def check_writable(self) -> None:
        """Fail now, in one line, if the bucket is missing or the credentials or endpoint are
        wrong: before inputs are loaded, not after the first shard."""
        if _protocol(self.url) in BUCKETED:
            try:  # a real request: bucket, credentials and endpoint
                with storage_errors(self.url, missing_ok=True):
                    self.fs.ls(self.root, detail=False, refresh=True)
            except FileNotFoundError:
                pass  # the bucket is there (storage_errors names a missing one): a new prefix
