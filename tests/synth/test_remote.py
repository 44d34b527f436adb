"""Rendering to object storage and through the dask engine, on loopback: an S3 server (moto) and a
dask local cluster started inside the test run. Every output is compared byte for byte with a
one-process render into a local folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth import render
from synth.inspect import command as inspect_command
from tests.s3 import files, objects, s3fs_client

pytest.importorskip("dask.distributed", reason="the engine tests need dask[distributed]")

SYNTH = sys.executable, "-c", "from synth.cli import main; main()"


@pytest.fixture
def local(tmp_path, tiny_params) -> dict[str, bytes]:
    """The reference: every file of a one-process render into a local folder."""
    render.main(tmp_path / "ref", tiny_params, workers=1)
    return files(tmp_path / "ref")


def test_render_to_a_bucket_is_byte_identical_to_a_local_one(local, bucket, tiny_params):
    path = render.main(f"{bucket}/shards", tiny_params, workers=2)
    assert path == f"{bucket}/shards/manifest.json"
    assert objects(f"{bucket}/shards") == local  # shards, records and manifest


@pytest.mark.parametrize("shards_per_task", [1, 3])
def test_engine_render_is_byte_identical_whatever_the_task_split(
    local, bucket, tiny_params, tmp_path, shards_per_task
):
    """A dask local cluster of 2 worker processes, each writing its shards straight to the bucket
    (and, second, to a local folder): the same bytes as one process."""
    engine = dict(distributor="dask", workers=2, shards_per_task=shards_per_task)
    render.main(f"{bucket}/shards", tiny_params, **engine)
    assert objects(f"{bucket}/shards") == local
    render.main(tmp_path / "dask", tiny_params, **engine)
    assert files(tmp_path / "dask") == local


def test_ranges_rendered_apart_give_the_same_bucket(local, bucket, tiny_params):
    for part in ("2:4", "0:2"):  # the manifest comes with the last range
        render.main(f"{bucket}/shards", tiny_params, workers=1, shard_range=part)
    got = objects(f"{bucket}/shards")
    assert {k: v for k, v in got.items() if not k.startswith("manifest-")} == local


def test_a_tasks_error_is_the_renders_one_line(tmp_path):
    """A background that fails its full decode inside a dask worker stops the render with the
    worker's own message; only finished shards are left, and no manifest."""
    from segloc.errors import UserError
    from tests.synth.test_render import _truncated_background

    params = _truncated_background(tmp_path / "in")
    with pytest.raises(UserError, match=r"N00002.jpg: cannot decode image.*while rendering"):
        render.main(tmp_path / "out", params, distributor="dask", workers=2)
    assert not (tmp_path / "out" / "manifest.json").exists()
    records = {p.stem for p in (tmp_path / "out" / ".records").glob("*.json")}
    assert {p.stem for p in (tmp_path / "out").glob("*.tar")} == records


def test_inspect_reads_a_bucket_and_names_a_damaged_object(bucket, tiny_params):
    url = f"{bucket}/shards"
    render.main(url, tiny_params, workers=1)
    result = CliRunner().invoke(inspect_command, [url])
    assert result.exit_code == 0, result.output
    assert "shards: 4  samples: 12" in result.output and "schema v1: ok" in result.output
    fs, name = s3fs_client(), f"{url.removeprefix('s3://')}/train-000002.tar"
    data = bytearray(fs.cat_file(name))
    data[1000:1016] = bytes(16)
    fs.pipe_file(name, bytes(data))
    result = CliRunner().invoke(inspect_command, [url])
    assert result.exit_code != 0
    assert f"{url}/train-000002.tar: missing or checksum differs" in result.output


def test_a_killed_render_never_looks_complete_and_resumes_to_the_same_bytes(
    tmp_path, bucket, tiny_params
):
    """SIGKILL a render into the bucket once some shards are there: no manifest names them, a
    reader refuses the prefix, and the same command finishes it, byte-identical to a render that
    was never interrupted."""
    params = ["--params", str(tiny_params), "--set", "synth.samples_per_shard=30"]
    render.main(tmp_path / "ref", tiny_params, ("synth.samples_per_shard=30",), workers=1)
    url = f"{bucket}/shards"
    cmd = [*SYNTH, "render", "--out", url, "--workers", "1", *params]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs, records = s3fs_client(), f"{url.removeprefix('s3://')}/.records"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if fs.exists(records) and fs.ls(records, refresh=True):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the render finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = objects(url)
    assert any(k.startswith("train-") for k in partial) and "manifest.json" not in partial

    from segloc.errors import UserError
    from train.data import open_shards

    with pytest.raises(UserError, match="manifest not found"):
        open_shards(url)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already complete" in done.stderr
    assert objects(url) == files(tmp_path / "ref")


def _one_line_error(args: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*SYNTH, *args], capture_output=True, text=True, timeout=120, env=env or os.environ.copy()
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "out, message",
    [
        ("xyz://somewhere/shards", "xyz://somewhere/shards: unknown storage protocol 'xyz'"),
        ("s3://", "s3://: no bucket in the URL"),
        ("s3://segloc-no-such-bucket/shards", "'segloc-no-such-bucket': no such bucket"),
    ],
)
def test_a_bad_url_or_a_missing_bucket_is_one_line(s3_server, tiny_params, out, message):
    line = _one_line_error(["render", "--out", out, "--params", str(tiny_params)])
    assert message in line


def test_missing_credentials_are_one_line_and_write_nothing(bucket, tiny_params):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS_KEY")}
    env.pop("AWS_SECRET_ACCESS_KEY")
    line = _one_line_error(
        ["render", "--out", f"{bucket}/shards", "--params", str(tiny_params)], env
    )
    assert f"{bucket}/shards: no S3 credentials found" in line
    assert objects(bucket) == {}


def test_an_unreachable_endpoint_is_one_line(tmp_path, tiny_params, s3_server):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    line = _one_line_error(["render", "--out", "s3://b/shards", "--params", str(tiny_params)], env)
    assert "s3://b/shards: cannot reach the storage endpoint" in line


def test_an_unreachable_scheduler_is_one_line(tmp_path, tiny_params):
    out = tmp_path / "shards"
    args = ["render", "--out", str(out), "--params", str(tiny_params), "--distributor", "dask"]
    line = _one_line_error([*args, "--scheduler", "tcp://127.0.0.1:9"])
    assert "dask scheduler tcp://127.0.0.1:9: unreachable" in line
    assert not (out / "manifest.json").exists() and not list(Path(out).glob("*.tar"))


def test_a_running_scheduler_renders_the_same_bytes(local, tmp_path, tiny_params):
    """`--scheduler ADDRESS`: a scheduler and workers started apart from the render (here a local
    cluster the test holds), joined by address."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        render.main(
            tmp_path / "joined",
            tiny_params,
            distributor="dask",
            scheduler=cluster.scheduler_address,
        )
    assert files(tmp_path / "joined") == local


def test_inspect_names_a_missing_bucket_or_an_unfinished_render(bucket):
    line = _one_line_error(["inspect", "s3://segloc-no-such-bucket/shards"])
    assert "'segloc-no-such-bucket': no such bucket" in line
    line = _one_line_error(["inspect", f"{bucket}/shards"])
    assert f"{bucket}/shards/manifest.json: manifest not found (render incomplete?)" in line
