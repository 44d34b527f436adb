"""Pretraining streams its shards from object storage (an S3 server on loopback, tests/s3.py): the
same weights as from a local copy of the same shards, with and without loader processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.faults import tiny_pretrain
from tests.s3 import upload
from train.cli import main

TINY = tiny_pretrain("pretrain.steps=4")


def _pretrain(shards: str | Path, out: Path, *extra: str):
    args = ["--method", "segloc", "--shards", str(shards), "--out", str(out), *TINY, *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    "extra",
    [(), ("--set", "pretrain.workers=2", "--set", "pretrain.monitor.holdout=4")],
    ids=["in-process", "2-loader-workers-and-monitor"],
)
def test_steps_from_a_bucket_give_the_weights_of_a_local_copy(
    tiny_shards, bucket, tmp_path, monkeypatch, extra
):
    monkeypatch.chdir(tmp_path)
    url = f"{bucket}/shards/"  # a trailing slash is the same prefix
    upload(tiny_shards, url.rstrip("/"))
    local = _pretrain(tiny_shards, tmp_path / "local", *extra)
    assert local.exit_code == 0, local.output
    remote = _pretrain(url, tmp_path / "remote", *extra)
    assert remote.exit_code == 0, remote.output
    weights = (tmp_path / "local" / "backbone.pt").read_bytes()
    assert (tmp_path / "remote" / "backbone.pt").read_bytes() == weights


def test_a_prefix_without_a_finished_render_is_one_line(bucket, tmp_path):
    result = _pretrain(f"{bucket}/nothing", tmp_path / "run")
    assert result.exit_code == 2
    assert f"{bucket}/nothing/manifest.json: manifest not found" in result.output


def test_a_missing_bucket_is_one_line(s3_server, tmp_path):
    url = "s3://segloc-no-such-bucket/shards"
    result = _pretrain(url, tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{url}/manifest.json: 'segloc-no-such-bucket': no such bucket" in result.output
    assert not (tmp_path / "run" / "backbone.pt").exists()


def test_a_damaged_object_is_named_as_it_streams(tiny_shards, bucket, tmp_path):
    from tests.s3 import s3fs_client

    url = f"{bucket}/shards"
    upload(tiny_shards, url)
    fs, name = s3fs_client(), f"{url.removeprefix('s3://')}/train-000001.tar"
    fs.pipe_file(name, fs.cat_file(name)[:-1024])  # cut short
    result = _pretrain(url, tmp_path / "run")
    assert result.exit_code != 0
    assert f"shard {url}/train-000001.tar: sha256" in result.output


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_from_a_bucket_give_the_weights_of_a_local_copy(bucket, tmp_path, shard_writer):
    """Multi-process pretraining reads the bucket: ranks split the shards as from a folder."""
    import subprocess
    import sys

    from tests.launch import python_env

    shards = shard_writer.write_shards(tmp_path / "shards", num_shards=4, per_shard=8)
    upload(shards, f"{bucket}/shards")
    env = python_env(OMP_NUM_THREADS="1")
    cli = [sys.executable, "-m", "train.cli", "--nproc-per-node", "2", "--method", "segloc"]
    runs = {}
    for name, where in (("local", str(shards)), ("bucket", f"{bucket}/shards")):
        out = tmp_path / name
        cmd = [*cli, "--shards", where, "--out", str(out), *TINY, "--set", "pretrain.device=cpu"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = (out / "backbone.pt").read_bytes()
    assert runs["bucket"] == runs["local"]
