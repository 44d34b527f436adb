"""segloc.store: paths and URLs, the two kinds of output, and storage failures as one line."""

from __future__ import annotations

import pickle

import pytest

from segloc.errors import UserError
from segloc.store import (
    Bucket,
    Folder,
    describe,
    filesystem,
    is_remote,
    join,
    local_path,
    normalize,
    open_store,
    read_bytes,
)


def test_paths_and_urls(tmp_path):
    assert not is_remote("data/shards") and not is_remote(f"file://{tmp_path}")
    assert is_remote("s3://b/x") and is_remote("memory://x")
    assert local_path(f"file://{tmp_path}/a") == tmp_path / "a"
    assert normalize("s3://b/x//") == "s3://b/x" and normalize("s3://") == "s3://"
    assert join("s3://b/x/", "m.json") == "s3://b/x/m.json"
    assert join(tmp_path, "m.json") == str(tmp_path / "m.json")
    assert isinstance(open_store(f"file://{tmp_path}"), Folder)
    assert isinstance(open_store("memory://segloc-test/x"), Bucket)


@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_a_folder_and_a_bucket_behave_alike(tmp_path, where):
    out = open_store(tmp_path / "out" if where == "folder" else "memory://segloc-store/out")
    assert out.sizes(["a.json"]) == {} and out.read_many(["a.json"]) == {}
    out.write_json("sub/a.json", {"b": 1, "a": 2})
    assert out.read_bytes("sub/a.json") == b'{\n  "a": 2,\n  "b": 1\n}\n'
    with out.writing("t.tar") as path:
        path.write_bytes(b"x" * 10)
    assert out.sizes(["sub/a.json", "t.tar", "none"]) == {"sub/a.json": 23, "t.tar": 10}
    assert out.read_many(["t.tar", "none"]) == {"t.tar": b"x" * 10}
    assert read_bytes(out.join("t.tar")) == b"x" * 10
    out.remove("t.tar")
    out.remove("t.tar")  # gone already: fine
    assert out.sizes(["t.tar"]) == {}
    with pytest.raises(FileNotFoundError):
        out.read_bytes("t.tar")


def test_a_failed_write_leaves_nothing(tmp_path):
    out = open_store("memory://segloc-store/failed")
    with pytest.raises(RuntimeError), out.writing("t.tar") as path:
        path.write_bytes(b"half")
        raise RuntimeError("killed mid-shard")
    assert out.sizes(["t.tar"]) == {}


def test_a_bucket_travels_by_its_url():
    out = pickle.loads(pickle.dumps(Bucket("memory://segloc-store/p/")))
    assert out == Bucket("memory://segloc-store/p") and str(out) == "memory://segloc-store/p"


@pytest.mark.parametrize(
    "url, message",
    [
        ("xyz://a/b", "xyz://a/b: unknown storage protocol 'xyz'"),
        ("s3://", "s3://: no bucket in the URL (expected s3://BUCKET/PREFIX)"),
        ("hdfs://namenode/x", "hdfs://namenode/x: hdfs:// needs the fsspec backend for hdfs://"),
    ],
)
def test_bad_urls_are_one_line(url, message):
    with pytest.raises(UserError) as err:
        filesystem(url)
    assert str(err.value.message).startswith(message)


def test_storage_errors_in_words():
    NoCredentialsError = type("NoCredentialsError", (Exception,), {})
    EndpointConnectionError = type("EndpointConnectionError", (Exception,), {})
    assert describe(NoCredentialsError("x")).startswith("no S3 credentials found")
    assert describe(EndpointConnectionError("x")).startswith("cannot reach the storage endpoint")
    assert describe(PermissionError("denied")).startswith("access denied")
    assert describe(ValueError("odd\nsecond line")) == "storage error: ValueError: odd"
